"""ADOPT with the atan2 update: the optimizer the Titans/MIRAS baseline notes and titans-pytorch's training use
(lucidrains/adam-atan2-pytorch, AdoptAtan2).

ADOPT (Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal Rate",
Algorithm 1): normalise the gradient by the *previous* second moment before the momentum, so the step is
decorrelated from the current gradient:
    v_0 = g_0^2                                            (step 0 only initialises v; no parameter update)
    m_t = beta1 m_{t-1} + (1 - beta1) clip(g_t / max(sqrt(v_{t-1}), eps), c_t)
    theta_t = theta_{t-1} - lr m_t
    v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
atan2 (Everett et al. 2024, "Scaling Exponents Across Parameterizations and Optimizers", Adam-atan2): replace the
division x / (sqrt(v) + eps) by a * atan2(x, b sqrt(v)), which is scale-invariant, needs no eps, and is bounded by
a pi/2, so it also takes the place of ADOPT's clip. Here the normalised gradient is atan2(g_t, b sqrt(v_{t-1}))
and the step is lr * a * m_t, with a = 1.27, b = 1 (the adam-atan2 defaults). Weight decay is decoupled (AdamW
style, theta <- theta (1 - lr wd)) and only on weight matrices (roles from optimizers.param_groups).
"""

from __future__ import annotations

import torch
from torch import nn

from optimizers.adamw import decay_and_no_decay
from optimizers.options import check_positive, parse_options

DEFAULTS = {"lr": None, "weight_decay": None, "betas": (0.9, 0.9999), "a": 1.27, "b": 1.0}


class AdoptAtan2(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.9999), weight_decay=0.0, a=1.27, b=1.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, a=a, b=b))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, a, b = group["lr"], group["a"], group["b"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad, self.state[p]
                if not state:  # step 0: v_0 = g_0^2, no update
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = grad * grad
                    continue
                state["step"] += 1
                normed = torch.atan2(grad, b * state["exp_avg_sq"].sqrt())
                m = state["exp_avg"].lerp_(normed, 1 - beta1)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(m, alpha=-lr * a)
                state["exp_avg_sq"].lerp_(grad * grad, 1 - beta2)
        return loss


def build(model: nn.Module, preset, loss_fn=None, **options) -> torch.optim.Optimizer:
    """Options: lr (default preset.lr), weight_decay (default preset.weight_decay), betas "0.9,0.9999", a, b."""
    o = parse_options("adopt-atan2", options, DEFAULTS)
    lr = float(o["lr"] if o["lr"] is not None else preset.lr)
    wd = float(o["weight_decay"] if o["weight_decay"] is not None else preset.weight_decay)
    check_positive("adopt-atan2", lr=lr, weight_decay=wd, a=o["a"], b=o["b"])
    decay, no_decay = decay_and_no_decay(model)
    groups = [{"params": decay, "weight_decay": wd, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return AdoptAtan2([g for g in groups if g["params"]], lr=lr, betas=o["betas"], a=o["a"], b=o["b"])
