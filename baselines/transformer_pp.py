"""Transformer++: the modern decoder-only Transformer baseline of the Titans and MIRAS papers (RoPE, RMSNorm,
SwiGLU, no biases), built on x-transformers as `../shared/seeds/003` prescribes.

Full causal attention over `max_seq_len` tokens. It streams in the "window" form (harness/adapter.py): a stream
that fits in `max_seq_len` gives the logits of one call exactly, and past it every token attends to at most
`max_seq_len` tokens (itself included). With `kv_cache` (the default) the state is the attention key/value cache
(see `TransformerPP`); `kv_cache=False` keeps the older token-tail state that re-reads the window on every call
(harness/adapter.py `WindowStreaming`), for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from x_transformers import Decoder, TransformerWrapper
from x_transformers.attend import Intermediates
from x_transformers.x_transformers import LayerIntermediates

from harness.adapter import LMAdapter, WindowStreaming, apply_overrides, flavor


@dataclass(frozen=True)
class TransformerPPConfig:
    vocab_size: int = 256  # set from the task
    dim: int = 128  # model width
    depth: int = 4  # decoder blocks
    heads: int = 4  # attention heads (head dim = dim / heads)
    ff_mult: int = 4  # SwiGLU hidden width = ff_mult * dim
    max_seq_len: int = 4096  # longest context one call attends over
    # a diagnostic switch, not part of the baseline: each token attends to at most this many previous tokens (0:
    # itself only, a model that cannot mix tokens; the recall tasks' broken-model check uses it); None: all
    attn_window: int | None = None
    # streaming state: True, the per-layer key/value cache of the last max_seq_len - 1 tokens (a call costs only
    # its new tokens); False, the token tail, re-read on every call (slower; kept to compare against)
    kv_cache: bool = True


FLAVORS = {
    "tiny": TransformerPPConfig(dim=128, depth=4, heads=4),  # ~1.1M at vocab 256
    "small": TransformerPPConfig(dim=512, depth=12, heads=8),  # ~50M
    "medium": TransformerPPConfig(dim=1024, depth=22, heads=16),  # ~370M
    "large": TransformerPPConfig(dim=1536, depth=20, heads=16),  # ~760M
}


def window_start(t: int, window: int) -> int:
    """The first position that the token at position t attends to when streaming with the key/value cache: 0
    inside the window (t < window), else a window that slides in steps of window // 8 (step), so that all tokens
    of one step share their first key: (t // step) * step - (window - step). A token past the window thus sees
    between window - step + 1 and window tokens, itself included."""
    step = max(1, window // 8)
    return 0 if t < window else (t // step) * step - (window - step)


class TransformerPP(WindowStreaming, LMAdapter):
    """The decoder. Streaming with `kv_cache` (forward_with_state) carries

        state = {"k": [per attention layer: [B, H, S, D]], "v": [same], "pos": tokens seen so far (an int)}

    the keys and values of the last S <= max_seq_len - 1 tokens of every layer, as x-transformers caches them
    (projected, before RoPE; RoPE is applied at each call from the absolute positions pos - S .. pos + n - 1).
    Why: scoring re-reads nothing, so a call over n new tokens costs their attention over the S cached keys and
    each other instead of a forward over the whole window, and scoring k candidates after a prompt costs one
    call over the k candidates. The token at position t attends to positions window_start(t) .. t, wherever the
    stream is cut: everything while the stream fits in max_seq_len (exactly one full call), and past it a
    window of max_seq_len - step + 1 .. max_seq_len tokens that slides in steps of max_seq_len // 8. The steps
    keep every call a plain causal one (the tokens of one call that share their first key run together),
    where a window sliding token by token would need a band mask that x-transformers materialises per batch
    row and head (about 2x slower past the window on CPU). The state holds plain tensors with the batch as dim 0
    and a shared int, so the default select_state / repeat_state apply."""

    def __init__(self, config: TransformerPPConfig):
        super().__init__(config)
        self.net = TransformerWrapper(
            num_tokens=config.vocab_size,
            max_seq_len=config.max_seq_len,
            use_abs_pos_emb=False,
            attn_layers=Decoder(
                dim=config.dim, depth=config.depth, heads=config.heads, attn_dim_head=config.dim // config.heads,
                rotary_pos_emb=True, rotary_emb_dim=config.dim // config.heads,  # full-width RoPE as in LLaMA
                use_rmsnorm=True, ff_glu=True, ff_swish=True, ff_mult=config.ff_mult, ff_no_bias=True,
                attn_flash=True, attn_max_attend_past=config.attn_window,
                verbose=False,  # x-transformers logs advice (e.g. on rotary widths) to stderr; errors still raise
            ),
        )

    def forward_full(self, input_ids):
        logits = self.net(input_ids)
        return logits, logits.new_zeros(())

    # -- streaming with the key/value cache (see the class docstring) -----------------------------------------
    def forward_with_state(self, input_ids, state):
        if not self.config.kv_cache:
            return super().forward_with_state(input_ids, state)  # WindowStreaming: re-read the token tail
        window = self.config.max_seq_len
        step = max(1, window // 8)
        parts, start, total = [], 0, input_ids.shape[1]
        while start < total:
            # a piece whose tokens share their first key (window_start): the rest of the window, or of one step
            pos, rest = (0 if state is None else state["pos"]), total - start
            piece = rest if pos + rest <= window else (window - pos) if pos < window else min(rest, step - pos % step)
            logits, state = self._cached_call(input_ids[:, start:start + piece], state)
            parts.append(logits)
            start += piece
        logits = torch.cat(parts, dim=1)
        return logits, logits.new_zeros(()), state

    def _cached_call(self, ids, state):
        """One x-transformers call over new tokens `ids` continuing `state` (None: a new stream); the returned
        cache starts at the next token's window_start."""
        cache = None
        if state is not None:
            cache = LayerIntermediates(attn_intermediates=[Intermediates(cached_kv=kv)
                                                           for kv in zip(state["k"], state["v"])],
                                       cache_length=state["pos"])
        logits, inter = self.net(ids, return_intermediates=True, cache=cache, input_not_include_cache=True,
                                 cache_age=ids.shape[1])
        pos = (0 if state is None else state["pos"]) + ids.shape[1]
        k, v = zip(*(layer.cached_kv for layer in inter.attn_intermediates))  # keys of positions pos - S .. pos - 1
        drop = window_start(pos, self.config.max_seq_len) - (pos - k[0].shape[2])
        return logits, {"k": [t[:, :, drop:].detach() for t in k], "v": [t[:, :, drop:].detach() for t in v],
                        "pos": pos}


def build(preset: str = "tiny", vocab_size: int = 256, overrides: dict | None = None) -> TransformerPP:
    config = apply_overrides(flavor(FLAVORS, preset, "transformer-pp"), {"vocab_size": vocab_size, **(overrides or {})})
    return TransformerPP(config)
