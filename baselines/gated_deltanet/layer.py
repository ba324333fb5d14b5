"""The Gated DeltaNet token mixer (Yang, Kautz & Hatamizadeh 2024, arXiv:2412.06464, Section 3.4 and Figure 1 right),
laid out like flash-linear-attention's `GatedDeltaNet` layer:

    q, k, v = SiLU(ShortConv(W_q x)), SiLU(ShortConv(W_k x)), SiLU(ShortConv(W_v x))
    q, k    = L2Norm(q), L2Norm(k)                                   (per head)
    alpha_t = exp(g_t),  g_t = -exp(A_log) * softplus(W_a x_t + dt_bias)   (Mamba-2 style decay, in (0, 1))
    beta_t  = sigmoid(W_b x_t)                                       (writing strength, in (0, 1))
    o       = gated_delta_rule(q, k, v, alpha, beta)                 (Eq. 10, see ops.py)
    y       = W_o (RMSNorm(o) * SiLU(W_g x))                         (per-head norm, output gate)

The shared CausalDepthwiseConv has a bias (fla's short conv has none by default): a few extra parameters.

Streaming state: (conv_state [B, conv_size - 1, channels] of the short conv, recurrent_state [B, H, K, V]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from baselines.gated_deltanet.ops import chunk_gated_delta_rule, library_chunk_gated_delta_rule
from models.common import CausalDepthwiseConv, RMSNorm


class GatedDeltaNet(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, expand_v: int = 2, conv_size: int = 4,
                 chunk_size: int = 64, norm_eps: float = 1e-6):
        super().__init__()
        library_chunk_gated_delta_rule()  # looked up now: inside a compiled forward it breaks the graph
        self.num_heads, self.head_k_dim, self.head_v_dim = num_heads, head_dim, head_dim * expand_v
        self.key_dim, self.value_dim = num_heads * head_dim, num_heads * head_dim * expand_v
        self.chunk_size = chunk_size
        self.q_proj = nn.Linear(dim, self.key_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.key_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.value_dim, bias=False)
        # One depthwise conv over the concatenated q|k|v channels: the same as fla's three separate short convs
        # (depthwise = every channel has its own filter), with one streaming state.
        self.qkv_conv = CausalDepthwiseConv(2 * self.key_dim + self.value_dim, conv_size)
        self.a_proj = nn.Linear(dim, num_heads, bias=False)  # data-dependent part of the decay
        self.b_proj = nn.Linear(dim, num_heads, bias=False)  # beta logits
        # Decay parametrisation and init of fla (from Mamba-2): A in [1, 16], dt in [1e-3, 1e-1] log-uniformly,
        # stored as inverse-softplus so that softplus(dt_bias) = dt at init.
        self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(1, 16).log())
        dt = torch.exp(torch.rand(num_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.g_proj = nn.Linear(dim, self.value_dim, bias=False)  # output gate
        self.o_norm = RMSNorm(self.head_v_dim, eps=norm_eps)  # shared across heads, as in fla
        self.o_proj = nn.Linear(self.value_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, state: tuple | None = None):
        """x [B, T, dim], state None or (conv_state, recurrent_state) -> (y [B, T, dim], new_state)."""
        B, T, _ = x.shape
        conv_state, recurrent_state = state if state is not None else (None, None)
        qkv, conv_state = self.qkv_conv(torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1),
                                        conv_state)
        q, k, v = F.silu(qkv).split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = F.normalize(q.view(B, T, self.num_heads, self.head_k_dim), dim=-1, eps=1e-6)
        k = F.normalize(k.view(B, T, self.num_heads, self.head_k_dim), dim=-1, eps=1e-6)
        v = v.view(B, T, self.num_heads, self.head_v_dim)
        beta = self.b_proj(x).sigmoid()
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)  # log alpha <= 0
        o, recurrent_state = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=recurrent_state,
                                                    output_final_state=True, chunk_size=self.chunk_size)
        gate = self.g_proj(x).view(B, T, self.num_heads, self.head_v_dim)
        o = self.o_norm(o) * F.silu(gate)
        return self.o_proj(o.reshape(B, T, self.value_dim)), (conv_state, recurrent_state)
