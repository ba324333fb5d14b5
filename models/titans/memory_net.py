"""The memory network M_W of the neural memory (per head, weights W_1..W_L as [d_{l-1}, d_l] matrices) and the
closed-form gradient of the attentional bias through it (used by `ops.py`; `fused_run.py` inlines the `mlp` case).

  mlp          Titans (arXiv 2501.00663, section 3.1): M(x) = silu(x W_1) ... W_L (L = 1: a matrix memory).
  residual_ln  MIRAS (arXiv 2504.13173, section 5.3): M(x) = x + LN(gelu(x W_1) ... W_L), the residual memory
               x + LN(W_1 GELU(W_2 x)) of Moneta, Yaad and Memora written for row vectors; LN is a LayerNorm
               without affine parameters (the memory's only weights are the W_l the inner loop writes), GELU the
               exact (erf) one. Needs d_0 = d_L (the residual).

The inner loss's gradient with respect to W_l is grad_scale * a_l^T delta_l per token (a_l the layer's input,
delta_l the gradient of the loss with respect to the layer's output z_l = a_l W_l): `mlp_with_grads` returns
the a_l and delta_l without forming the outer products. The token-by-token reference (`ops.memory_naive`)
differentiates `mlp_apply` with torch.func instead, so the closed forms here are tested, not trusted.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.errors import HarnessError


class MLPNet:
    name = "mlp"

    @staticmethod
    def act(z):
        return F.silu(z)

    @staticmethod
    def head(x, z):  # the network's output from its input x and the last layer's output z
        return z

    @staticmethod
    def last_weight(W):  # the last layer's weight as the products use it
        return W


class ResidualLNNet:
    name, eps = "residual_ln", 1e-5

    @staticmethod
    def act(z):
        return F.gelu(z)

    def head(self, x, z):
        return x + F.layer_norm(z, z.shape[-1:], eps=self.eps)

    @staticmethod
    def last_weight(W):
        """W minus its mean over the output axis: z = h W then has its LayerNorm mean removed before rounding.
        The same LN(z) (LN subtracts z's mean anyway), but without the cancellation when W's columns are nearly
        equal (Memora's softmax weights at init: z varies by ~1e-3 of its size across outputs, and float32
        rounding of h W would reach LN's output amplified a thousandfold)."""
        return W - W.mean(-1, keepdim=True)


NETS = {"mlp": MLPNet, "residual_ln": ResidualLNNet}


def make_net(name: str):
    if name not in NETS:
        raise HarnessError(f"unknown memory network {name!r}; accepted: {', '.join(NETS)}")
    return NETS[name]()


def mlp_apply(x, weights, net=None):
    """x [..., n, d0] through the memory network with per-head weights [..., d_{l-1}, d_l] (default: `mlp`)."""
    net = net or MLPNet()
    h, last = x, len(weights) - 1
    for l, W in enumerate(weights):
        h = h @ (net.last_weight(W) if l == last else W)
        if l < len(weights) - 1:
            h = net.act(h)
    return net.head(x, h)


def mlp_with_grads(k, v, weights, bias, bias_param, z_first=None, net=None):
    """Forward at the chunk-start weights and closed-form backward of the attentional bias (batch-flat
    [N, n, d] tensors): returns the layer inputs a_l and output-gradients delta_l, so that
    dloss_i/dW_l = bias.grad_scale * a_l[i]^T delta_l[i] (the scale is left to the caller).
    z_first: k @ W_1 when the caller already has it."""
    if net is not None and net.name == "residual_ln":
        return _residual_ln_with_grads(k, v, weights, bias, bias_param, z_first, net.eps)
    acts, sigs, h = [], [], k
    last = len(weights) - 1
    for l, W in enumerate(weights):
        acts.append(h)
        z = torch.bmm(h, W) if (l or z_first is None) else z_first
        if l < last:
            s = torch.sigmoid(z)
            h = z * s
            sigs.append((s, h))
        else:
            h = z
    delta = bias.grad_direction(h - v, bias_param)  # the caller folds bias.grad_scale into theta
    deltas = [delta]
    for l in range(last, 0, -1):
        s, h = sigs[l - 1]
        silu_grad = torch.addcmul(s + h, h, s, value=-1.0)  # silu'(z) = s + z s (1 - s) = s + h - h s
        delta = torch.bmm(delta, weights[l].transpose(1, 2)) * silu_grad
        deltas.insert(0, delta)
    return acts, deltas


def _gelu_grad(z):
    """d gelu(z) / dz = Phi(z) + z phi(z) (the exact, erf GELU)."""
    return 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0)))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _residual_ln_with_grads(k, v, weights, bias, bias_param, z_first, eps):
    acts, pre, h = [], [], k
    last = len(weights) - 1
    for l, W in enumerate(weights):
        acts.append(h)
        if l == last:  # centred (ResidualLNNet.last_weight): the gradient is the same, LN's delta has mean 0
            z = torch.bmm(h, W - W.mean(-1, keepdim=True)) if (l or z_first is None) else z_first
        else:
            z = torch.bmm(h, W) if (l or z_first is None) else z_first
        pre.append(z)
        h = F.gelu(z) if l < last else z
    # LN(z) = (z - mean) * rstd; its backward: rstd * (g - mean(g) - zhat * mean(g * zhat))
    mu = h.mean(-1, keepdim=True)
    rstd = ((h - mu).pow(2).mean(-1, keepdim=True) + eps).rsqrt()
    zhat = (h - mu) * rstd
    g = bias.grad_direction(k + zhat - v, bias_param)  # the caller folds bias.grad_scale into theta
    delta = rstd * (g - g.mean(-1, keepdim=True) - zhat * (g * zhat).mean(-1, keepdim=True))
    deltas = [delta]
    for l in range(last, 0, -1):
        delta = torch.bmm(delta, weights[l].transpose(1, 2)) * _gelu_grad(pre[l - 1])
        deltas.insert(0, delta)
    return acts, deltas


def count_capped(stats, norms, max_norm):
    """Adds how many of the per-token gradient norms (a list of tensors) exceed the cap to stats["capped"] and
    how many were checked to stats["total"]: 0-d integer tensors, added to in place and never read here (no
    device sync, and no Python number that changes every step, on which torch.compile would guard and recompile
    the layer at every step)."""
    if stats is None or not norms:
        return
    with torch.no_grad():
        flat = torch.cat([n.reshape(-1) for n in norms])
        stats["capped"].add_(flat.gt(max_norm).sum())
        stats["total"].add_(flat.numel())


def clip_token_grads(acts, deltas, max_norm, stats=None):
    """Scale every token's gradient of every layer, u_i = a_i^T delta_i, to Frobenius norm <= max_norm, as
    torch.nn.utils.clip_grad_norm_ does per step: |u_i| = |a_i| |delta_i| for an outer product, so the norm
    costs two row norms and u_i is never formed. Returns the scaled deltas (backpropagation inside the memory
    MLP used the unscaled ones: the clip applies to each layer's gradient, not to the chain). stats: see
    `count_capped`."""
    out, norms = [], []
    for a, d in zip(acts, deltas):
        norm = torch.linalg.vector_norm(a, dim=-1, keepdim=True) * torch.linalg.vector_norm(d, dim=-1, keepdim=True)
        out.append(d * (max_norm / norm.clamp_min(max_norm)))  # [N, n, d] * [N, n, 1]
        norms.append(norm)
    count_capped(stats, norms, max_norm)
    return out
