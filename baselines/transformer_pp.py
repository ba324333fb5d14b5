"""Transformer++: the modern decoder-only Transformer baseline of the Titans and MIRAS papers (RoPE, RMSNorm,
SwiGLU, no biases), built on x-transformers as `../shared/seeds/003` prescribes.

Full causal attention over `max_seq_len` tokens; it streams in the "window" form (re-reading at most
`max_seq_len` previous tokens), exact while a stream fits in the window.
"""

from __future__ import annotations

from dataclasses import dataclass

from x_transformers import Decoder, TransformerWrapper

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


FLAVORS = {
    "tiny": TransformerPPConfig(dim=128, depth=4, heads=4),  # ~1.1M at vocab 256
    "small": TransformerPPConfig(dim=512, depth=12, heads=8),  # ~50M
    "medium": TransformerPPConfig(dim=1024, depth=22, heads=16),  # ~370M
    "large": TransformerPPConfig(dim=1536, depth=20, heads=16),  # ~760M
}


class TransformerPP(WindowStreaming, LMAdapter):
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
            ),
        )

    def forward_full(self, input_ids):
        logits = self.net(input_ids)
        return logits, logits.new_zeros(())


def build(preset: str = "tiny", vocab_size: int = 256, overrides: dict | None = None) -> TransformerPP:
    config = apply_overrides(flavor(FLAVORS, preset, "transformer-pp"), {"vocab_size": vocab_size, **(overrides or {})})
    return TransformerPP(config)
