"""`deep-nested`: the DeepNestedOptimizer (learned momentum over a continuum memory system + learned per-group LR
multipliers, meta-learned). See optimizer.py for the design, inner.py for the update rule, meta.py for the
meta-objectives, networks.py for the learned pieces."""

from __future__ import annotations

from torch import nn

from harness.errors import HarnessError
from optimizers.deep_nested.optimizer import DeepNestedOptimizer
from optimizers.options import check_positive, parse_options
from optimizers.param_groups import param_roles

DEFAULTS = {"lr": None, "weight_decay": None, "mode": "explicit", "betas": (0.9, 0.95), "eps": 1e-8,
            "medium_every": 10, "slow_every": 100, "momentum_hidden": 16, "controller_hidden": 32,
            "max_lr_mult": 4.0, "meta_lr": 1e-3, "meta_every": 50, "k_unroll": 3, "meta_order": 1,
            "meta_grad_clip": 1.0}
CHOICES = {"mode": ("simple", "explicit"), "meta_order": (1, 2)}


def build(model: nn.Module, preset, loss_fn=None, **options) -> DeepNestedOptimizer:
    """Options: lr (peak, both groups; default preset.lr), weight_decay (core group; default preset.weight_decay),
    mode (simple|explicit), betas, eps, medium_every / slow_every (CMS level periods, steps), momentum_hidden,
    controller_hidden, max_lr_mult, meta_lr, meta_every (simple mode), k_unroll (explicit mode),
    meta_order (1: first-order unroll, 2: through the inner gradients), meta_grad_clip."""
    o = parse_options("deep-nested", options, DEFAULTS, CHOICES)
    lr = float(o["lr"] if o["lr"] is not None else preset.lr)
    wd = float(o["weight_decay"] if o["weight_decay"] is not None else preset.weight_decay)
    check_positive("deep-nested", lr=lr, weight_decay=wd, eps=o["eps"], meta_lr=o["meta_lr"],
                   max_lr_mult=o["max_lr_mult"])
    ints = {k: o[k] for k in ("medium_every", "slow_every", "momentum_hidden", "controller_hidden", "meta_every",
                              "k_unroll")}
    bad = [f"{k}={v}" for k, v in ints.items() if v < 1]
    if bad or not 1 < o["medium_every"] < o["slow_every"] or o["max_lr_mult"] < 1:
        raise HarnessError(f"optimizer deep-nested: need integers >= 1 and 1 < medium_every < slow_every and "
                           f"max_lr_mult >= 1; got {', '.join(bad) or ''} medium_every={o['medium_every']} "
                           f"slow_every={o['slow_every']} max_lr_mult={o['max_lr_mult']}")
    params = dict(model.named_parameters())
    core, embed = [], []
    for name, role in param_roles(model).items():
        (core if role == "matrix" else embed).append(params[name])
    groups = [g for g in ({"params": core, "lr": lr, "weight_decay": wd, "name": "core"},
                          {"params": embed, "lr": lr, "weight_decay": 0.0, "name": "embed"}) if g["params"]]
    return DeepNestedOptimizer(model, groups, loss_fn=loss_fn, mode=o["mode"], betas=o["betas"], eps=o["eps"],
                               cms_frequencies=(1, o["medium_every"], o["slow_every"]),
                               momentum_hidden=o["momentum_hidden"], controller_hidden=o["controller_hidden"],
                               max_lr_mult=o["max_lr_mult"], meta_lr=o["meta_lr"], meta_every=o["meta_every"],
                               k_unroll=o["k_unroll"], meta_order=o["meta_order"],
                               grad_clip=float(getattr(preset, "grad_clip", 0.0) or 0.0),
                               meta_grad_clip=o["meta_grad_clip"])


__all__ = ["DeepNestedOptimizer", "build"]
