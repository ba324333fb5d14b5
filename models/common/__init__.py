"""Building blocks written once and shared by every architecture: norms, MLPs, rotary embeddings, causal
convolutions, sliding-window attention and parallel linear scans. Each op with a fast path has a naive reference
next to it, and tests compare the two."""

from models.common.layers import RMSNorm, SwiGLU, CausalDepthwiseConv, RotaryEmbedding, apply_rotary
from models.common.attention import sliding_window_attention, sliding_window_attention_naive, SlidingWindowAttention
from models.common.scan import linear_scan, linear_scan_naive

__all__ = ["RMSNorm", "SwiGLU", "CausalDepthwiseConv", "RotaryEmbedding", "apply_rotary",
           "sliding_window_attention", "sliding_window_attention_naive", "SlidingWindowAttention",
           "linear_scan", "linear_scan_naive"]
