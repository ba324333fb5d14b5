"""Titans MAC, Memory as a Context (Titans, arXiv 2501.00663, section 4.1, eqs. 21-25).

The sequence is cut into segments of `segment` tokens (aligned to absolute stream positions). For segment s:
    h = M*_{s-1}(x W_Q)                                  eq. 21-22: read the memory as it was before the
    segment
    y = Attn([persistent | h | x])                        eq. 23: queries from x; causal inside the segment
    M_s = write(M_{s-1}, y)                               eq. 24: the memory learns from the attention output
    o = y (x) M*_s(y)                                     eq. 25: output gated by the memory read
The memory writes and reads RMSNorm(y) (`mac_memory_input="attn_out"`, the default: eqs. 24-25 with the pre-norm
every memory input gets here); `"residual"` gives it RMSNorm(x + y), the residual stream after attention (the
harness's earlier form). Either way the block's output is x + RMSNorm(y) * sigmoid(RMSNorm(M*(.))) + FF.
Causality: token i of a segment sees every persistent token, the retrieved memory tokens h_j and the segment
tokens x_j for j <= i only (h_j is built from x_j). The score matrix of a segment is [seg, P + 2*seg], so the
cost is O(T * seg). The memory write/read of eq. 24-25 is per token (the read at token t sees writes up to t).

Streaming state per block: the memory state, the retrieval state (the memory at the segment start), and the
keys
and values of the current segment so far (fewer than `segment` tokens each), so cutting a stream anywhere
inside
a segment gives the same result as one call.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from models.common import RMSNorm, RotaryEmbedding, SwiGLU, apply_rotary
from models.titans.memory import NeuralMemory


@functools.lru_cache(maxsize=64)
def _segment_mask(offset: int, n: int, n_persistent: int, device: torch.device) -> torch.Tensor:
    """Additive attention mask [n, P + 2 L] (L = offset + n) of queries at segment positions offset..L-1 over
    [persistent | memory tokens h | segment tokens x]: every persistent token, h_j and x_j for j <= i.
    Cached, so made outside inference mode: a cached inference tensor could not be saved for a later backward."""
    with torch.inference_mode(False):
        seen = torch.arange(offset + n, device=device).view(1, -1) <= torch.arange(offset, offset + n,
                                                                                   device=device).view(-1, 1)
        keep = torch.cat([seen.new_ones(n, n_persistent), seen, seen], dim=1)
        return torch.zeros(keep.shape, device=device).masked_fill_(~keep, float("-inf"))


class MACBlock(nn.Module):
    def __init__(self, cfg, memory_kwargs: dict):
        super().__init__()
        dim, H = cfg.dim, cfg.heads
        self.H, self.D, self.segment = H, dim // H, cfg.segment
        self.memory_on_residual = cfg.mac_memory_input == "residual"  # else on the attention output y
        self.norm_in, self.norm_mem, self.norm_ff = RMSNorm(dim), RMSNorm(dim), RMSNorm(dim)
        self.memory = NeuralMemory(dim, H, **memory_kwargs)
        self.retrieve_q = nn.Linear(dim, H * self.memory.head_dim, bias=False)  # W_Q of eq. 21
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.rotary = RotaryEmbedding(self.D)
        self.persistent = (nn.Parameter(torch.randn(cfg.n_persistent, dim) * dim ** -0.5)
                           if cfg.n_persistent else None)
        self.gate_norm_y, self.gate_norm_m = RMSNorm(dim), RMSNorm(dim)
        self.ff = SwiGLU(dim, cfg.ff_hidden)

    def _split(self, t):  # [B, T, dim] -> [B, H, T, D]
        B, T, _ = t.shape
        return t.view(B, T, self.H, self.D).transpose(1, 2)

    def _piece(self, x, q, k, v, rq, cos, sin, persistent, w_kv_mem, st):
        """n <= segment new tokens that all fall in one segment (x and its precomputed, rotated q, k, v,
        retrieval queries rq and rotary angles); st is updated in place. Returns the attention output y and
        the memory read m."""
        B, n, dim = x.shape
        offset = st["pos"] % self.segment
        if offset == 0:  # a new segment: retrieval reads the memory as it is now (after the previous segment)
            st["retrieval"], st["k"], st["v"] = st["memory"], None, None
        # the memory tokens h = W_out n(M(q)) enter attention only through W_kv h = (W_kv W_out) n(M(q)):
        # one product with the pre-multiplied weight instead of two (eq. 21-22)
        hk, hv = self.memory.read(rq, st["retrieval"], out_weight=w_kv_mem).chunk(2, dim=-1)
        hk, hv = apply_rotary(self._split(hk), cos, sin), self._split(hv)
        # keys of the segment so far: memory tokens then segment tokens, each [B, H, offset + n, D]
        if st["k"] is not None:
            hk, k = torch.cat([st["k"][0], hk], 2), torch.cat([st["k"][1], k], 2)
            hv, v = torch.cat([st["v"][0], hv], 2), torch.cat([st["v"][1], v], 2)
        if offset + n < self.segment:  # the segment goes on in the next call: keep its keys and values
            st["k"], st["v"] = (hk.detach(), k.detach()), (hv.detach(), v.detach())
        else:
            st["k"], st["v"] = None, None
        keys, values = [hk, k], [hv, v]
        if persistent is not None:
            keys.insert(0, persistent[0])
            values.insert(0, persistent[1])
        keys, values = torch.cat(keys, 2), torch.cat(values, 2)
        mask = _segment_mask(offset, n, 0 if persistent is None else persistent[0].shape[2], x.device)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        y = self.attn_out(y.transpose(1, 2).reshape(B, n, dim))  # eq. 23
        mem_in = x + y if self.memory_on_residual else y  # eq. 24-25: write y, read M_t(y_t)
        m, st["memory"] = self.memory(self.norm_mem(mem_in), st["memory"])
        st["pos"] += n
        return y, m

    def forward(self, x, state=None):
        st = dict(state) if state is not None else {"memory": None, "retrieval": None, "k": None, "v": None,
                                                    "pos": 0}
        B, T, dim = x.shape
        # everything that depends on the block input only is computed for the whole call at once
        h_in = self.norm_in(x)
        q, k, v = (self._split(t) for t in self.qkv(h_in).chunk(3, dim=-1))
        cos, sin = self.rotary((st["pos"] + torch.arange(T, device=x.device)) % self.segment)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        rq = self.retrieve_q(h_in).view(B, T, self.H, -1).transpose(1, 2)
        w_kv = self.qkv.weight[dim:]
        persistent = None
        if self.persistent is not None:
            pk, pv = F.linear(self.persistent, w_kv).chunk(2, dim=-1)
            P = pk.shape[0]
            persistent = tuple(t.view(P, self.H, self.D).transpose(0, 1).unsqueeze(0).expand(B, -1, -1, -1)
                               for t in (pk, pv))
        w_kv_mem = w_kv @ self.memory.out.weight  # [2 dim, H d]: see _piece
        # cut the call at segment boundaries; split, not slicing (a slice's backward zero-fills a full-size
        # gradient per piece)
        sizes, t = [], 0
        while t < T:
            sizes.append(min(self.segment - (st["pos"] + t) % self.segment, T - t))
            t += sizes[-1]
        pieces = zip(x.split(sizes, 1), q.split(sizes, 2), k.split(sizes, 2), v.split(sizes, 2),
                     rq.split(sizes, 2), cos.split(sizes), sin.split(sizes))
        ys, ms = [], []
        for xp, qp, kp, vp, rqp, cp, sp in pieces:
            y, m = self._piece(xp, qp, kp, vp, rqp, cp, sp, persistent, w_kv_mem, st)
            ys.append(y)
            ms.append(m)
        y, m = torch.cat(ys, 1), torch.cat(ms, 1)
        x = x + self.gate_norm_y(y) * torch.sigmoid(self.gate_norm_m(m))  # eq. 25
        return x + self.ff(self.norm_ff(x)), st
