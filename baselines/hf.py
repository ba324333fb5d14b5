"""Any Hugging Face causal LM behind the harness' adapter: `--model hf:<repo-id-or-folder>[@revision]`.

Like lm-eval's `hf` model, the weights come from `AutoModelForCausalLM.from_pretrained`: a local folder (for
example one written by `save_pretrained`) is read without touching the network; a repo id is downloaded and cached
by huggingface_hub because the user named it (and read from that cache with HF_HUB_OFFLINE=1). The model keeps its
own tokenizer: the runner gives the task `tokenizer=hf:<same source>` (tasks/babilong/codecs.py), so `--steps 0`
scores the pretrained model and `--steps N` fine-tunes it with the task's protocol.

Streaming (harness/adapter.py):
- attention models ("window", max_context = the config's max_position_embeddings): the state is the model's
  key/value cache, one (keys, values) pair per layer, rebuilt into a transformers DynamicCache on each call, so a
  continuation costs only its new tokens; past the window the state falls back to the tail of the token stream,
  re-read on each call (WindowStreaming), and every token still sees at least half a window;
- Mamba-2 ("state"): the conv and SSM states through transformers' own cache (baselines/mamba2.py);
- other architectures without a position limit cannot stream ("none") and score only what fits one call.

The weights are float32 on the CPU (`--model-arg dtype=bfloat16` to change it); `trust_remote_code` is never
set, so no code from a model repository runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.adapter import LMAdapter, WindowStreaming, apply_overrides
from harness.errors import HarnessError
from harness.hf_source import hf_load_kwargs, split_hf_source

STATE_MODEL_TYPES = ("mamba2",)  # streamed through their recurrent cache (baselines/mamba2.py)


@dataclass(frozen=True)
class HFModelConfig:
    source: str  # repo id or local folder, as given after "hf:"
    revision: str | None = None  # hub revision ("@rev" in the name); None: the default branch or a local folder
    dtype: str = "float32"  # weights' dtype on load
    model_type: str = ""  # from the model's config (llama, mamba2, ...)
    vocab_size: int = 0  # the model's output size
    max_seq_len: int | None = None  # the config's max_position_embeddings (None: none)


class HFCausalLM(WindowStreaming, LMAdapter):
    def __init__(self, config: HFModelConfig, lm):
        super().__init__(config)
        self.lm = lm
        self.hf_config = lm.config
        if config.model_type in STATE_MODEL_TYPES:
            self.streaming = "state"
        elif config.max_seq_len:
            self.streaming = "window"
        else:
            self.streaming = "none"

    def forward_full(self, input_ids):
        logits = self.lm(input_ids, use_cache=False).logits
        return logits, logits.new_zeros(())

    def forward_with_state(self, input_ids, state):
        if self.streaming == "state":
            from baselines.mamba2 import stream_through_cache

            logits, new_state = stream_through_cache(self.lm, self.hf_config, input_ids, state, self.config.source)
            return logits, logits.new_zeros(()), new_state
        return self._window_step(input_ids, state)

    def _window_step(self, input_ids, state):
        """state: None or {"tokens": tail of the stream [B, <= window-1], "kv": per layer (keys, values)}; the
        "kv" entry goes once the stream outgrows the window."""
        from transformers import DynamicCache

        window = self.config.max_seq_len
        tokens = None if state is None else state["tokens"]
        seen = 0 if tokens is None else tokens.shape[1]
        if (state is None or "kv" in state) and seen + input_ids.shape[1] <= window:
            cache = DynamicCache()
            for layer, (keys, values) in enumerate(() if state is None else state["kv"]):
                cache.update(keys.clone(), values.clone(), layer)  # the cache grows these in place
            logits = self.lm(input_ids, cache=cache, use_cache=True).logits
            stream = input_ids if tokens is None else torch.cat([tokens, input_ids], dim=1)
            kv = tuple((layer.keys.detach(), layer.values.detach()) for layer in cache.layers)
            return logits, logits.new_zeros(()), {"tokens": stream[:, -(window - 1):], "kv": kv}
        logits, aux, tail = WindowStreaming.forward_with_state(self, input_ids, tokens)
        return logits, aux, {"tokens": tail}

    def describe(self) -> dict:
        return {"class": type(self).__name__, "streaming": self.streaming, "config": {
            "source": self.config.source, "revision": self.config.revision, "dtype": self.config.dtype,
            "model_type": self.config.model_type, "vocab_size": self.config.vocab_size,
            "max_seq_len": self.config.max_seq_len, "architectures": getattr(self.hf_config, "architectures", None),
            "commit": getattr(self.hf_config, "_commit_hash", None)}}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build(preset: str = "tiny", vocab_size: int = 256, overrides: dict | None = None, *, source: str) -> HFCausalLM:
    """The model at `source` (repo id or folder, optionally @revision). The preset does not size it (the weights
    do); `vocab_size` is the task's tokenizer size, which must fit the model's output layer."""
    from transformers import AutoModelForCausalLM

    path, revision = split_hf_source(source)
    settings = apply_overrides(HFModelConfig(source=path, revision=revision), dict(overrides or {}))
    if settings.dtype not in DTYPES:
        raise HarnessError(f"hf model dtype {settings.dtype!r} is not one of {', '.join(DTYPES)}")
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[settings.dtype], **hf_load_kwargs(path, revision))
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot load hf:{source} as a causal LM: {str(exc).strip().splitlines()[0]}") from exc
    config = lm.config
    out_size = lm.get_output_embeddings().weight.shape[0]
    if vocab_size > out_size:
        raise HarnessError(f"hf:{source} predicts {out_size} tokens but its tokenizer has {vocab_size}; "
                           f"the model and tokenizer do not belong together")
    window = getattr(config, "max_position_embeddings", None)
    settings = apply_overrides(settings, {"model_type": config.model_type, "vocab_size": out_size,
                                          "max_seq_len": window if config.model_type not in STATE_MODEL_TYPES else None})
    return HFCausalLM(settings, lm)
