"""MoE: the sparse mixture-of-experts decoder baseline of the 5-dollar-llm experiments (`../shared/seeds/000`,
GPU24GBMoEModelConfig: d_model 512, 8 heads, 8 layers, d_ff 2048, 8 experts, top-2, seq 1024; forward returns
(logits, aux_loss)).

Each block is pre-norm: x += Attn(RMSNorm(x)); x += MoE(RMSNorm(x)). Attention is full causal multi-head attention
with RoPE over `max_seq_len` tokens (models.common.SlidingWindowAttention with the window set to max_seq_len, which
never binds inside one call). The feed-forward is a top-k routed mixture of SwiGLU experts:

    p(x)  = softmax(W_r x)                                    router probabilities over E experts
    S(x)  = the k experts with the largest p(x)               (top-k, Shazeer et al. 2017, GShard Lepikhin et al. 2020)
    y(x)  = sum_{e in S(x)} p_e(x) / sum_{e' in S(x)} p_e'(x) * Expert_e(x)

Load balancing (Switch Transformer, Fedus et al. 2021, eq. 4-6; GShard section 2.2), per layer:

    f_e = fraction of the N*k token->expert assignments that go to expert e      (counts; no gradient)
    P_e = mean router probability of expert e over the N tokens
    L_aux = E * sum_e f_e * P_e,     aux_loss = load_balance_coef * mean over layers of L_aux

L_aux = 1 under uniform routing (P_e = f_e = 1/E); for confident routing (P = f) it is E * sum_e f_e^2 >= 1 by
Cauchy-Schwarz, with equality iff the load is balanced, and it reaches E when every token goes to one expert.

Routing is dropless (no capacity factor, no token is ever dropped), and each token's output depends only on that
token, so causality holds exactly; only the aux loss uses batch statistics. Experts run on contiguous slices of the
token->expert assignments sorted by expert (one matmul pair per expert, no Python loop over tokens);
`MoEFeedForward.forward_naive` is the per-token loop the tests compare against.

Streaming is the "window" form, like Transformer++: every token attends to itself and at most max_seq_len - 1
previous tokens (exact while a stream fits in max_seq_len, an exact sliding window past it). With `kv_cache` (the
default) the state is each block's attention key/value cache, {"k", "v": [B, H, S, D] rotated keys and values of
the last S <= max_seq_len - 1 tokens, "pos": tokens seen} per block (models.common.SlidingWindowAttention's
state), so a call costs only its new tokens' attention over the cache instead of re-reading the window, and
candidates after a prompt are scored in one short call; `kv_cache=False` keeps the older token-tail state, re-read
on every call (harness/adapter.py WindowStreaming), for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.adapter import LMAdapter, WindowStreaming, apply_overrides, flavor
from harness.errors import HarnessError
from models.common import RMSNorm, SlidingWindowAttention, SwiGLU


@dataclass(frozen=True)
class MoEConfig:
    vocab_size: int = 256  # set from the task
    d_model: int = 128  # model width
    n_heads: int = 4  # attention heads (head dim = d_model / n_heads)
    n_layers: int = 4  # decoder blocks, each attention + MoE feed-forward
    d_ff: int = 64  # hidden width of each SwiGLU expert
    n_experts: int = 8  # routed experts per layer
    top_k: int = 2  # experts each token is sent to
    load_balance_coef: float = 0.01  # weight of the Switch load-balancing loss in aux_loss (5-dollar-llm: 0.01)
    max_seq_len: int = 4096  # longest context one call attends over (full causal attention)
    tie_embeddings: bool = True  # LM head shares the token embedding matrix (as the 5-dollar-llm model does)
    kv_cache: bool = True  # streaming state: the attention key/value cache (False: the token tail, re-read per call)


# Total parameters (all experts counted) matched to Transformer++ at vocab 256: tiny ~1.12M, small ~50.7M,
# medium ~370M, large ~756M. `gpu24gb` is the seed's configuration and is not size-matched.
FLAVORS = {
    "tiny": MoEConfig(d_model=128, n_heads=4, n_layers=4, d_ff=64),  # 1.09M
    "small": MoEConfig(d_model=512, n_heads=8, n_layers=8, d_ff=432),  # 51.0M
    "medium": MoEConfig(d_model=1024, n_heads=16, n_layers=13, d_ff=1024),  # 382M
    "large": MoEConfig(d_model=1536, n_heads=16, n_layers=16, d_ff=1024),  # 756M
    "gpu24gb": MoEConfig(d_model=512, n_heads=8, n_layers=8, d_ff=2048, max_seq_len=1024),  # seed 000; 210M total (SwiGLU experts)
}


def load_balancing_loss(router_probs: torch.Tensor, expert_index: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch/GShard auxiliary loss E * sum_e f_e P_e. router_probs [N, E]; expert_index [N, k] (chosen experts)."""
    counts = torch.bincount(expert_index.reshape(-1), minlength=n_experts).to(router_probs.dtype)
    fraction = counts / expert_index.numel()  # f_e: share of assignments, a count (no gradient)
    mean_prob = router_probs.mean(dim=0)  # P_e: carries the gradient to the router
    return n_experts * (fraction * mean_prob).sum()


