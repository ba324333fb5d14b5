"""The SSD (state space duality) scan of Mamba-2 (Dao & Gu 2024, arXiv:2405.21060, Sections 6-7): the CPU path
that replaces transformers' pure-PyTorch `mamba2_chunk_scan`, and the token-by-token recurrence it is tested
against.

Per head h, with a scalar decay A_h < 0, a step dt_t > 0 (after dt_bias, softplus and the step limits), input
x_t [P] and the group's B_t, C_t [N] (heads share B and C within a group, like GQA keys):

    H_t = exp(dt_t A_h) H_{t-1} + dt_t x_t B_t^T        (state H_t: [P, N])
    y_t = H_t C_t + D_h x_t

`ssd_chunked` is the chunked algorithm of Section 6 (the paper's `ssd_minimal` listing): inside a chunk of L
tokens the output is a masked, decayed "attention" (C B^T * exp(segsum(dt A))) @ (dt x); each chunk's input to the
state is (dt x decayed to the chunk end)^T B; the states at chunk starts follow the recurrence over chunks; and each
token reads its chunk's start state as C H_start, decayed to its position. The differences from transformers'
version are about memory: C B^T is formed once per group, not per head (transformers repeats B and C to every
head first: a 16x larger tensor at the small preset); the chunk recurrence is a loop over chunks (O(chunks), not a
[chunks x chunks] decay matrix); and in training the whole scan is recomputed in backward
(torch.utils.checkpoint), so a layer keeps only its inputs and output for backward instead of every intermediate.
At the small preset (T = 1024) that takes Mamba-2 from 6.0 GB of model memory to the order of Transformer++'s
(`harness bench --models mamba2 --preset small --seq-lens 1024`).

`ssd_naive` walks the recurrence one token at a time: the reference for the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def ssd_naive(x, dt, A, B, C, D=None, initial_state=None):
    """x [b, T, h, p], dt [b, T, h] (the final steps), A [h], B and C [b, T, g, n], D [h] or None,
    initial_state [b, h, p, n] or None -> (y [b, T, h, p], final state [b, h, p, n])."""
    b, T, h, p = x.shape
    r = h // B.shape[2]
    Bh, Ch = B.repeat_interleave(r, dim=2), C.repeat_interleave(r, dim=2)
    H = x.new_zeros(b, h, p, B.shape[3]) if initial_state is None else initial_state.to(x.dtype)
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        H = decay * H + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        y = (H @ Ch[:, t, :, :, None])[..., 0]
        ys.append(y if D is None else y + D[:, None] * x[:, t])
    return torch.stack(ys, 1), H


def ssd_chunked(x, dt, A, B, C, chunk_size, D=None, initial_state=None):
    """`ssd_naive`'s result, chunk-parallel (arguments as there, plus the chunk length)."""
    b, T, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r, L = h // g, chunk_size
    pad = (-T) % L
    if pad:  # zero inputs with zero steps (decay exp(0) = 1) leave the state as it was
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    c = x.shape[1] // L
    # layouts: heads as (group, head in group), time as (chunk, position): [b, c, g, r, l, ...]
    log_decay = (dt * A).view(b, c, L, g, r).permute(0, 1, 3, 4, 2)  # [b, c, g, r, l]
    cum = log_decay.cumsum(-1)
    xs = (x * dt[..., None]).view(b, c, L, g, r, p).permute(0, 1, 3, 4, 2, 5)  # dt x: [b, c, g, r, l, p]
    Bc = B.view(b, c, L, g, n).permute(0, 1, 3, 2, 4).unsqueeze(3)  # [b, c, g, 1, l, n]
    Cc = C.view(b, c, L, g, n).permute(0, 1, 3, 2, 4).unsqueeze(3)
    # 1. inside each chunk: y_l = sum_{s <= l} (C_l . B_s) exp(cum_l - cum_s) dt_s x_s
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    decay_ls = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~causal, -torch.inf).exp()
    y = ((Cc @ Bc.transpose(-1, -2)) * decay_ls) @ xs  # C B^T once per group, broadcast over its heads
    # 2. each chunk's input to the state at its end: sum_l exp(cum_end - cum_l) dt_l x_l B_l^T  [b, c, g, r, p, n]
    to_end = (cum[..., -1:] - cum).exp().unsqueeze(-1)
    chunk_inputs = (xs * to_end).transpose(-1, -2) @ Bc
    # 3. the states at chunk starts, chunk by chunk
    chunk_decay = cum[..., -1].exp()[..., None, None]  # [b, c, g, r, 1, 1]
    state = (x.new_zeros(b, g, r, p, n) if initial_state is None
             else initial_state.to(x.dtype).reshape(b, g, r, p, n))
    starts = []
    for j in range(c):
        starts.append(state)
        state = chunk_decay[:, j] * state + chunk_inputs[:, j]
    starts = torch.stack(starts, 1)  # [b, c, g, r, p, n]
    # 4. every token reads its chunk's start state, decayed to its position: exp(cum_l) C_l H_start
    y = y + (Cc @ starts.transpose(-1, -2)) * cum.exp().unsqueeze(-1)
    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, c * L, h, p)[:, :T]
    if D is not None:
        y = y + D[:, None] * x[:, :T]
    return y, state.reshape(b, h, p, n)


def ssd_chunk_scan(hidden_states, dt, A, B, C, chunk_size, D=None, dt_bias=None, initial_states=None,
                   dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False, recompute=None,
                   **kwargs):
    """A drop-in for transformers' `mamba2_chunk_scan` (same arguments and results; float32 math, as there).
    recompute: recompute the scan in backward instead of keeping its intermediates (None: whenever autograd
    records)."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1])
    args = (hidden_states.float(), dt.float(), A.float(), B.float(), C.float(), chunk_size,
            None if D is None else D.float(), initial_states)
    recompute = torch.is_grad_enabled() if recompute is None else recompute
    y, final = checkpoint(ssd_chunked, *args, use_reentrant=False) if recompute else ssd_chunked(*args)
    return (y, final) if return_final_states else y
