"""AdamW (Loshchilov & Hutter 2019), the default optimizer: decoupled weight decay on weight matrices (hidden,
head, router), none on embeddings, norms and biases; roles come from `optimizers.param_groups`."""

from __future__ import annotations

import torch
from torch import nn

from optimizers.options import check_positive, parse_options
from optimizers.param_groups import gets_weight_decay, param_roles

DEFAULTS = {"lr": None, "weight_decay": None, "betas": (0.9, 0.95), "eps": 1e-8}


def decay_and_no_decay(model: nn.Module) -> tuple[list, list]:
    params = dict(model.named_parameters())
    decay, no_decay = [], []
    for name, role in param_roles(model).items():
        p = params[name]
        (decay if gets_weight_decay(role, p.dim()) else no_decay).append(p)
    return decay, no_decay


def build(model: nn.Module, preset, loss_fn=None, **options) -> torch.optim.Optimizer:
    """Options: lr (default preset.lr), weight_decay (default preset.weight_decay), betas "0.9,0.95", eps."""
    o = parse_options("adamw", options, DEFAULTS)
    lr = float(o["lr"] if o["lr"] is not None else preset.lr)
    wd = float(o["weight_decay"] if o["weight_decay"] is not None else preset.weight_decay)
    check_positive("adamw", lr=lr, weight_decay=wd, eps=o["eps"])
    decay, no_decay = decay_and_no_decay(model)
    groups = [{"params": decay, "weight_decay": wd, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(o["betas"]), eps=o["eps"],
                             foreach=True)
