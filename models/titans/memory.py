"""The neural long-term memory layer (Titans, arXiv 2501.00663, section 3.1; MIRAS, arXiv 2504.13173).

x [B, T, dim] -> per head: q, k, v = SiLU(conv(x W_{q,k,v})) (short causal depthwise conv), q and k L2-normalised
(section 4.4); theta_t, alpha_t, eta_t (and Yaad's Huber threshold delta_t) are per-head linear functions of x_t
squashed into their ranges: theta = theta_max * sigmoid, alpha and eta = sigmoid, delta = softplus. The memory is
written and read by `models.titans.ops.memory_parallel`; the read is RMS-normalised per head and projected out.
`grad_clip` caps each token's inner gradient per memory layer (Frobenius norm), as titans-pytorch's
`max_grad_norm` does: the paper's rule alone lets a depth-2 memory's inner descent run away within one sequence
once the outer loop learns large steps. It is not in the papers, so in training mode the layer counts how many
(token, layer) gradients it capped (`cap_counts`; TitansLM.memory_stats puts the fraction in the run record).
`net` picks the memory network (memory_net.py): Titans' MLP or MIRAS' residual x + LN(gelu(x W1) W2).

The memory's initial weights are learned (per head); the outer loop trains them, the projections and the gate
nets through the unrolled inner updates (the inner gradients are closed-form, so the whole chunked recurrence is
one differentiable graph).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.common import CausalDepthwiseConv, RMSNorm
from models.titans.memory_net import make_net, mlp_apply
from models.titans.objectives import make_bias, make_retention
from models.titans.ops import memory_naive, memory_parallel


class NeuralMemory(nn.Module):
    def __init__(self, dim: int, n_heads: int, head_dim: int | None = None, depth: int = 2,
                 expansion: int = 2,
                 chunk_size: int = 16, conv_size: int = 4, momentum: bool = True, decay: bool = True,
                 bias: str = "l2", bias_p: float = 3.0, retention: str = "decay", retention_q: float = 4.0,
                 theta_max: float = 0.01, grad_clip: float | None = None, net: str = "mlp",
                 huber: str = "norm", recompute: bool | None = None, lq_normalize: str = "chunk"):
        super().__init__()
        head_dim = head_dim or dim // n_heads
        self.n_heads, self.head_dim, self.chunk_size = n_heads, head_dim, chunk_size
        self.momentum, self.decay, self.theta_max, self.grad_clip = momentum, decay, theta_max, grad_clip
        self.recompute = recompute  # see ops.run_chunks
        self.bias = make_bias(bias, bias_p, huber)
        self.net = make_net(net)
        # the cap's counters (see cap_counts): buffers that follow the model's device, kept out of checkpoints,
        # and added to in place, so a compiled model sees the same tensors every step and never recompiles
        self.register_buffer("cap_capped", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("cap_total", torch.zeros((), dtype=torch.long), persistent=False)
        self.retention = make_retention(retention, retention_q, scale=math.sqrt(head_dim), lq_normalize=lq_normalize)
        inner = n_heads * head_dim
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.conv = CausalDepthwiseConv(3 * inner, conv_size)
        # one gate net for theta, alpha, eta (+ delta for the Huber bias): [B, T, n_gates * H]
        self.n_gates = 1 + int(decay) + int(momentum) + int(self.bias.needs_param)
        self.to_gates = nn.Linear(dim, self.n_gates * n_heads)
        dims = [head_dim] + [expansion * head_dim] * (depth - 1) + [head_dim]
        self.init_weights = nn.ParameterList(
            nn.Parameter(torch.randn(n_heads, dims[i], dims[i + 1]) / math.sqrt(dims[i]))
            for i in range(depth))
        self.out_norm = RMSNorm(head_dim)
        self.out = nn.Linear(inner, dim, bias=False)
        self._init_gates()

    def _init_gates(self):
        nn.init.normal_(self.to_gates.weight, 0.0, 0.02)
        H, b = self.n_heads, self.to_gates.bias.data
        b[:H] = 0.0  # theta = theta_max / 2
        i = H
        if self.decay:
            b[i:i + H] = -5.0  # alpha ~ 0.007: slow forgetting at the start
            i += H
        if self.momentum:
            b[i:i + H] = 1.0  # eta ~ 0.73
            i += H
        if self.bias.needs_param:
            b[i:i + H] = 0.5  # Huber delta ~ 0.97

    # -- state ---------------------------------------------------------------------------------------------
    def initial_state(self, batch: int) -> dict:
        A = [w.unsqueeze(0).expand(batch, *w.shape) for w in self.init_weights]
        S = [torch.zeros_like(a) for a in A] if self.momentum else None
        return {"A": A, "S": S, "G": A, "pos": 0, "conv": None}

    # -- projections -------------------------------------------------------------------------------------
    def _heads(self, t):  # [B, T, H*d] -> [B, H, T, d]
        B, T, _ = t.shape
        return t.view(B, T, self.n_heads, -1).transpose(1, 2)

    def _inputs(self, x, conv_state):
        qkv, conv_state = self.conv(self.to_qkv(x), conv_state)
        qkv = F.silu(qkv)
        inner = self.n_heads * self.head_dim
        # L2-normalise q and k per head in one call on the contiguous [B, T, 2H, d] layout, then split into heads
        # (x * rsqrt(max(|x|^2, eps^2)) is F.normalize's x / max(|x|, eps) with a cheaper backward than division)
        # (split, not slicing: the backward of a slice zero-fills a full-size gradient per slice)
        qk, v = qkv.split([2 * inner, inner], dim=-1)
        qk = qk.unflatten(-1, (2 * self.n_heads, self.head_dim))
        qk = qk * qk.pow(2).sum(-1, keepdim=True).clamp_min(1e-24).rsqrt()
        q, k = (self._heads(t.flatten(-2)) for t in qk.chunk(2, dim=-2))
        v = self._heads(v)
        gates = self.to_gates(x).transpose(1, 2)  # [B, n_gates*H, T]
        parts = list(gates.split(self.n_heads, dim=1))
        theta = self.theta_max * torch.sigmoid(parts.pop(0))
        log_keep = F.logsigmoid(-parts.pop(0)) if self.decay else None  # log(1 - alpha), alpha = sigmoid
        log_eta = F.logsigmoid(parts.pop(0)) if self.momentum else None
        bias_param = F.softplus(parts.pop(0)).unsqueeze(-1) if self.bias.needs_param else None
        return q, k, v, theta, log_keep, log_eta, bias_param, conv_state

    def _output(self, y, out_weight=None):  # [B, H, T, d] -> [B, T, dim] (or out_weight's rows)
        B, H, T, d = y.shape
        y = self.out_norm(y).transpose(1, 2).reshape(B, T, H * d)
        return self.out(y) if out_weight is None else F.linear(y, out_weight)

    # -- forward -----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, state: dict | None = None, reference: bool = False):
        """x [B, T, dim] -> (y [B, T, dim], new_state). `reference=True` runs the token-by-token walk."""
        if state is None:
            state = self.initial_state(x.shape[0])
        q, k, v, theta, log_keep, log_eta, bias_param, conv_state = self._inputs(x, state["conv"])
        if reference:
            y, mem = memory_naive(q, k, v, theta, log_keep, log_eta, state, self.chunk_size, self.bias,
                                  self.retention, bias_param, grad_clip=self.grad_clip, net=self.net)
        else:
            counting = self.training and self.grad_clip is not None
            stats = {"capped": self.cap_capped, "total": self.cap_total} if counting else None
            y, mem = memory_parallel(q, k, v, theta, log_keep, log_eta, state, self.chunk_size, self.bias,
                                     self.retention, bias_param, grad_clip=self.grad_clip, net=self.net,
                                     stats=stats, recompute=self.recompute)
        mem["conv"] = conv_state
        return self._output(y), mem

    def read(self, queries: torch.Tensor, state: dict | None, out_weight: torch.Tensor | None = None):
        """M(q) with the weights of `state` and no write (Titans eq. 15 / MAC eq. 21): queries [B, H, T, d]
        are already projected; returns [B, T, dim]. out_weight replaces the output projection's weight (MAC
        passes W_kv W_out to get the memory tokens' keys and values in one product)."""
        if state is None:
            state = self.initial_state(queries.shape[0])
        weights = [self.retention.phi(a) for a in state["A"]]
        return self._output(mlp_apply(F.normalize(queries, dim=-1), weights, self.net), out_weight)

    def cap_counts(self) -> tuple[int, int]:
        """(capped, counted): the (batch row, head, token, layer) inner gradients that `grad_clip` scaled down,
        and all that it checked, over every training-mode forward since the layer was built (or `reset_cap_counts`).
        Reading it syncs the device."""
        return int(self.cap_capped.item()), int(self.cap_total.item())

    def reset_cap_counts(self):
        self.cap_capped.zero_()
        self.cap_total.zero_()
