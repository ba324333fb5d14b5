"""The uniform model adapter every architecture implements.

    model = build_model("titans-mac", preset="tiny", vocab_size=256)
    logits, aux_loss = model(input_ids)                       # training / scoring a whole sequence
    logits, aux_loss, state = model(input_ids, state=None)    # streaming: start a stream
    logits, aux_loss, state = model(next_ids, state=state)    # ... and continue it

`state` is whatever the architecture carries between segments (memory weights and momentum, SSM state, a KV or
token window). Scoring a long sequence segment by segment must give the same logits as one call (tests check this
for every registered model) while peak memory stays bounded by the segment length.

How a model streams is declared by `streaming`:
  "state"  - a recurrent state of fixed size (memory models, SSMs, linear attention): exact and O(1) memory.
  "window" - the model sees at most `max_context` tokens (attention models): exact while the stream is shorter
             than max_context, and a sliding window after that; the record says so. The state is either the tail
             of the token stream, re-read on every call (`WindowStreaming`), or the attention key/value cache
             (transformer-pp and moe by default, `kv_cache`), where a call costs only its new tokens.
  "none"   - the model cannot stream; asking raises StreamingUnsupported.

Batches of streams: a state holds one stream per batch row. `model.select_state(state, rows)` keeps the given rows
(in that order) and `model.repeat_state(state, n)` repeats every row n times; evaluators use them to run many
streams in lockstep and to score several continuations of one stream in one call. The default (`state_rows`) maps
over nested dicts / lists / tuples whose tensors have the batch as dim 0; plain values (ints such as a stream
position, None) and 0-dim tensors are shared by all rows and kept as they are, so streams batched together must be
at the same position. A model whose state is anything else overrides the two methods, or sets `batched_state =
False` so evaluators keep to one stream per call.
"""

from __future__ import annotations

import re

from dataclasses import asdict, fields, is_dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from harness.errors import HarnessError, StreamingUnsupported

_NO_STATE = object()
_SHARED_TYPES = (int, float, bool, str, type(None))


def state_rows(state: Any, index: torch.Tensor) -> Any:
    """The state with batch rows `index` (a 1-d LongTensor; rows may repeat) of every tensor, as new tensors (the
    result never aliases the input, so a model may update either in place). Plain values are shared and kept."""
    if isinstance(state, torch.Tensor):
        if state.dim() == 0:
            return state
        return state.index_select(0, index.to(state.device))
    if isinstance(state, dict):
        return {k: state_rows(v, index) for k, v in state.items()}
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # a namedtuple
        return type(state)(*(state_rows(v, index) for v in state))
    if isinstance(state, (list, tuple)):
        return type(state)(state_rows(v, index) for v in state)
    if isinstance(state, _SHARED_TYPES):
        return state
    raise TypeError(f"cannot select batch rows of a {type(state).__name__} in a streaming state; the model needs "
                    f"its own select_state/repeat_state or batched_state = False")


