"""The one place that decides what each parameter *is*, for every optimizer that treats parameters differently
(Muon vs AdamW, weight decay or not, DeepNested's core vs embed groups).

Roles:
  "matrix"    - a hidden 2-D weight matrix (attention / MLP projections, raw 2-D weights used in a matmul)
  "embedding" - token / position embeddings (nn.Embedding, learned token-like tables); also an output head whose
                weight IS the embedding (tied), since it is one tensor
  "head"      - the output projection to vocabulary logits
  "norm"      - weights and biases of normalisation layers
  "bias"      - biases of other layers
  "router"    - mixture-of-experts routing weights
  "other"     - anything else (1-D gates and decays, conv kernels, >2-D tensors)

Module types decide first (nn.Embedding; any module whose class name ends in "Norm", which covers nn.LayerNorm,
nn.RMSNorm, models.common.RMSNorm and x-transformers' RMSNorm/LayerNorm/ScaleNorm/...; the output head = the
nn.Linear producing `vocab_size` logits, preferring one named like a head, else the last such Linear registered);
parameter names are the fallback for raw nn.Parameters ("router", "emb", "norm", "bias", "head"/"logits").
"""

from __future__ import annotations

import re
from collections import defaultdict

from torch import nn

ROLES = ("matrix", "embedding", "head", "norm", "bias", "router", "other")
_HEAD_NAME = re.compile(r"(^|\.)(lm_head|to_logits|head|output|unembed|logits)(\.|$)")


def _vocab_size(model: nn.Module) -> int | None:
    for obj in (model, getattr(model, "config", None)):
        value = getattr(obj, "vocab_size", None) if obj is not None else None
        if isinstance(value, int):
            return value
    return None


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or \
        type(module).__name__.endswith("Norm")


def _head_linears(model: nn.Module) -> set[int]:
    """ids of the output head's Linear module(s): Linear(s) producing vocab-size logits."""
    vocab = _vocab_size(model)
    if vocab is None:
        return set()
    candidates = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == vocab]
    named = [m for name, m in candidates if _HEAD_NAME.search(name)]
    if named:
        return {id(m) for m in named}
    return {id(candidates[-1][1])} if candidates else set()


def param_roles(model: nn.Module) -> dict[str, str]:
    """Map each trainable parameter's name (as `named_parameters` gives it; tied parameters once) to its role."""
    heads = _head_linears(model)
    owner: dict[int, tuple[str, nn.Module]] = {}  # param id -> (module name, module) of its first owner
    role_by_module: dict[int, str] = {}
    for mname, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if isinstance(module, nn.Embedding):  # an embedding wins over a tied head: same tensor
                role_by_module[id(p)] = "embedding"
            elif id(p) not in role_by_module:
                if _is_norm(module):
                    role_by_module[id(p)] = "norm"
                elif id(module) in heads and p is module.weight:
                    role_by_module[id(p)] = "head"
            owner.setdefault(id(p), (mname, module))

    roles: dict[str, str] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in role_by_module:
            roles[name] = role_by_module[id(p)]
            continue
        lowered = name.lower()
        parts = lowered.split(".")
        leaf, parent = parts[-1], (parts[-2] if len(parts) > 1 else "")
        owner_class = type(owner[id(p)][1]).__name__.lower()
        if "router" in lowered or "router" in owner_class:
            roles[name] = "router"
        elif leaf == "bias" or leaf.endswith("_bias"):
            roles[name] = "bias"
        elif "norm" in parent or "norm" in leaf:
            roles[name] = "norm"
        elif "emb" in leaf or "embedding" in lowered or "persistent" in lowered:
            roles[name] = "embedding"
        elif p.dim() == 2 and _HEAD_NAME.search(lowered) and _vocab_size(model) in (None, p.shape[0]):
            roles[name] = "head"
        elif p.dim() == 2:
            roles[name] = "matrix"
        else:
            roles[name] = "other"
    return roles


def params_by_role(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """{role: [parameters]} for every role in ROLES (empty lists included), in named_parameters order."""
    grouped: dict[str, list] = defaultdict(list)
    params = dict(model.named_parameters())
    for name, role in param_roles(model).items():
        grouped[role].append(params[name])
    return {role: grouped[role] for role in ROLES}


def gets_weight_decay(role: str, ndim: int) -> bool:
    """Weight decay on weight matrices (hidden, head, router, other >=2-D), never on embeddings, norms, biases."""
    return role in ("matrix", "head", "router") or (role == "other" and ndim >= 2)
