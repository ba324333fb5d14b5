"""Mamba-2: a stack of SSD (state space duality) blocks, Dao & Gu 2024, "Transformers are SSMs: Generalized Models
and Efficient Algorithms Through Structured State Space Duality" (arXiv:2405.21060), built on transformers'
`Mamba2ForCausalLM`.

Each block is x + out_proj(norm(ssd(conv(in_proj(RMSNorm(x)))) * silu(z))). Per head h the selective SSM is the
time-varying recurrence h_t = A_t h_{t-1} + B_t x_t, y_t = C_t^T h_t (Section 2) with A_t restricted to a scalar
times the identity (Section 3, the SSD layer), discretised with a step dt_t:

    H_t = exp(dt_t * A_h) H_{t-1} + dt_t x_t B_t^T        (state H_t: [head_dim, state_size] per head)
    y_t = H_t C_t + D_h x_t

computed by the chunked SSD algorithm (Section 6 and its minimal "ssd_minimal" listing). Where transformers has no
kernel for the device (the CPU; CUDA without mamba-ssm), the scan is the harness's own `baselines/ssd.py`
(`scan="auto"`), swapped in for transformers' pure-PyTorch `mamba2_chunk_scan` only while this model runs: the same
result (tested against it and against a token-by-token recurrence) in a fraction of the memory, since
transformers' version keeps B and C repeated to every head and every intermediate for backward.
`scan="library"` keeps transformers' function. When mamba-ssm and causal-conv1d are installed, transformers picks
their CUDA/Triton kernels by itself.

Streaming: the state between segments is, per layer, the last `conv_kernel` inputs of the depthwise conv and the SSM
state [B, num_heads, head_dim, state_size]; both have a fixed size, so scoring a long stream segment by segment
needs memory bounded by the segment length. The continuation runs through transformers' own cache (the chunk scan
with `initial_states`, the conv over cached inputs + new inputs), checked in tests against one call.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM
from transformers.cache_utils import Cache, DynamicCache
from transformers.models.mamba2 import modeling_mamba2

from baselines.ssd import ssd_chunk_scan
from harness.adapter import _NO_STATE, LMAdapter, apply_overrides, flavor
from harness.errors import HarnessError


@dataclass(frozen=True)
class Mamba2LMConfig:
    vocab_size: int = 256  # set from the task
    dim: int = 128  # model width (d_model, transformers' hidden_size)
    depth: int = 9  # Mamba-2 blocks
    expand: int = 2  # inner width = expand * dim
    num_heads: int = 8  # SSD heads; num_heads * head_dim must equal expand * dim
    head_dim: int = 32  # channels per head (P in the paper)
    state_size: int = 64  # SSM state size per head (N in the paper)
    n_groups: int = 1  # B/C groups shared by heads (like GQA); must divide num_heads
    conv_kernel: int = 4  # width of the short causal depthwise conv before the SSM
    chunk_size: int = 256  # SSD chunk length: speed only, the result does not depend on it (tested)
    norm_eps: float = 1e-5  # RMSNorm epsilon
    init_std: float = 0.02  # std of the normal init of embeddings and in_proj (transformers' initializer_range)
    dt_min: float = 0.001  # the steps dt start log-uniform in [dt_min, dt_max] (mamba-ssm's defaults)
    dt_max: float = 0.1
    scan: str = "auto"  # SSD scan: auto (mamba-ssm's kernel where transformers has one, else ssd), ssd, library


# Sized to Transformer++'s parameter counts at vocab 256: same width, ~2.5x the blocks, since a Mamba-2 block has
# ~6 d^2 parameters (in_proj 5 d^2 + out_proj d^2 at expand 2) against ~16 d^2 per Transformer++ layer here.
FLAVORS = {
    # tiny trains on the CPU at seq 128: chunks of 64 waste less on padding there (~3.5x faster than 256)
    "tiny": Mamba2LMConfig(dim=128, depth=9, num_heads=8, head_dim=32, state_size=64, chunk_size=64),  # ~1.13M
    # small: chunks of 64 train 1.5x faster than 256 on the CPU at T=1024 (178 against 119 tokens/s, 2 cores) with
    # a little less memory (5.96 against 6.55 GB); 16 and 32 are slower and no smaller (transformers' PyTorch path)
    "small": Mamba2LMConfig(dim=512, depth=29, num_heads=16, head_dim=64, state_size=128, chunk_size=64),  # ~50.1M
    "medium": Mamba2LMConfig(dim=1024, depth=56, num_heads=32, head_dim=64, state_size=128),  # ~370M
    "large": Mamba2LMConfig(dim=1536, depth=52, num_heads=48, head_dim=64, state_size=128),  # ~762M
}


SCANS = ("auto", "ssd", "library")


@cache
def _mamba_ssm_installed() -> bool:  # looked up once, not on every forward
    return importlib.util.find_spec("mamba_ssm") is not None


def _check(config: Mamba2LMConfig) -> None:
    """One-line errors for settings transformers would reject with a long traceback (or silently misuse)."""
    for name in ("vocab_size", "dim", "depth", "expand", "num_heads", "head_dim", "state_size", "n_groups",
                 "conv_kernel", "chunk_size"):
        if getattr(config, name) < 1:
            raise HarnessError(f"mamba2: {name} must be a positive integer, got {getattr(config, name)}")
    if config.num_heads * config.head_dim != config.expand * config.dim:
        raise HarnessError(f"mamba2: num_heads * head_dim ({config.num_heads} * {config.head_dim} = "
                           f"{config.num_heads * config.head_dim}) must equal expand * dim ({config.expand} * "
                           f"{config.dim} = {config.expand * config.dim}); change num_heads or head_dim")
    if not 0 < config.dt_min <= config.dt_max:
        raise HarnessError(f"mamba2: need 0 < dt_min <= dt_max, got dt_min={config.dt_min}, dt_max={config.dt_max}")
    if config.scan not in SCANS:
        raise HarnessError(f"mamba2: unknown scan {config.scan!r}; accepted: {', '.join(SCANS)}")
    if config.num_heads % config.n_groups:
        raise HarnessError(f"mamba2: n_groups ({config.n_groups}) must divide num_heads ({config.num_heads})")


def _require_linear_attention_cache() -> None:
    # Streaming reads/seeds per-layer conv and SSM states through the Cache API of transformers 5.x. Older
    # releases had a Mamba2Cache that could not continue a multi-token segment; fail loudly instead of wrongly.
    if not all(hasattr(Cache, m) for m in ("get_conv_state", "get_recurrent_state", "update_conv_state",
                                           "update_recurrent_state")):
        import transformers
        raise HarnessError(f"mamba2 streaming needs the linear-attention Cache API of transformers 5.x; "
                           f"installed transformers {transformers.__version__} lacks it")


class Mamba2LM(LMAdapter):
    streaming = "state"

    def __init__(self, config: Mamba2LMConfig):
        super().__init__(config)
        _check(config)
        self.hf_config = Mamba2Config(
            vocab_size=config.vocab_size, hidden_size=config.dim, num_hidden_layers=config.depth,
            expand=config.expand, num_heads=config.num_heads, head_dim=config.head_dim,
            state_size=config.state_size, n_groups=config.n_groups, conv_kernel=config.conv_kernel,
            chunk_size=config.chunk_size, layer_norm_epsilon=config.norm_eps, initializer_range=config.init_std,
            time_step_min=config.dt_min, time_step_max=config.dt_max,
            tie_word_embeddings=False, use_cache=False,
            rescale_prenorm_residual=True,  # out_proj init scaled by 1/sqrt(depth), as mamba-ssm's LM does
        )
        self.lm = Mamba2ForCausalLM(self.hf_config)

    def forward(self, input_ids, state=_NO_STATE):
        # A plain call (training, whole-sequence scoring) passes no cache: with mamba-ssm installed and the model
        # in training mode, transformers then takes the fused conv+scan kernel. Streaming calls go through the
        # cache in forward_with_state; on the CPU both paths run the same chunked scan.
        if state is _NO_STATE:
            with self._scan(input_ids.device):
                logits = self.lm(input_ids, use_cache=False).logits
            return logits, logits.new_zeros(())
        return super().forward(input_ids, state)

    def forward_with_state(self, input_ids, state):
        """state: None, or a tuple with one (conv_state [B, conv_dim, conv_kernel], ssm_state [B, H, P, N]) per
        layer. Returns detached copies, so a state passed in is never modified and segments do not chain graphs."""
        with self._scan(input_ids.device):
            logits, new_state = stream_through_cache(self.lm, self.hf_config, input_ids, state, "mamba2")
        return logits, logits.new_zeros(()), new_state

    def describe(self) -> dict:
        return {**super().describe(), "scan": self.scan_in_use(next(self.parameters()).device)}

    def scan_in_use(self, device: torch.device) -> str:
        """"ssd" (baselines/ssd.py) or "library" (transformers' mamba2_chunk_scan: mamba-ssm's kernel where it
        has one for the device, else its PyTorch code) for a forward on `device`."""
        if self.config.scan == "auto":
            kernel = device.type == "cuda" and _mamba_ssm_installed()
            return "library" if kernel else "ssd"
        return self.config.scan

    @contextmanager
    def _scan(self, device):
        """transformers' Mamba-2 layers call the module-level `mamba2_chunk_scan`; for the duration of this
        model's forward it is the harness's SSD scan, when that is the scan in use (restored afterwards)."""
        if self.scan_in_use(device) != "ssd":
            yield
            return
        library = modeling_mamba2.mamba2_chunk_scan
        modeling_mamba2.mamba2_chunk_scan = ssd_chunk_scan
        try:
            yield
        finally:
            modeling_mamba2.mamba2_chunk_scan = library


def stream_through_cache(lm, hf_config, input_ids, state, who: str):
    """(logits, new state) of a transformers Mamba-2 model continuing from `state` (None, or per layer a
    (conv_state, ssm_state) pair) through the library's own cache; also used by `--model hf:` Mamba-2 models."""
    _require_linear_attention_cache()
    depth = hf_config.num_hidden_layers
    cache = DynamicCache(config=hf_config)
    if state is not None:
        if len(state) != depth:
            raise HarnessError(f"{who}: state has {len(state)} layers, the model has {depth}")
        for layer, (conv_state, ssm_state) in enumerate(state):
            # Both calls copy into cache-owned tensors (the cache updates in place during the forward).
            cache.update_conv_state(conv_state, layer, conv_kernel_size=hf_config.conv_kernel)
            cache.update_recurrent_state(ssm_state, layer)
    logits = lm(input_ids, cache=cache, use_cache=True).logits
    new_state = tuple((cache.get_conv_state(layer).detach(), cache.get_recurrent_state(layer).detach())
                      for layer in range(depth))
    return logits, new_state


def build(preset: str = "tiny", vocab_size: int = 256, overrides: dict | None = None) -> Mamba2LM:
    config = apply_overrides(flavor(FLAVORS, preset, "mamba2"), {"vocab_size": vocab_size, **(overrides or {})})
    return Mamba2LM(config)
