"""The inner update of the DeepNestedOptimizer as pure functions of tensors, used both by the real step (under
no_grad, then copied into the parameters) and by the unrolled meta-objective (differentiably, on copies).

Continuum memory system (Nested Learning, Behrouz et al. 2025, section 3 "CMS"): level l keeps a momentum memory
m_l updated only every f_l steps (f = 1, N, M; default 1, 10, 100) from the mean of the gradients accumulated since
its last update, so the levels remember the gradient over ~f_l / (1 - beta1) steps: fast, medium and slow.
Every step the learned momentum reads all levels (see networks.LearnedMomentum) to form the update:
    v   <- beta2 v + (1 - beta2) g^2,                 d = sqrt(v / (1 - beta2^t)) + eps
    m_0 <- beta1 m_0 + (1 - beta1) g                   (every step)
    a_l <- a_l + g;  if t % f_l == 0: m_l <- beta1 m_l + (1 - beta1) a_l / f_l,  a_l <- 0
    x   = [g, m_0_hat, m_1_hat, ...] / d   (bias-corrected by each level's own update count; clamped)
    theta <- theta (1 - lr c wd) - lr c LearnedMomentum(x)        (c: the controller's group multiplier)
"""

from __future__ import annotations

import torch

FEATURE_CLIP = 10.0


def advance_state(grad: torch.Tensor, state: dict, step: int, betas, eps: float, freqs) -> tuple[torch.Tensor, dict]:
    """(features [..., 1 + levels], new state) for one parameter at step `step` (1-based). Pure: returns new
    tensors, never writes into `state`. The features do not depend on any learned parameter."""
    beta1, beta2 = betas
    new = {"v": state["v"] * beta2 + (1 - beta2) * grad * grad}
    denom = (new["v"] / (1 - beta2 ** step)).sqrt() + eps
    new["m0"] = state["m0"] * beta1 + (1 - beta1) * grad
    levels = [new["m0"] / (1 - beta1 ** step)]
    for level, freq in enumerate(freqs[1:], start=1):
        acc = state[f"acc{level}"] + grad
        if step % freq == 0:
            new[f"m{level}"] = state[f"m{level}"] * beta1 + (1 - beta1) * acc / freq
            new[f"acc{level}"] = torch.zeros_like(acc)
        else:
            new[f"m{level}"], new[f"acc{level}"] = state[f"m{level}"], acc
        updates = step // freq
        levels.append(new[f"m{level}"] / (1 - beta1 ** updates) if updates else torch.zeros_like(grad))
    features = torch.stack([grad / denom] + [m / denom for m in levels], dim=-1)
    return features.clamp(-FEATURE_CLIP, FEATURE_CLIP), new


def init_state(param: torch.Tensor, freqs) -> dict:
    state = {"v": torch.zeros_like(param), "m0": torch.zeros_like(param)}
    for level in range(1, len(freqs)):
        state[f"m{level}"], state[f"acc{level}"] = torch.zeros_like(param), torch.zeros_like(param)
    return state


def apply_update(param: torch.Tensor, direction: torch.Tensor, lr: float, mult: torch.Tensor, wd: float):
    """theta (1 - lr c wd) - lr c u (decoupled weight decay, as AdamW)."""
    scale = lr * mult.to(param.dtype)
    return param * (1 - scale * wd) - scale * direction


def clip_by_global_norm(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    if max_norm <= 0:
        return grads
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
    return [g * factor for g in grads]
