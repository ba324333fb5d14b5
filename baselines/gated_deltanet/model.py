"""Gated DeltaNet LM (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta Rule",
arXiv:2412.06464): pre-norm residual blocks [RMSNorm -> Gated DeltaNet mixer, RMSNorm -> SwiGLU MLP], a final
RMSNorm and an untied LM head, as in the paper's Figure 1 and flash-linear-attention's GatedDeltaNetForCausalLM.

The mixer's state is a fixed [B, H, K, V] matrix per layer (plus the short conv's last inputs), so the model
streams exactly ("state") with memory that does not grow with the stream length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from baselines.gated_deltanet.layer import GatedDeltaNet
from harness.adapter import LMAdapter, apply_overrides, flavor
from harness.errors import HarnessError
from models.common import RMSNorm, SwiGLU


@dataclass(frozen=True)
class GatedDeltaNetConfig:
    vocab_size: int = 256  # set from the task
    dim: int = 128  # model width
    depth: int = 4  # [mixer + MLP] blocks
    num_heads: int = 2  # delta-rule heads
    head_dim: int = 64  # key/query dim per head (K); num_heads * head_dim = key width
    expand_v: int = 2  # value dim per head V = expand_v * head_dim (fla's default 2)
    conv_size: int = 4  # short causal conv width on q, k, v
    mlp_hidden: int = 0  # SwiGLU hidden width; 0 = 8/3 * dim rounded up to 32
    chunk_size: int = 64  # chunk length of the chunked delta rule (the result does not depend on it)
    norm_eps: float = 1e-6  # RMSNorm epsilon
    init_std: float = 0.02  # std of the normal init of embeddings and linear layers


# Sized to Transformer++'s parameter counts at vocab 256: with key width = dim and value width = 2 dim a block has
# ~8 d^2 (mixer) + ~8 d^2 (SwiGLU) parameters, like a Transformer++ block, so width and depth match Transformer++.
FLAVORS = {
    "tiny": GatedDeltaNetConfig(dim=128, depth=4, num_heads=2, head_dim=64),  # ~1.14M
    "small": GatedDeltaNetConfig(dim=512, depth=12, num_heads=4, head_dim=128),  # ~51.0M
    "medium": GatedDeltaNetConfig(dim=1024, depth=22, num_heads=4, head_dim=256),  # ~372M
    "large": GatedDeltaNetConfig(dim=1536, depth=20, num_heads=6, head_dim=256),  # ~757M
}


def _check(config: GatedDeltaNetConfig) -> None:
    for name in ("vocab_size", "dim", "depth", "num_heads", "head_dim", "expand_v", "conv_size", "chunk_size"):
        if getattr(config, name) < 1:
            raise HarnessError(f"gated-deltanet: {name} must be a positive integer, got {getattr(config, name)}")
    if config.mlp_hidden < 0:
        raise HarnessError(f"gated-deltanet: mlp_hidden must be >= 0 (0 = 8/3 * dim), got {config.mlp_hidden}")


class Block(nn.Module):
    def __init__(self, config: GatedDeltaNetConfig):
        super().__init__()
        self.mixer_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.mixer = GatedDeltaNet(config.dim, config.num_heads, config.head_dim, config.expand_v, config.conv_size,
                                   config.chunk_size, config.norm_eps)
        self.mlp_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.mlp = SwiGLU(config.dim, config.mlp_hidden or None)

    def forward(self, x, state):
        mixed, state = self.mixer(self.mixer_norm(x), state)
        x = x + mixed
        return x + self.mlp(self.mlp_norm(x)), state


class GatedDeltaNetLM(LMAdapter):
    streaming = "state"

    def __init__(self, config: GatedDeltaNetConfig):
        super().__init__(config)
        _check(config)
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm_f = RMSNorm(config.dim, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        for module in self.modules():  # A_log / dt_bias keep the mixer's own init
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=config.init_std)
        for block in self.blocks:  # GPT-2 / fla: residual-branch outputs scaled by 1/sqrt(2 * depth)
            for weight in (block.mixer.o_proj.weight, block.mlp.down.weight):
                weight.data.div_(math.sqrt(2 * config.depth))

    def forward_with_state(self, input_ids, state):
        """state: None, or a tuple with one (conv_state, recurrent_state [B, H, K, V]) per block. The returned
        state is detached: segments do not chain autograd graphs, and memory stays bounded."""
        if state is not None and len(state) != len(self.blocks):
            raise HarnessError(f"gated-deltanet: state has {len(state)} layers, the model has {len(self.blocks)}")
        x = self.embed(input_ids)
        new_state = []
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, None if state is None else state[i])
            new_state.append(tuple(s.detach() for s in layer_state))
        logits = self.lm_head(self.norm_f(x))
        return logits, logits.new_zeros(()), tuple(new_state)


def build(preset: str = "tiny", vocab_size: int = 256, overrides: dict | None = None) -> GatedDeltaNetLM:
    config = apply_overrides(flavor(FLAVORS, preset, "gated-deltanet"),
                             {"vocab_size": vocab_size, **(overrides or {})})
    return GatedDeltaNetLM(config)