class MoEFeedForward(nn.Module):
    """Top-k routed mixture of SwiGLU experts. forward(x [B, T, d]) -> (y [B, T, d], load-balancing loss)."""

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise HarnessError(f"MoE top_k must be between 1 and n_experts={n_experts}, got {top_k}")
        self.n_experts, self.top_k = n_experts, top_k
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(dim, hidden) for _ in range(n_experts))

    def route(self, x: torch.Tensor):
        """x [N, d] -> (router probs [N, E], chosen experts [N, k], their renormalised weights [N, k])."""
        probs = self.router(x).float().softmax(dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        return probs, top_i, (top_p / top_p.sum(dim=-1, keepdim=True)).to(x.dtype)

    def forward(self, x: torch.Tensor):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs, top_i, top_w = self.route(x)
        # Sort the N*k (token, expert) assignments by expert: expert e's tokens form one contiguous slice.
        flat_expert = top_i.reshape(-1)
        order = torch.argsort(flat_expert, stable=True)  # stable: tokens keep their order inside a slice
        token_of = order // self.top_k
        counts = torch.bincount(flat_expert, minlength=self.n_experts).tolist()
        expert_in = x.index_select(0, token_of)
        expert_out = torch.cat([expert(chunk) for expert, chunk in zip(self.experts, expert_in.split(counts))])
        weighted = expert_out * top_w.reshape(-1)[order].unsqueeze(-1)
        y = torch.zeros_like(x).index_add_(0, token_of, weighted)
        return y.reshape(shape), load_balancing_loss(probs, top_i, self.n_experts)

    def forward_naive(self, x: torch.Tensor) -> torch.Tensor:
        """Reference: every token, one at a time, through each of its chosen experts."""
        flat = x.reshape(-1, x.shape[-1])
        _, top_i, top_w = self.route(flat)
        rows = []
        for n in range(flat.shape[0]):
            row = torch.zeros_like(flat[n])
            for j in range(self.top_k):
                row = row + top_w[n, j] * self.experts[int(top_i[n, j])](flat[n:n + 1])[0]
            rows.append(row)
        return torch.stack(rows).reshape(x.shape)


class MoEBlock(nn.Module):
    def __init__(self, config: MoEConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model)
        self.attn = SlidingWindowAttention(config.d_model, config.n_heads, window=config.max_seq_len)
        self.ff_norm = RMSNorm(config.d_model)
        self.moe = MoEFeedForward(config.d_model, config.d_ff, config.n_experts, config.top_k)

    def forward(self, x, state=None):
        """-> (x, load-balancing loss, the attention's new key/value state)."""
        attended, state = self.attn(self.attn_norm(x), state)
        x = x + attended
        ff, balance = self.moe(self.ff_norm(x))
        return x + ff, balance, state


class MoELM(WindowStreaming, LMAdapter):
    def __init__(self, config: MoEConfig):
        super().__init__(config)
        if config.d_model % config.n_heads:
            raise HarnessError(f"MoE d_model={config.d_model} must be divisible by n_heads={config.n_heads}")
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embed.weight, std=config.d_model ** -0.5)
        self.blocks = nn.ModuleList(MoEBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward_full(self, input_ids):
        if input_ids.shape[1] > self.config.max_seq_len:
            raise HarnessError(f"MoE got {input_ids.shape[1]} tokens in one call; max_seq_len is "
                               f"{self.config.max_seq_len} (stream longer inputs with state=...)")
        logits, aux, _ = self._run(input_ids, None)
        return logits, aux

    def forward_with_state(self, input_ids, state):
        """Streaming; with kv_cache the state is one attention key/value cache per block (module docstring)."""
        if not self.config.kv_cache:
            return super().forward_with_state(input_ids, state)  # WindowStreaming: re-read the token tail
        return self._run(input_ids, state)

    def _run(self, input_ids, state):
        x = self.embed(input_ids)
        balance, new_state = [], []
        for i, block in enumerate(self.blocks):
            x, layer_balance, layer_state = block(x, None if state is None else state[i])
            balance.append(layer_balance)
            new_state.append(layer_state)
        aux = self.config.load_balance_coef * torch.stack(balance).mean()
        return self.lm_head(self.norm(x)), aux, new_state


def build(preset: str = "tiny", vocab_size: int = 256, overrides: dict | None = None) -> MoELM:
    config = apply_overrides(flavor(FLAVORS, preset, "moe"), {"vocab_size": vocab_size, **(overrides or {})})
    return MoELM(config)
