"""Baseline model names. Targets are imported only when a model is built."""

from harness.registry import MODELS

MODELS.register("transformer-pp", "baselines.transformer_pp:build", aliases=("transformer++", "tpp", "transformer"),
                summary="Transformer++ (RoPE, RMSNorm, SwiGLU) on x-transformers", family="attention")
