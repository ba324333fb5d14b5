"""Parallel scan for the first-order linear recurrence h_t = a_t * h_{t-1} + b_t.

`linear_scan` uses the Hillis-Steele doubling scan: log2(T) rounds of elementwise products over the whole
sequence, O(T log T) work, no Python loop over time steps, and gradients flow through every step (nothing is
detached). `linear_scan_naive` is the token-by-token loop it is tested against.
"""

from __future__ import annotations

import torch


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, dim: int = 1) -> torch.Tensor:
    """All h_t of h_t = a_t * h_{t-1} + b_t along `dim` (time). `a` broadcasts against `b`; `h0` is the state
    before the first step (shape of b without the time dim; zeros if None). Returns h with b's shape."""
    a = a.movedim(dim, 0)
    b = b.movedim(dim, 0)
    a = a.expand(b.shape) if a.shape != b.shape else a
    T, offset = b.shape[0], 1
    A, B = a, b  # after round r: B_t = sum over the last 2^r steps, A_t = product of their a's
    while offset < T:
        B = torch.cat([B[:offset], A[offset:] * B[:-offset] + B[offset:]], dim=0)
        A = torch.cat([A[:offset], A[offset:] * A[:-offset]], dim=0)
        offset *= 2
    if h0 is not None:
        B = B + A * h0.unsqueeze(0)
    return B.movedim(0, dim)


def linear_scan_naive(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, dim: int = 1) -> torch.Tensor:
    """Reference: the recurrence walked one step at a time."""
    a = a.movedim(dim, 0).expand(b.movedim(dim, 0).shape)
    b = b.movedim(dim, 0)
    h = torch.zeros_like(b[0]) if h0 is None else h0
    out = []
    for t in range(b.shape[0]):
        h = a[t] * h + b[t]
        out.append(h)
    return torch.stack(out, dim=0).movedim(0, dim)
