"""Baseline model names. Targets are imported only when a model is built."""

from harness.registry import MODELS

MODELS.register("transformer-pp", "baselines.transformer_pp:build", aliases=("transformer++", "tpp", "transformer"),
                summary="Transformer++ (RoPE, RMSNorm, SwiGLU) on x-transformers", family="attention")
MODELS.register("moe", "baselines.moe:build", aliases=("mixture-of-experts", "moe-baseline"),
                summary="5-dollar-llm MoE decoder: RoPE attention + top-2 of 8 SwiGLU experts, Switch balancing loss",
                family="attention")
MODELS.register("trm-titans-mag", "baselines.trm_titans_mag:build", aliases=("trm-mag", "trm-titans"),
                summary="Titans-MAG backbone (SWA + decaying memory, gated) feeding a TRM recursive loop with ACT",
                family="hybrid")
MODELS.register("mamba2", "baselines.mamba2:build", aliases=("mamba-2", "mamba_2"),
                summary="Mamba-2 (SSD) on transformers' Mamba2ForCausalLM; mamba-ssm kernels on CUDA when installed",
                family="ssm")
MODELS.register("gated-deltanet", "baselines.gated_deltanet.model:build", aliases=("gdn", "gated_deltanet"),
                summary="Gated DeltaNet (gated delta rule + SwiGLU); chunked PyTorch on CPU, fla kernels on CUDA",
                family="linear-attention")
MODELS.register("bag-of-tokens", "baselines.bag_of_tokens:build", aliases=("control", "bag"),
                summary="recall control: causal mean of token embeddings + position-wise MLPs (order-blind; "
                        "MQAR stays at 1/kv_pairs)", family="control")
MODELS.register_prefix("hf", "baselines.hf:build",
                       summary="any Hugging Face causal LM (AutoModelForCausalLM) with its own tokenizer: "
                               "hf:<repo-id-or-folder>[@revision]", family="pretrained")
