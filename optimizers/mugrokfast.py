"""MuGrokfast: a Grokfast gradient filter in front of Muon-style orthogonalised momentum for 2-D matrices and
AdamW for everything else (seed 004's "MuonGrokfast", with proper orthogonalisation of every 2-D matrix).

Grokfast-EMA (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients", Algorithm 2):
    mu_t = alpha mu_{t-1} + (1 - alpha) g_t,        g^_t = g_t + lambda mu_t
applied to every parameter's gradient. Then, for 2-D matrices, Muon (Jordan et al. 2024):
    B_t = momentum B_{t-1} + (1 - momentum) g^_t,   U = g^_t + momentum (B_t - g^_t) if nesterov else B_t
    W <- W (1 - lr wd) - lr sqrt(max(1, rows/cols)) NewtonSchulz(U)
Newton-Schulz works on the smaller Gram side, so tall embeddings (vocab x dim) are orthogonalised like any other
matrix; the seed's column/row normalisation of large rectangular matrices is NOT used. Other parameters: AdamW on
g^_t. `orthogonalize=hidden` sends embeddings and the output head to AdamW instead (Muon's own recommendation).
Defaults: alpha 0.98 (Grokfast's), lambda 0.3 (seed 004's phase-1 preset); lrs as in optimizers/muon.py.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import HarnessError
from optimizers.muon import MUON_TO_ADAMW_LR
from optimizers.newton_schulz import newton_schulz, orthogonal_update_scale
from optimizers.options import check_positive, parse_options
from optimizers.param_groups import gets_weight_decay, param_roles

DEFAULTS = {"muon_lr": None, "adamw_lr": None, "weight_decay": None, "grokfast_alpha": 0.98,
            "grokfast_lambda": 0.3, "momentum": 0.95, "nesterov": True, "ns_steps": 5, "betas": (0.9, 0.95),
            "eps": 1e-8, "orthogonalize": "all-2d"}
CHOICES = {"orthogonalize": ("all-2d", "hidden")}


class MuGrokfast(torch.optim.Optimizer):
    """Groups carry "algorithm": "muon" (2-D, orthogonalised) or "adamw"."""

    def __init__(self, groups, grokfast_alpha=0.98, grokfast_lambda=0.3, momentum=0.95, nesterov=True,
                 ns_steps=5, betas=(0.9, 0.95), eps=1e-8):
        defaults = dict(lr=1e-3, weight_decay=0.0, algorithm="adamw", grokfast_alpha=grokfast_alpha,
                        grokfast_lambda=grokfast_lambda, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        betas=tuple(betas), eps=eps)
        super().__init__(groups, defaults)
        for group in self.param_groups:
            if group["algorithm"] == "muon" and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("MuGrokfast's muon groups take 2-D matrices only")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["grad_ema"] = torch.zeros_like(p)
                    if group["algorithm"] == "muon":
                        state["momentum_buffer"] = torch.zeros_like(p)
                    else:
                        state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                state["step"] += 1
                ema = state["grad_ema"].lerp_(p.grad, 1 - group["grokfast_alpha"])
                grad = p.grad + group["grokfast_lambda"] * ema
                p.mul_(1 - lr * wd)
                if group["algorithm"] == "muon":
                    buf = state["momentum_buffer"].lerp_(grad, 1 - group["momentum"])
                    update = grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                    p.add_(newton_schulz(update, group["ns_steps"]), alpha=-lr * orthogonal_update_scale(p.shape))
                else:
                    beta1, beta2 = group["betas"]
                    t = state["step"].item()
                    m = state["exp_avg"].lerp_(grad, 1 - beta1)
                    v = state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (v / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
                    p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))
        return loss


def build(model: nn.Module, preset, loss_fn=None, **options) -> torch.optim.Optimizer:
    """Options: muon_lr, adamw_lr, weight_decay, grokfast_alpha, grokfast_lambda, momentum, nesterov, ns_steps,
    betas, eps, orthogonalize (all-2d | hidden)."""
    o = parse_options("mugrokfast", options, DEFAULTS, CHOICES)
    adamw_lr = float(o["adamw_lr"] if o["adamw_lr"] is not None else preset.lr)
    muon_lr = float(o["muon_lr"] if o["muon_lr"] is not None else preset.lr * MUON_TO_ADAMW_LR)
    wd = float(o["weight_decay"] if o["weight_decay"] is not None else preset.weight_decay)
    check_positive("mugrokfast", muon_lr=muon_lr, adamw_lr=adamw_lr, weight_decay=wd,
                   grokfast_lambda=o["grokfast_lambda"], momentum=o["momentum"], ns_steps=o["ns_steps"])
    if not 0.0 <= o["grokfast_alpha"] < 1.0:
        raise HarnessError(f"optimizer mugrokfast: grokfast_alpha must be in [0, 1), got {o['grokfast_alpha']}")
    params = dict(model.named_parameters())
    ortho_roles = ("matrix",) if o["orthogonalize"] == "hidden" else ("matrix", "embedding", "head", "router", "other")
    lists = {(alg, decays): [] for alg in ("muon", "adamw") for decays in (True, False)}
    for name, role in param_roles(model).items():
        p = params[name]
        algorithm = "muon" if p.dim() == 2 and role in ortho_roles else "adamw"
        lists[(algorithm, gets_weight_decay(role, p.dim()))].append(p)
    groups = [{"params": ps, "lr": muon_lr if alg == "muon" else adamw_lr, "weight_decay": wd if decays else 0.0,
               "algorithm": alg, "name": f"{alg}_{'decay' if decays else 'no_decay'}"}
              for (alg, decays), ps in lists.items() if ps]
    return MuGrokfast(groups, grokfast_alpha=o["grokfast_alpha"], grokfast_lambda=o["grokfast_lambda"],
                      momentum=o["momentum"], nesterov=o["nesterov"], ns_steps=o["ns_steps"], betas=o["betas"],
                      eps=o["eps"])
