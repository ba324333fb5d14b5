"""Titans language models (Titans, arXiv 2501.00663, section 4) and the MIRAS memories (arXiv 2504.13173,
section 5) as LMs, all built from one `NeuralMemory` layer.

  lmm: every block is memory -> SwiGLU (the LMM as a sequence model, section 4.3's "LMM").
  mac: memory as a context, eqs. 21-25 (see mac.py).
  mag: memory as a gate, eqs. 26-28: o = norm(SWA*([persistent | x])) (x) sigmoid(norm(M(x))); SWA is sliding-
       window attention with persistent tokens (models.common), O(T * window). `memory_every` > 1 gives the
       memory branch only to every k-th block (the TitanMAC 24GB configuration).
  mal: memory as a layer, eqs. 29-31: y = M(x), o = SWA*([persistent | y]).
MIRAS Moneta (l_3 bias, l_4 retention), Yaad (Huber bias, decay retention) and Memora (l2 bias, KL retention)
use the lmm layout with their bias/retention, no momentum and the residual memory x + LN(W1 GELU(W2 x)) with
expansion 4 (MIRAS section 5.3). Every departure from the papers is a config field whose default is the paper's
form (docs/faithfulness.md).

Every model streams exactly ("state"): per block the memory state (weights, momentum, chunk-start weights,
conv tail) and the attention's KV window or current segment; state is detached between calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.adapter import LMAdapter
from harness.errors import HarnessError
from models.common import RMSNorm, SlidingWindowAttention, SwiGLU
from models.titans.mac import MACBlock
from models.titans.memory import NeuralMemory


@dataclass(frozen=True)
class TitansConfig:
    vocab_size: int = 256  # set from the task
    variant: str = "lmm"  # lmm | mac | mag | mal
    dim: int = 128  # model width
    depth: int = 4  # blocks
    heads: int = 4  # attention heads and memory heads (head dim = dim / heads)
    ff_hidden: int = 512  # SwiGLU hidden width
    memory_depth: int = 2  # L_M: layers of each head's memory MLP (1 = matrix memory)
    memory_expansion: int = 2  # hidden width of the memory MLP = expansion * head dim (MIRAS flavors: 4)
    # memory network (memory_net.py): "mlp" = Titans' silu(x W1) W2 (section 3.1); "residual_ln" = MIRAS'
    # x + LN(W1 GELU(W2 x)) (section 5.3), the default of the miras-* flavors
    memory_net: str = "mlp"
    chunk_size: int = 16  # b: tokens whose inner gradients are taken at the same weights (section 3.2)
    conv_size: int = 4  # depthwise causal conv on q, k, v
    momentum: bool = True  # surprise momentum eta_t (eq. 13); MIRAS variants run without
    decay: bool = True  # forgetting gate alpha_t (eq. 13 / retention gate)
    bias: str = "l2"  # attentional bias: l2 | lp | huber
    bias_p: float = 3.0  # p of the l_p bias (Moneta: 3)
    # form of the Huber bias: "norm" = Yaad's (MIRAS section 5.3: l2 gradient where ||e||_2 <= delta_t, delta_t
    # times the l1 gradient elsewhere); "coordinate" = sum_j Huber(e_j), the harness's earlier form
    huber: str = "norm"
    retention: str = "decay"  # decay (l2) | lq (Moneta) | kl (Memora)
    retention_q: float = 4.0  # q of the l_q retention (Moneta: 4)
    # where the l_q retention normalises (objectives.LqRetention): "chunk" = at chunk boundaries, reads inside a
    # chunk scaled by the chunk-start norm (MIRAS section 5.4, Moneta's parallel form); "token" = every token's
    # state (with chunk_size=1 the exact recurrence; the harness's earlier form, 7-14x slower per tiny training
    # step: it materialises every token's weights)
    lq_normalize: str = "chunk"
    # upper bound of the inner learning rate theta_t (0.1 diverged at init). A chunk takes every token's gradient
    # at the chunk-start weights, so with the l2 bias a chunk moves the memory by up to 2 * chunk_size * theta_max
    # along a key its tokens share; above 2 that step overshoots and grows the memory chunk after chunk (a matrix
    # memory at theta_max 0.5 with chunks of 4 overflowed to NaN within ~2k tokens of a stream)
    theta_max: float = 0.01
    # cap on the norm of each token's inner gradient per memory layer (titans-pytorch's max_grad_norm); without
    # it the depth-2 memory's inner descent can run away within one sequence once the gates learn a large step
    # (titans-mac at lr 3e-3 on BABILong: 0.5 -> 1e23 in one step); 2.0 is above the 99th percentile at init
    # (not in the papers: TitansLM.memory_stats reports the fraction of gradients it capped in training)
    inner_grad_clip: float | None = 2.0
    # recompute each chunk of the unfused memory path in backward instead of storing its intermediates (ops.py,
    # run_chunks): None = where the retention forms per-token weights (Memora, Moneta's "token" form; Memora
    # small, one 512-token sequence: 19 GB peak RSS without, 9.8 GB with, ~25 % slower); true / false forces it
    recompute: bool | None = None
    window: int = 64  # sliding-window attention width (mag, mal)
    segment: int = 32  # MAC segment length
    # what MAC's memory writes and reads: "attn_out" = the attention output y_t (Titans eqs. 24-25: M_t written
    # with y_t, o_t = y_t (x) M*_t(y_t)); "residual" = the residual stream x_t + y_t, the harness's earlier form
    mac_memory_input: str = "attn_out"
    n_persistent: int = 4  # learnable persistent tokens visible to every position (mac, mag, mal)
    memory_every: int = 1  # mag: a memory branch in every k-th block (others are plain SWA blocks)
    tie_embeddings: bool = False  # share the input embedding with the output head


def _memory_kwargs(cfg: TitansConfig) -> dict:
    return dict(depth=cfg.memory_depth, expansion=cfg.memory_expansion, chunk_size=cfg.chunk_size,
                conv_size=cfg.conv_size, momentum=cfg.momentum, decay=cfg.decay, bias=cfg.bias,
                bias_p=cfg.bias_p,
                retention=cfg.retention, retention_q=cfg.retention_q, theta_max=cfg.theta_max,
                grad_clip=cfg.inner_grad_clip, net=cfg.memory_net, huber=cfg.huber, recompute=cfg.recompute,
                lq_normalize=cfg.lq_normalize)


class LMMBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm_mem, self.norm_ff = RMSNorm(cfg.dim), RMSNorm(cfg.dim)
        self.memory = NeuralMemory(cfg.dim, cfg.heads, **_memory_kwargs(cfg))
        self.ff = SwiGLU(cfg.dim, cfg.ff_hidden)

    def forward(self, x, state=None):
        m, state = self.memory(self.norm_mem(x), state)
        x = x + m
        return x + self.ff(self.norm_ff(x)), state


class MAGBlock(nn.Module):
    def __init__(self, cfg, with_memory: bool = True):
        super().__init__()
        self.norm_in, self.norm_ff = RMSNorm(cfg.dim), RMSNorm(cfg.dim)
        self.attn = SlidingWindowAttention(cfg.dim, cfg.heads, cfg.window, cfg.n_persistent)
        self.memory = NeuralMemory(cfg.dim, cfg.heads, **_memory_kwargs(cfg)) if with_memory else None
        if with_memory:
            self.gate_norm_y, self.gate_norm_m = RMSNorm(cfg.dim), RMSNorm(cfg.dim)
        self.ff = SwiGLU(cfg.dim, cfg.ff_hidden)

    def forward(self, x, state=None):
        state = state or {"attn": None, "memory": None}
        h = self.norm_in(x)
        y, attn_state = self.attn(h, state["attn"])
        if self.memory is not None:
            m, mem_state = self.memory(h, state["memory"])
            x = x + self.gate_norm_y(y) * torch.sigmoid(self.gate_norm_m(m))  # eq. 28
        else:
            x, mem_state = x + y, None
        return x + self.ff(self.norm_ff(x)), {"attn": attn_state, "memory": mem_state}


class MALBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm_mem, self.norm_attn, self.norm_ff = RMSNorm(cfg.dim), RMSNorm(cfg.dim), RMSNorm(cfg.dim)
        self.memory = NeuralMemory(cfg.dim, cfg.heads, **_memory_kwargs(cfg))
        self.attn = SlidingWindowAttention(cfg.dim, cfg.heads, cfg.window, cfg.n_persistent)
        self.ff = SwiGLU(cfg.dim, cfg.ff_hidden)

    def forward(self, x, state=None):
        state = state or {"attn": None, "memory": None}
        m, mem_state = self.memory(self.norm_mem(x), state["memory"])  # eq. 30
        x = x + m
        y, attn_state = self.attn(self.norm_attn(x), state["attn"])  # eq. 31
        x = x + y
        return x + self.ff(self.norm_ff(x)), {"attn": attn_state, "memory": mem_state}


def _detach(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detach(v) for v in obj)
    return obj


class TitansLM(LMAdapter):
    streaming = "state"

    def __init__(self, config: TitansConfig):
        super().__init__(config)
        cfg = config
        if cfg.variant not in ("lmm", "mac", "mag", "mal"):
            raise HarnessError(f"unknown Titans variant {cfg.variant!r}; accepted: lmm, mac, mag, mal")
        if cfg.dim % cfg.heads:
            raise HarnessError(f"dim {cfg.dim} is not divisible by heads {cfg.heads}")
        if cfg.mac_memory_input not in ("attn_out", "residual"):
            raise HarnessError(f"unknown mac_memory_input {cfg.mac_memory_input!r}; accepted: attn_out, residual")
        if cfg.memory_depth < 1 or cfg.chunk_size < 1 or cfg.segment < 1 or cfg.window < 1:
            raise HarnessError("memory_depth, chunk_size, segment and window must all be >= 1")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        if cfg.variant == "lmm":
            blocks = [LMMBlock(cfg) for _ in range(cfg.depth)]
        elif cfg.variant == "mac":
            blocks = [MACBlock(cfg, _memory_kwargs(cfg)) for _ in range(cfg.depth)]
        elif cfg.variant == "mag":
            every = max(1, cfg.memory_every)
            blocks = [MAGBlock(cfg, with_memory=(i % every == every - 1)) for i in range(cfg.depth)]
        else:
            blocks = [MALBlock(cfg) for _ in range(cfg.depth)]
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.apply(self._init)

    @staticmethod
    def _init(module):
        if isinstance(module, nn.Linear) and module.bias is None:  # projections (gate nets keep their init)
            nn.init.normal_(module.weight, 0.0, 0.02)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.02)

    def memory_stats(self) -> dict:
        """For the run record: how often the inner-gradient cap (not in the papers) bit in training-mode
        forwards, as the fraction of (batch row, head, token, layer) inner gradients it scaled down."""
        clip = self.config.inner_grad_clip
        if clip is None:
            return {"inner_grad_clip": None}
        capped = counted = 0
        for module in self.modules():
            if isinstance(module, NeuralMemory):
                c, n = module.cap_counts()
                capped, counted = capped + c, counted + n
        out = {"inner_grad_clip": clip, "grad_cap_counted": counted, "grad_cap_capped": capped}
        if counted:  # absent, not 0, when nothing was counted (no training-mode forward)
            out["grad_cap_fraction"] = capped / counted
        return out

    def forward_with_state(self, input_ids, state):
        x = self.embed(input_ids)
        states = state if state is not None else [None] * len(self.blocks)
        new_states = []
        for block, s in zip(self.blocks, states):
            x, s = block(x, s)
            new_states.append(s)
        logits = self.head(self.norm(x))
        return logits, logits.new_zeros(()), _detach(new_states)
