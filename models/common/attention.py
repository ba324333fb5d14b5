"""Causal sliding-window attention with persistent (learnable, always visible) tokens, in O(T * w).

Query at position t attends the keys at positions t-w+1 .. t and every persistent key. The fast path splits the
sequence into blocks of w queries; block i attends to the keys of blocks i-1 and i only, so the score tensor is
[B, H, T/w, w, 2w + P] -- linear in T -- instead of a masked T x T matrix. When the window does not bind in a
call (w >= the keys it sees) this is plain causal attention, which sdpa runs without the block structure; a
streamed call of at most w queries over a cache (the window binds, but the call is short) is one sdpa call with
the band as a [Tq, P + Tk] mask (Tk < 2w with the w - 1 cached keys below), instead of blocks padded up to the
cache length.
`sliding_window_attention_naive` builds the full masked matrix and is the reference the tests compare against.

Streaming: `SlidingWindowAttention` carries the last w-1 rotated keys and values and the position counter, so a
sequence scored in segments gives the same output as one call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.common.layers import RotaryEmbedding, apply_rotary


def _expand_persistent(pk, B, H, D):
    """Persistent keys/values as [B, H, P, D] (accepts [H, P, D] or [B, H, P, D])."""
    return pk.unsqueeze(0).expand(B, H, -1, D) if pk.dim() == 3 else pk


def sliding_window_attention(q, k, v, window: int, persistent_k=None, persistent_v=None):
    """q [B, H, Tq, D]; k, v [B, H, Tk, D] with Tk >= Tq: the first Tk - Tq keys are past context (a cache) and
    query i sits at key position Tk - Tq + i. Returns [B, H, Tq, D]."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    past = Tk - Tq
    if window >= Tk:  # the window never binds in this call: plain causal attention, no block structure
        return _causal_attention(q, k, v, persistent_k, persistent_v)
    if Tq <= window:  # a short call over a cache: the band as one mask
        return _causal_attention(q, k, v, persistent_k, persistent_v, window)
    if past:
        q = F.pad(q, (0, 0, past, 0))  # align queries with key positions; the padding rows are dropped below
    block = window
    n = -(-Tk // block)
    pad = n * block - Tk
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qb = q.view(B, H, n, block, D)
    kb, vb = k.view(B, H, n, block, D), v.view(B, H, n, block, D)
    prev_k = F.pad(kb, (0, 0, 0, 0, 1, 0))[:, :, :-1]
    prev_v = F.pad(vb, (0, 0, 0, 0, 1, 0))[:, :, :-1]
    keys, values = torch.cat([prev_k, kb], dim=3), torch.cat([prev_v, vb], dim=3)  # [B, H, n, 2*block, D]

    idx = torch.arange(n, device=q.device).view(n, 1, 1)
    t = idx * block + torch.arange(block, device=q.device).view(1, block, 1)  # query positions
    s = (idx - 1) * block + torch.arange(2 * block, device=q.device).view(1, 1, 2 * block)  # key positions
    mask = (s >= 0) & (s <= t) & (s > t - window)  # [n, block, 2*block]
    if persistent_k is not None:
        P = persistent_k.shape[-2]
        pk = _expand_persistent(persistent_k, B, H, D).unsqueeze(2).expand(B, H, n, P, D)
        pv = _expand_persistent(persistent_v, B, H, D).unsqueeze(2).expand(B, H, n, P, D)
        keys, values = torch.cat([pk, keys], dim=3), torch.cat([pv, values], dim=3)
        mask = torch.cat([mask.new_ones(n, block, P), mask], dim=2)

    out = F.scaled_dot_product_attention(
        qb.reshape(B, H * n, block, D), keys.reshape(B, H * n, -1, D), values.reshape(B, H * n, -1, D),
        attn_mask=mask.repeat(H, 1, 1).unsqueeze(0))
    return out.view(B, H, n * block, D)[:, :, past:Tk]


def _causal_attention(q, k, v, persistent_k=None, persistent_v=None, window=None):
    """Causal attention of q [B, H, Tq, D] over k, v [B, H, Tk, D] (query i at key position Tk - Tq + i) and the
    persistent keys: the blocked path's single-block case without its empty previous block (half the scores).
    `window`: also mask keys `window` or more positions back (one [Tq, Tk] band mask)."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    if persistent_k is None and Tq == Tk and window is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = torch.arange(Tk - Tq, Tk, device=q.device).view(Tq, 1)
    s = torch.arange(Tk, device=q.device).view(1, Tk)
    mask = (s <= t) if window is None else (s <= t) & (s > t - window)
    if persistent_k is not None:
        k = torch.cat([_expand_persistent(persistent_k, B, H, D), k], dim=2)
        v = torch.cat([_expand_persistent(persistent_v, B, H, D), v], dim=2)
        mask = torch.cat([mask.new_ones(Tq, persistent_k.shape[-2]), mask], dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def sliding_window_attention_naive(q, k, v, window: int, persistent_k=None, persistent_v=None):
    """Reference: the full [Tq, P + Tk] score matrix with the window mask."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    t = torch.arange(Tk - Tq, Tk, device=q.device).view(Tq, 1)
    s = torch.arange(Tk, device=q.device).view(1, Tk)
    mask = (s <= t) & (s > t - window)
    if persistent_k is not None:
        k = torch.cat([_expand_persistent(persistent_k, B, H, D), k], dim=2)
        v = torch.cat([_expand_persistent(persistent_v, B, H, D), v], dim=2)
        mask = torch.cat([mask.new_ones(Tq, persistent_k.shape[-2]), mask], dim=1)
    scores = (q @ k.transpose(-1, -2)) / D ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


class SlidingWindowAttention(nn.Module):
    """Multi-head causal attention over a sliding window of `window` tokens, with RoPE and `n_persistent` learnable
    persistent tokens (Titans section 4.1: visible to every position, carrying no position).

    forward(x [B, T, d], state) -> (y [B, T, d], new_state); state = {"k", "v": last window-1 rotated keys and
    values, "pos": tokens seen} or None at the start of a stream."""

    def __init__(self, dim: int, n_heads: int, window: int, n_persistent: int = 0, rope_base: float = 10000.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim, self.window = n_heads, dim // n_heads, window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, rope_base)
        self.persistent = nn.Parameter(torch.randn(n_persistent, dim) * dim ** -0.5) if n_persistent else None

    def forward(self, x: torch.Tensor, state: dict | None = None):
        B, T, d = x.shape
        H, D = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        start = 0 if state is None else state["pos"]
        cos, sin = self.rotary(torch.arange(start, start + T, device=x.device))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if state is not None:
            k, v = torch.cat([state["k"], k], dim=2), torch.cat([state["v"], v], dim=2)
        pk = pv = None
        if self.persistent is not None:
            _, pk, pv = self.qkv(self.persistent).view(-1, 3, H, D).permute(1, 2, 0, 3)  # [H, P, D] each
        y = sliding_window_attention(q, k, v, self.window, pk, pv)
        cut = max(k.shape[2] - (self.window - 1), 0)  # keep at most window-1 keys (fewer early in a stream)
        new_state = {"k": k[:, :, cut:].detach(), "v": v[:, :, cut:].detach(), "pos": start + T}
        return self.out(y.transpose(1, 2).reshape(B, T, d)), new_state
