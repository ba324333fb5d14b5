"""Muon for hidden 2-D weight matrices + AdamW for everything else (embeddings, output head, norms, biases,
router, other), as in the 5-dollar-llm MoE baseline (seed 000: muon_lr 0.04, adamw_lr 0.006).

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/) is torch.optim.Muon: Nesterov momentum,
then Newton-Schulz orthogonalisation of the update, lr scaled by sqrt(max(1, rows/cols)) ("original") or
0.2 sqrt(max(rows, cols)) ("match_rms_adamw", Liu et al. 2025, "Muon is Scalable for LLM Training").

Learning rates (peak; the runner's warm-up + cosine schedule scales both by the same factor):
  adamw_lr defaults to preset.lr, muon_lr to preset.lr * 0.04/0.006 (the seed's ratio), so the gpu24gb preset
  (lr 6e-3) gets the seed's exact 0.04 / 0.006 and tiny (lr 3e-3) gets Muon's usual 0.02 / 0.003.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import HarnessError
from optimizers.composite import CompositeOptimizer
from optimizers.options import check_positive, parse_options
from optimizers.param_groups import gets_weight_decay, param_roles

MUON_TO_ADAMW_LR = 0.04 / 0.006
DEFAULTS = {"muon_lr": None, "adamw_lr": None, "weight_decay": None, "momentum": 0.95, "nesterov": True,
            "ns_steps": 5, "adjust_lr_fn": "original", "betas": (0.9, 0.95), "eps": 1e-8}
CHOICES = {"adjust_lr_fn": ("original", "match_rms_adamw")}


def split_params(model: nn.Module) -> tuple[list, list, list]:
    """(hidden matrices for Muon, AdamW params with weight decay, AdamW params without)."""
    params = dict(model.named_parameters())
    muon, decay, no_decay = [], [], []
    for name, role in param_roles(model).items():
        p = params[name]
        if role == "matrix":
            muon.append(p)
        else:
            (decay if gets_weight_decay(role, p.dim()) else no_decay).append(p)
    return muon, decay, no_decay


def build(model: nn.Module, preset, loss_fn=None, **options) -> torch.optim.Optimizer:
    """Options: muon_lr, adamw_lr, weight_decay (default preset.weight_decay, on Muon matrices and AdamW
    matrices), momentum, nesterov, ns_steps, adjust_lr_fn (original|match_rms_adamw), betas, eps (AdamW)."""
    if not hasattr(torch.optim, "Muon"):
        raise HarnessError(f"optimizer muon needs torch.optim.Muon (torch >= 2.9); this is torch {torch.__version__}")
    o = parse_options("muon", options, DEFAULTS, CHOICES)
    adamw_lr = float(o["adamw_lr"] if o["adamw_lr"] is not None else preset.lr)
    muon_lr = float(o["muon_lr"] if o["muon_lr"] is not None else preset.lr * MUON_TO_ADAMW_LR)
    wd = float(o["weight_decay"] if o["weight_decay"] is not None else preset.weight_decay)
    check_positive("muon", muon_lr=muon_lr, adamw_lr=adamw_lr, weight_decay=wd, momentum=o["momentum"])
    if o["ns_steps"] < 1:
        raise HarnessError(f"optimizer muon: ns_steps must be >= 1, got {o['ns_steps']}")
    muon_params, decay, no_decay = split_params(model)
    inner = {}
    if muon_params:
        inner["muon"] = torch.optim.Muon([{"params": muon_params, "name": "muon"}], lr=muon_lr, weight_decay=wd,
                                         momentum=o["momentum"], nesterov=o["nesterov"], ns_steps=o["ns_steps"],
                                         adjust_lr_fn=o["adjust_lr_fn"])
    adamw_groups = [g for g in ({"params": decay, "weight_decay": wd, "name": "adamw_decay"},
                                {"params": no_decay, "weight_decay": 0.0, "name": "adamw_no_decay"}) if g["params"]]
    if adamw_groups:
        inner["adamw"] = torch.optim.AdamW(adamw_groups, lr=adamw_lr, betas=tuple(o["betas"]), eps=o["eps"])
    return CompositeOptimizer(inner)
