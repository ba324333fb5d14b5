"""Bag of tokens: the control of the recall tasks, a model that sees which tokens occurred but not in what order.

One mixing step, the causal mean of the token embeddings (h_t = x_t + W mean_{s<=t} x_s), followed by position-wise
SwiGLU blocks with no further mixing. At every position the model knows the current token and the multiset of
tokens so far, nothing about which followed which. On MQAR (tasks/recall.py) that is exactly what no recall means:
the multiset says which values are in context but not which key each was paired with, and every pairing is equally
likely given it, so no function of it beats 1/kv_pairs on average (picking any value seen in context). A recall
benchmark whose control scores above that level is measuring a shortcut, not recall (issue: MQAR acceptance 1).

A second bag-mixing layer would break the bound (it can compare the bag before and after each pair), so there is
exactly one. Streams by its state: the running sum of embeddings and the token count, exact and O(1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.adapter import LMAdapter, apply_overrides, flavor
from models.common.layers import RMSNorm, SwiGLU


@dataclass(frozen=True)
class BagOfTokensConfig:
    vocab_size: int = 256  # set from the task
    dim: int = 128  # model width
    depth: int = 4  # position-wise SwiGLU blocks after the single bag-mixing step
    ff_hidden: int = 640  # SwiGLU hidden width


# Sized to Transformer++'s parameter counts at vocab 256 (checked by tests/test_model_contract.py).
FLAVORS = {
    "tiny": BagOfTokensConfig(dim=128, depth=4, ff_hidden=640),
    "small": BagOfTokensConfig(dim=512, depth=12, ff_hidden=2720),
    "medium": BagOfTokensConfig(dim=1024, depth=22, ff_hidden=5440),
    "large": BagOfTokensConfig(dim=1536, depth=20, ff_hidden=8160),
}


class Block(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm, self.ff = RMSNorm(dim), SwiGLU(dim, hidden)

    def forward(self, x):
        return x + self.ff(self.norm(x))


class BagOfTokens(LMAdapter):
    streaming = "state"

    def __init__(self, config: BagOfTokensConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.mix = nn.Linear(config.dim, config.dim, bias=False)
        self.blocks = nn.ModuleList(Block(config.dim, config.ff_hidden) for _ in range(config.depth))
        self.norm = RMSNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)

    def forward_with_state(self, input_ids, state):
        x = self.embed(input_ids)
        total = x.cumsum(1)
        seen = 0 if state is None else state["count"]  # tokens before this call: a Python int, no device sync
        count = torch.arange(seen + 1, seen + x.shape[1] + 1, device=x.device, dtype=x.dtype)
        if state is not None:
            total = total + state["sum"][:, None]
        h = x + self.mix(total / count[None, :, None])
        for block in self.blocks:
            h = block(h)
        new_state = {"sum": total[:, -1].detach(), "count": seen + x.shape[1]}
        return self.head(self.norm(h)), h.new_zeros(()), new_state

    @property
    def max_context(self):
        return None


def build(preset: str = "tiny", vocab_size: int = 256, overrides: dict | None = None) -> BagOfTokens:
    config = apply_overrides(flavor(FLAVORS, preset, "bag-of-tokens"), {"vocab_size": vocab_size, **(overrides or {})})
    return BagOfTokens(config)
