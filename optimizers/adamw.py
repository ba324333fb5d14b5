"""AdamW, the default optimizer: weight decay on matrices only (not on embeddings, norms or biases)."""

from __future__ import annotations

import torch
from torch import nn


def decay_and_no_decay(model: nn.Module) -> tuple[list, list]:
    decay, no_decay = [], []
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embedding_params else no_decay).append(p)
    return decay, no_decay


def build(model: nn.Module, preset, lr: float | None = None, betas=(0.9, 0.95), eps: float = 1e-8, **_ignored):
    lr = float(lr if lr is not None else preset.lr)
    decay, no_decay = decay_and_no_decay(model)
    groups = [{"params": decay, "weight_decay": preset.weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas), eps=eps,
                             foreach=True)
