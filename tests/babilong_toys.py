"""Tiny stand-in models for the BABILong tests (no registered architecture is needed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.adapter import LMAdapter, WindowStreaming


@dataclass(frozen=True)
class ToyConfig:
    vocab_size: int = 256  # tokens
    dim: int = 8  # embedding width
    max_seq_len: int | None = None  # attention window of the windowed toy (None for the recurrent one)


class RunningMeanLM(LMAdapter):
    """h_t = mean of the embeddings of tokens 0..t (a fixed-size state: running sum and count);
    logits_t = W (tanh(h_t) + F[x_t]). Exact in float64, so streamed and one-call scores agree to ~1e-12."""

    streaming = "state"

    def __init__(self, config: ToyConfig = ToyConfig()):
        super().__init__(config)
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(config.vocab_size, config.dim, generator=g, dtype=torch.float64))
        self.cur = nn.Parameter(torch.randn(config.vocab_size, config.dim, generator=g, dtype=torch.float64))
        self.head = nn.Parameter(torch.randn(config.dim, config.vocab_size, generator=g, dtype=torch.float64))
        self.max_input = 0  # longest input seen in one call (to check that segments stay bounded)

    def forward_with_state(self, input_ids, state):
        self.max_input = max(self.max_input, input_ids.shape[1])
        B, T = input_ids.shape
        if state is None:
            state = (torch.zeros(B, self.config.dim, dtype=torch.float64), torch.zeros(B, 1, dtype=torch.float64))
        total, count = state
        sums = total[:, None] + torch.cumsum(self.emb[input_ids], dim=1)
        counts = count[:, None] + torch.arange(1, T + 1, dtype=torch.float64)[None, :, None]
        h = torch.tanh(sums / counts) + self.cur[input_ids]
        logits = h @ self.head
        return logits, logits.new_zeros(()), (sums[:, -1], counts[:, -1])


class WindowedLM(WindowStreaming, LMAdapter):
    """A causal model that sees a bounded window (the mean of the last <= max_seq_len embeddings)."""

    def __init__(self, config: ToyConfig = ToyConfig(max_seq_len=64)):
        super().__init__(config)
        g = torch.Generator().manual_seed(1)
        self.emb = nn.Parameter(torch.randn(config.vocab_size, config.dim, generator=g, dtype=torch.float64))
        self.head = nn.Parameter(torch.randn(config.dim, config.vocab_size, generator=g, dtype=torch.float64))

    def forward_full(self, input_ids):
        e = torch.cumsum(self.emb[input_ids], dim=1)
        n = torch.arange(1, input_ids.shape[1] + 1, dtype=torch.float64)[None, :, None]
        logits = torch.tanh(e / n) @ self.head
        return logits, logits.new_zeros(())


class NoStreamLM(RunningMeanLM):
    streaming = "none"