class LMAdapter(nn.Module):
    """Base class of every registered architecture: an autoregressive LM over `vocab_size` tokens."""

    streaming: ClassVar[str] = "none"  # "state" | "window" | "none", see the module docstring
    batched_state: ClassVar[bool] = True  # select_state / repeat_state work on this model's state (module docstring)

    def __init__(self, config: Any):
        super().__init__()
        self.config = config  # the flavor dataclass the model was built from (recorded in results)

    # -- the one method subclasses implement ------------------------------------------------------------
    def forward_with_state(self, input_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """input_ids [B, T] -> (logits [B, T, V], aux_loss scalar, new_state). `state` is None at stream start."""
        raise NotImplementedError

    # -- the public interface -------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, state: Any = _NO_STATE):
        if state is _NO_STATE:
            logits, aux_loss, _ = self.forward_with_state(input_ids, None)
            return logits, aux_loss
        if self.streaming == "none":
            raise StreamingUnsupported(f"{type(self).__name__} cannot carry state across segments")
        return self.forward_with_state(input_ids, state)

    # -- batches of streams (see the module docstring) --------------------------------------------------
    def select_state(self, state: Any, rows) -> Any:
        """The streams of batch rows `rows` (a sequence of ints or a 1-d LongTensor), as a new state."""
        return state_rows(state, torch.as_tensor(rows, dtype=torch.long).reshape(-1))

    def repeat_state(self, state: Any, n: int) -> Any:
        """Every stream repeated n times along the batch (row b becomes rows b*n .. b*n+n-1), as a new state."""
        batch = state_batch_size(state)
        return state_rows(state, torch.arange(batch).repeat_interleave(n))

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_context(self) -> int | None:
        """Longest context the model attends over in one call (None: unbounded, a recurrent model)."""
        return getattr(self.config, "max_seq_len", None)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        seen, total = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen:  # tied weights count once
                continue
            seen.add(id(p))
            if exclude_embeddings and isinstance(self.get_submodule(name.rsplit(".", 1)[0]), nn.Embedding):
                continue
            total += p.numel()
        return total

    def describe(self) -> dict:
        return {"class": type(self).__name__, "streaming": self.streaming,
                "config": asdict(self.config) if is_dataclass(self.config) else repr(self.config)}


def state_batch_size(state: Any) -> int:
    """The batch size of a state (dim 0 of its tensors); an error if its tensors disagree or it has none."""
    sizes: set[int] = set()

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            if obj.dim():
                sizes.add(obj.shape[0])
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(state)
    if len(sizes) != 1:
        raise TypeError(f"a streaming state's tensors should share one batch size (dim 0); found {sorted(sizes)}")
    return sizes.pop()


class WindowStreaming:
    """Mixin giving attention models the "window" streaming form: the state is the tail of the token stream
    (at most max_context - 1 tokens); each call re-reads it and returns logits for the new tokens only. This is
    exact while the stream fits in max_context, and bounded in memory always. A model may override
    forward_with_state with a key/value cache (baselines/transformer_pp.py); a call without state that fits in
    max_context is always one plain `forward_full` (training)."""

    streaming: ClassVar[str] = "window"

    def forward(self, input_ids, state=_NO_STATE):
        if state is _NO_STATE and (self.max_context is None or input_ids.shape[1] <= self.max_context):
            return self.forward_full(input_ids)
        return super().forward(input_ids, state)

    def forward_with_state(self, input_ids, state):
        context = input_ids if state is None else torch.cat([state, input_ids], dim=1)
        window = self.max_context
        n_new, total = input_ids.shape[1], context.shape[1]
        if window is None or total <= window:
            logits, aux = self.forward_full(context)
            logits = logits[:, -n_new:]
        else:
            # Score the new tokens in strides of window/2 so each one sees at least window/2 tokens of context.
            stride, pos, parts, auxes = max(1, window // 2), total - n_new, [], []
            while pos < total:
                end = min(pos + stride, total)
                piece_logits, piece_aux = self.forward_full(context[:, max(0, end - window):end])
                parts.append(piece_logits[:, -(end - pos):])
                auxes.append(piece_aux)
                pos = end
            logits, aux = torch.cat(parts, dim=1), torch.stack(auxes).mean()
        keep = (window - 1) if window is not None else context.shape[1]
        return logits, aux, context[:, -keep:].detach()

    def forward_full(self, input_ids):  # implemented by the model: a plain causal forward
        raise NotImplementedError


def apply_overrides(config: Any, overrides: dict | None) -> Any:
    """Replace fields of a flavor dataclass; unknown field names are a one-line error listing the valid ones."""
    if not overrides:
        return config
    valid = {f.name: f for f in fields(config)}
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise HarnessError(f"unknown model setting(s) {', '.join(unknown)} for {type(config).__name__}; "
                           f"valid: {', '.join(sorted(valid))}")
    converted = {}
    for key, value in overrides.items():
        current = getattr(config, key)
        kind = type(current) if current is not None else _optional_type(valid[key].type)
        if isinstance(value, str) and kind is not None and kind is not str:
            optional = current is None or "None" in str(valid[key].type)  # e.g. `float | None`
            if optional and value.lower() in ("none", "null"):
                value = None
            else:
                try:
                    value = kind(value) if kind is not bool else value.lower() in ("1", "true", "yes")
                except ValueError as exc:
                    raise HarnessError(f"model setting {key}={value!r} is not a valid {kind.__name__}") from exc
        converted[key] = value
    return replace(config, **converted)


def _optional_type(annotation) -> type | None:
    """int for a field annotated `int | None` (as a string under `from __future__ import annotations`), etc."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if re.search(rf"\b{name}\b", text):
            return kind
    return None


def flavor(flavors: dict[str, Any], preset: str, model_name: str) -> Any:
    """The model's config for a preset name, or a one-line error listing the presets this model has."""
    if preset not in flavors:
        raise HarnessError(f"model {model_name!r} has no preset {preset!r}; it has: {', '.join(flavors)}")
    return flavors[preset]


def build_model(name: str, preset: str = "tiny", vocab_size: int = 256, overrides: dict | None = None) -> LMAdapter:
    """Build a registered architecture at a preset for a vocabulary size, with optional config overrides."""
    from harness.registry import MODELS

    entry = MODELS.resolve(name)
    builder = MODELS.load(entry.name)
    try:
        model = builder(preset=preset, vocab_size=vocab_size, overrides=overrides or {})
    except HarnessError:
        raise
    except (ValueError, TypeError, RuntimeError, ArithmeticError, AssertionError) as exc:
        # a value the architecture cannot be built with: name the overrides, in one line
        if not overrides:
            raise
        args = " ".join(f"{k}={v}" for k, v in overrides.items())
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HarnessError(f"model {entry.name} cannot be built with --model-arg {args}: {reason}") from exc
    model.registry_name = entry.name
    model.preset = preset
    return model
