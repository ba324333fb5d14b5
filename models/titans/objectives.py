"""Pluggable parts of the neural memory (MIRAS, arXiv 2504.13173, section 3): the attentional bias (the inner
loss the memory minimises per token) and the retention (how the memory's state becomes its weights and how old
content is kept).

Attentional bias: `loss(err, param)` per token and its closed-form derivative `grad(err, param)` with respect
to the memory's prediction, err = M(k_t) - v_t of shape [..., d_out], written as grad = grad_scale *
grad_direction(err, param) so that the fast path can fold a power-of-two scale into the inner learning rate
(exact in floating point: one elementwise product fewer per chunk). The fast path uses `grad` (no autograd
inside
the inner loop); the token-by-token reference differentiates `loss` with torch.func, so the two are
independent.
  - L2Bias:    ||e||^2                                     (Titans eq. 12)
  - LpBias:    ||e||_p^p, p = 3 for Moneta                  (MIRAS eq. for Moneta)
  - HuberBias: sum_j Huber_delta_t(e_j), delta_t > 0 a learned function of x_t (Yaad)

Retention: the memory carries a state A per weight matrix that follows the linear recurrence
A_t = keep_t * A_{t-1} + S_t (S the momentum/surprise, keep_t = 1 - alpha_t); the weights are W_t = phi(A_t).
  - DecayRetention: phi = identity, i.e. the l2 retention / weight decay of Titans eq. 13 (Yaad uses it too).
  - LqRetention:    phi(A) = A / ||A||_q^(q-2), q = 4 (Moneta: A_t = alpha_t A_{t-1} - eta_t grad,
                    W_t = A_t / ||A_t||_q^(q-2)).
  - KLRetention:    phi(A) = c * softmax(A) over the input axis (Memora: W_t = c Softmax(alpha_t log W_{t-1} -
                    eta_t grad)). Softmax is shift-invariant, so taking log W_{t-1} = A_{t-1} - lse(A_{t-1})
                    changes nothing: the logits A follow exactly the linear recurrence above.
`linear` tells the parallel op whether phi is the identity (then every token's weights are read in dual form,
never materialised) or not (then the per-token states of a chunk are materialised and phi applied to each).
"""

from __future__ import annotations

import torch

from harness.errors import HarnessError


class L2Bias:
    name, needs_param = "l2", False
    grad_scale = 2.0  # grad = grad_scale * grad_direction; the fast path folds the power of two into theta

    def loss(self, err, param=None):
        return err.pow(2).sum(-1)

    def grad_direction(self, err, param=None):
        return err

    def grad(self, err, param=None):
        return self.grad_scale * self.grad_direction(err, param)


class LpBias:
    needs_param = False

    def __init__(self, p: float = 3.0):
        if p < 1:
            raise HarnessError(f"l_p attentional bias needs p >= 1, got {p}")
        self.p, self.name = float(p), f"l{p:g}"

    def loss(self, err, param=None):
        return err.abs().pow(self.p).sum(-1)

    grad_scale = 1.0

    def grad(self, err, param=None):
        # d|e|^p/de = p |e|^(p-1) sign(e); written as p e |e|^(p-2) only for p >= 2 (smooth at 0).
        if self.p >= 2:
            return self.p * err * err.abs().pow(self.p - 2)
        return self.p * err.abs().pow(self.p - 1) * torch.sign(err)

    grad_direction = grad  # p is not a power of two: folding it into theta would change the rounding


class HuberBias:
    """Huber_delta(e) = e^2 if |e| <= delta else 2 delta |e| - delta^2 (so its gradient 2 clamp(e, -delta,
    delta)
    is continuous and equals the l2 gradient inside the threshold). `param` is delta_t [..., 1] > 0."""

    name, needs_param = "huber", True
    grad_scale = 2.0

    def loss(self, err, param):
        a = err.abs()
        return torch.where(a <= param, err.pow(2), 2 * param * a - param.pow(2)).sum(-1)

    def grad_direction(self, err, param):
        return torch.minimum(torch.maximum(err, -param), param)

    def grad(self, err, param):
        return self.grad_scale * self.grad_direction(err, param)


class DecayRetention:
    name, linear = "decay", True

    def phi(self, A):
        return A


class LqRetention:
    linear = False

    def __init__(self, q: float = 4.0, eps: float = 1e-6):
        if q < 2:
            raise HarnessError(f"l_q retention needs q >= 2, got {q}")
        self.q, self.eps, self.name = float(q), eps, f"l{q:g}"

    def phi(self, A):
        norm = A.abs().pow(self.q).sum(dim=(-2, -1), keepdim=True).add(self.eps).pow(1.0 / self.q)
        return A / norm.pow(self.q - 2)


class KLRetention:
    name, linear = "kl", False

    def __init__(self, scale: float = 1.0):
        self.scale = scale  # c: the weights of each output unit sum to c

    def phi(self, A):
        return self.scale * torch.softmax(A, dim=-2)


BIASES = {"l2": L2Bias, "lp": LpBias, "huber": HuberBias}
RETENTIONS = {"decay": DecayRetention, "lq": LqRetention, "kl": KLRetention}


def make_bias(name: str, p: float = 3.0):
    if name not in BIASES:
        raise HarnessError(f"unknown attentional bias {name!r}; accepted: {', '.join(BIASES)}")
    return LpBias(p) if name == "lp" else BIASES[name]()


def make_retention(name: str, q: float = 4.0, scale: float = 1.0):
    if name not in RETENTIONS:
        raise HarnessError(f"unknown retention {name!r}; accepted: {', '.join(RETENTIONS)}")
    if name == "lq":
        return LqRetention(q)
    if name == "kl":
        return KLRetention(scale)
    return DecayRetention()
