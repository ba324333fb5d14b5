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
  - NormHuberBias: Yaad's (MIRAS section 5.3), switched on the error's norm: the l2 gradient 2e where
                 ||e||_2 <= delta_t, delta_t times the l1 gradient, delta_t sign(e), elsewhere (delta_t > 0 a
                 learned function of x_t). The default Huber bias (`huber="norm"`).
  - HuberBias:   sum_j Huber_delta_t(e_j), coordinate-wise (`huber="coordinate"`; the harness's earlier form).

Retention: the memory carries a state A per weight matrix that follows the linear recurrence
A_t = keep_t * A_{t-1} + S_t (S the momentum/surprise, keep_t = 1 - alpha_t); the weights are W_t = phi(A_t).
  - DecayRetention: phi = identity, i.e. the l2 retention / weight decay of Titans eq. 13 (Yaad uses it too).
  - LqRetention:    phi(A) = A / ||A||_q^(q-2), q = 4 (Moneta: A_t = alpha_t A_{t-1} - eta_t grad,
                    W_t = A_t / ||A_t||_q^(q-2)).
  - KLRetention:    phi(A) = c * softmax(A) over the input axis (Memora: W_t = c Softmax(alpha_t log W_{t-1} -
                    eta_t grad)). Softmax is shift-invariant, so taking log W_{t-1} = A_{t-1} - lse(A_{t-1})
                    changes nothing: the logits A follow exactly the linear recurrence above.
`linear` tells the parallel op whether phi is the identity; `materializes` whether a chunk's per-token states
must be materialised and phi applied to each (l_q with normalize="token", KL). Otherwise reads take the dual
form and no token's weights are formed; `chunk_scaled` (l_q with normalize="chunk") then scales them by the
chunk-start norm.
`read_weights(A, G)` is the weights a token reads with, from its state A and its chunk's start state G.
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


class NormHuberBias:
    """Yaad's attentional bias (MIRAS, arXiv 2504.13173, section 5.3): W_t = alpha_t W_{t-1} - eta_t grad l2 if
    ||M(k_t) - v_t||_2 <= delta_t, else - eta_t delta_t grad l1, with l2 = ||e||_2^2 and l1 = ||e||_1: the
    gradient with respect to the prediction is 2e or delta_t sign(e). `loss` is a function with that gradient
    (||e||^2 or delta_t ||e||_1, picked by the norm; delta_t is not differentiated through the switch).
    `param` is delta_t [..., 1] > 0."""

    name, needs_param = "huber", True
    grad_scale = 2.0  # grad = 2 * (e or delta/2 sign(e)): halving is exact, so the power of two still folds

    def loss(self, err, param):
        inside = torch.linalg.vector_norm(err, dim=-1, keepdim=True) <= param
        return torch.where(inside, err.pow(2), param * err.abs()).sum(-1)

    def grad_direction(self, err, param):
        inside = torch.linalg.vector_norm(err, dim=-1, keepdim=True) <= param
        return torch.where(inside, err, (0.5 * param) * torch.sign(err))

    def grad(self, err, param):
        return self.grad_scale * self.grad_direction(err, param)


class DecayRetention:
    name, linear, materializes, chunk_scaled = "decay", True, False, False

    def phi(self, A):
        return A

    def read_weights(self, A, G):
        return A


class LqRetention:
    """W = A / ||A||_q^(q-2) with the exact norm (sum |A|^q)^(1/q), computed as (sum |A|^q)^((q-2)/q). The one
    guard is where the sum is 0 (A = 0, so W = 0 whatever it is divided by): there it divides by 1, which keeps
    the value 0 and every gradient finite (the map itself is singular at 0 for q > 2).

    normalize: where the map is applied when reading inside a chunk.
      "chunk" (MIRAS section 5.4, Moneta's parallel form): the l_q normalisation is applied at chunk boundaries
              only; inside a chunk the weights are the linear state scaled by its chunk-start norm, W_t = A_t /
              ||G||_q^(q-2) (G the chunk-start state), so reads take the dual form and no token's weights are
              materialised. The state A itself follows the same linear recurrence in both forms.
      "token" W_t = A_t / ||A_t||_q^(q-2) for every token (the exact recurrence at chunk size 1; the harness's
              earlier form, which materialises every token's weights)."""

    linear = False
    NORMALIZE = ("chunk", "token")

    def __init__(self, q: float = 4.0, normalize: str = "token"):
        if q < 2:
            raise HarnessError(f"l_q retention needs q >= 2, got {q}")
        if normalize not in self.NORMALIZE:
            raise HarnessError(f"unknown l_q normalisation {normalize!r}; accepted: {', '.join(self.NORMALIZE)}")
        self.q, self.normalize, self.name = float(q), normalize, f"l{q:g}"

    @property
    def chunk_scaled(self):  # reads inside a chunk: dual form, times the chunk-start scale
        return self.normalize == "chunk"

    @property
    def materializes(self):
        return not self.chunk_scaled

    def scale(self, A):
        """1 / ||A||_q^(q-2) over each matrix (the last two dims), [..., 1, 1]."""
        total = A.abs().pow(self.q).sum(dim=(-2, -1), keepdim=True)
        total = torch.where(total > 0, total, torch.ones_like(total))
        return total.pow(-(self.q - 2) / self.q)

    def phi(self, A):
        return A * self.scale(A)

    def read_weights(self, A, G):
        """The weights token t reads with: its state A, normalised by G's norm ("chunk") or its own ("token")."""
        return A * self.scale(G) if self.chunk_scaled else self.phi(A)


class KLRetention:
    name, linear, materializes, chunk_scaled = "kl", False, True, False

    def __init__(self, scale: float = 1.0):
        self.scale = scale  # c: the weights of each output unit sum to c

    def phi(self, A):
        return self.scale * torch.softmax(A, dim=-2)

    def read_weights(self, A, G):
        return self.phi(A)


BIASES = {"l2": L2Bias, "lp": LpBias, "huber": NormHuberBias}
HUBER = {"norm": NormHuberBias, "coordinate": HuberBias}  # Yaad's (the default) | coordinate-wise
RETENTIONS = {"decay": DecayRetention, "lq": LqRetention, "kl": KLRetention}


def make_bias(name: str, p: float = 3.0, huber: str = "norm"):
    if name not in BIASES:
        raise HarnessError(f"unknown attentional bias {name!r}; accepted: {', '.join(BIASES)}")
    if huber not in HUBER:
        raise HarnessError(f"unknown Huber form {huber!r}; accepted: {', '.join(HUBER)}")
    if name == "huber":
        return HUBER[huber]()
    return LpBias(p) if name == "lp" else BIASES[name]()


def make_retention(name: str, q: float = 4.0, scale: float = 1.0, lq_normalize: str = "token"):
    if name not in RETENTIONS:
        raise HarnessError(f"unknown retention {name!r}; accepted: {', '.join(RETENTIONS)}")
    if name == "lq":
        return LqRetention(q, lq_normalize)
    if name == "kl":
        return KLRetention(scale)
    return DecayRetention()
