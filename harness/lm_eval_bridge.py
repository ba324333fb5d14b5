"""lm-eval bridge: any registered architecture (a fresh model at a preset, or a saved checkpoint) as an lm-eval model.

    python -m harness.lm_eval_bridge --model harness --data-dir ../shared/data \\
        --model_args name=titans-mac,preset=tiny,checkpoint=runs/x/final.pt --tasks wikitext2_local --batch_size 8
    # or from Python:  import harness.lm_eval_bridge as b
    #   lm_eval.simple_evaluate(model="harness", model_args=..., task_manager=b.task_manager(metadata={"data_dir": D}))

Offline tasks (harness/lm_eval_tasks, registered by `main` and `task_manager`): wikitext2_local and
wikitext103_local are lm-eval's `wikitext` task (its metrics, detokenizer and article-level rolling loglikelihood)
over the local WikiText files that `harness eval --task wikitext2/wikitext103` would use; `--data-dir DIR` (taken
out before lm-eval parses the rest), $HARNESS_DATA_DIR or `--metadata '{"data_dir": DIR}'` says where they are.

lm-eval's own CLI does not import this module, so `main(argv)` (and `python -m harness.lm_eval_bridge ...`)
registers the model under the name "harness" and then runs lm-eval's CLI with the same arguments.

model_args (all optional except name, which a checkpoint may supply):
  name          registered model name (harness ls models)          preset      model preset (default tiny)
  checkpoint    a file saved by the harness runner (torch.save)   tokenizer   'bytes' (default), a tokenizer.json
  vocab_size    model vocabulary (default: the tokenizer's)                   or a local HF tokenizer folder
  max_length    window / segment length in tokens (default: the checkpoint's training context, else preset's)
  dtype         float32 (default), float64, bfloat16             prefix_token  id conditioning a text's 1st token
  cfg.<field>   a model config override, e.g. cfg.dim=64          batch_size, device: lm-eval's own flags
Checkpoint keys read: "model" (state_dict), "model_name", "preset", "vocab_size", "overrides" (dict or None),
"tokenizer" ('bytes', a path or None; a tokenizer= other than it is refused), "tokenizer_sha256" and "seq_len"
(the training context), else run_config's seq_len. Checkpoints load with weights_only=True
(harness/checkpoint.py).

Scoring follows lm-eval's HF model (`HFLM`): texts are encoded without special tokens, an empty context becomes the
tokenizer's separator/eos token, trailing context spaces move to the continuation. Models with streaming "state"
read any context in full, in segments of max_length tokens with their state carried (`loglikelihood_rolling`
scores a whole document that way, not in disjoint windows); other models get HFLM's treatment: left-truncated
contexts and lm-eval's own rolling windows. `generate_until` is greedy.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from tqdm.auto import tqdm

from harness.checkpoint import load_checkpoint as load_checkpoint_data
from harness.data import sha256_file
from harness.errors import HarnessError
from tasks.doc_scoring import score_items
from tasks.tokenizer import load_tokenizer

TASKS_DIR = Path(__file__).with_name("lm_eval_tasks")  # offline lm-eval task YAMLs (wikitext2_local, ...)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
CHECKPOINT_KEYS = ("model", "model_name", "preset", "vocab_size", "overrides", "tokenizer")


def load_checkpoint(path: str) -> dict:
    """A runner checkpoint, loaded as data only (weights_only=True), with the keys the bridge reads."""
    ckpt = load_checkpoint_data(path)
    if "model" not in ckpt or "model_name" not in ckpt:
        raise HarnessError(f"{path} is not a harness checkpoint: expected a dict with keys {', '.join(CHECKPOINT_KEYS)}")
    return ckpt


def check_tokenizer(tok, ckpt: dict, checkpoint: str) -> None:
    """Refuse a tokenizer= other than the one the checkpoint was trained with: the same vocabulary size does
    not make the same token ids. A checkpoint that does not say (tokenizer None) leaves the size check."""
    saved = ckpt.get("tokenizer")
    if saved is None:
        return
    saved_bytes = str(saved).lower() in ("bytes", "byte")
    given = "bytes" if tok.kind == "bytes" else str(tok.path)
    if saved_bytes or tok.kind == "bytes":
        if saved_bytes != (tok.kind == "bytes"):
            raise HarnessError(f"tokenizer={given} but checkpoint {checkpoint} was trained with {saved}; "
                               "drop tokenizer= to use the checkpoint's")
        return
    saved_sha = ckpt.get("tokenizer_sha256") or (sha256_file(saved) if Path(saved).is_file() else None)
    given_sha = sha256_file(tok.path) if Path(tok.path).is_file() else None
    if saved_sha and given_sha:
        same = saved_sha == given_sha
    else:  # a file that is not at hand: only the same path can be the same tokenizer
        same = Path(saved).resolve() == Path(tok.path).resolve()
    if not same:
        sha = f", sha256 {saved_sha[:12]}" if saved_sha else ""
        raise HarnessError(f"tokenizer={given} is not the tokenizer checkpoint {checkpoint} was trained with "
                           f"({saved}{sha}); drop tokenizer= or pass a copy of that file")


def training_seq_len(ckpt: dict) -> int | None:
    """The context the checkpoint was trained with: its seq_len, else the --seq-len in its run_config."""
    value = ckpt.get("seq_len") or (ckpt.get("run_config") or {}).get("seq_len")
    return int(value) if value else None


def build_from_args(name: str | None, preset: str, checkpoint: str | None, ckpt: dict | None,
                    vocab_size: int | None, overrides: dict, tokenizer_vocab: int):
    """(model, preset) for the bridge's arguments; ckpt is the loaded checkpoint (None without one)."""
    from harness.adapter import build_model
    from harness.registry import MODELS

    if ckpt is None:
        if name is None:
            raise HarnessError("model_args needs name=MODEL (see `harness ls models`) or checkpoint=PATH")
        return build_model(name, preset, vocab_size or tokenizer_vocab, overrides), preset
    saved = MODELS.resolve(ckpt["model_name"]).name
    if name is not None and MODELS.resolve(name).name != saved:
        raise HarnessError(f"name={name} but checkpoint {checkpoint} holds a {saved} model")
    preset = ckpt.get("preset") or preset
    merged = {**(ckpt.get("overrides") or {}), **overrides}
    model = build_model(saved, preset, int(ckpt.get("vocab_size") or vocab_size or tokenizer_vocab), merged)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise HarnessError(f"checkpoint {checkpoint} does not fit {saved}/{preset}: {str(exc).splitlines()[0]}") from exc
    return model, preset


class HarnessLM(TemplateLM):
    """lm-eval LM over a harness LMAdapter."""

    def __init__(self, name: str | None = None, preset: str = "tiny", checkpoint: str | None = None,
                 tokenizer: str | None = None, vocab_size: int | None = None, max_length: int | None = None,
                 batch_size: int | str = 8, max_batch_size: int | None = None, device: str | None = None,
                 dtype: str | None = None, prefix_token: int | None = None, model=None, **extra: Any):
        super().__init__()
        overrides = {k[4:]: v for k, v in extra.items() if k.startswith("cfg.")}
        unknown = sorted(k for k in extra if not k.startswith("cfg."))
        if unknown:
            raise HarnessError(f"unknown model_args {', '.join(unknown)}; accepted: name, preset, checkpoint, "
                               f"tokenizer, vocab_size, max_length, dtype, prefix_token, cfg.<config field>")
        if dtype is not None and dtype not in DTYPES:
            raise HarnessError(f"dtype={dtype!r}; accepted: {', '.join(DTYPES)}")
        ckpt, given = None, model is not None
        if model is None:  # from model_args
            ckpt = load_checkpoint(checkpoint) if checkpoint is not None else None
            if ckpt is not None and tokenizer is None and ckpt.get("tokenizer") is None \
                    and int(ckpt.get("vocab_size") or 256) != 256:  # bytes would be a guess
                raise HarnessError(f"checkpoint {checkpoint} does not name its tokenizer; "
                                   "pass tokenizer=PATH")
            self.tok = load_tokenizer(tokenizer if tokenizer is not None else (ckpt or {}).get("tokenizer"),
                                      prefix_token)
            if ckpt is not None and tokenizer is not None:
                check_tokenizer(self.tok, ckpt, checkpoint)
            model, preset = build_from_args(name, preset, checkpoint, ckpt, vocab_size, overrides,
                                            self.tok.vocab_size)
        else:  # an LMAdapter instance handed over from Python
            self.tok = load_tokenizer(tokenizer, prefix_token)
        if self.tok.vocab_size > model.vocab_size:
            raise HarnessError(f"the tokenizer has {self.tok.vocab_size} tokens but the model's vocabulary is "
                               f"{model.vocab_size}; pass the tokenizer the model was trained with")
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's CLI defaults to --device cuda; like its HF model, run on the CPU when there is no GPU
            warnings.warn(f"device {device} requested but CUDA is not available; using the CPU", stacklevel=2)
            device = "cpu"
        self._device = torch.device(device or "cpu")
        if dtype is None and not given:  # a model handed over keeps its dtype unless one is asked for
            dtype = "float32"
        self.model = (model.to(self._device, DTYPES[dtype]) if dtype else model.to(self._device)).eval()
        self.stream = getattr(model, "streaming", "none") == "state"
        self._max_length = int(max_length or training_seq_len(ckpt or {}) or _preset_seq_len(preset))
        limit = getattr(model, "max_context", None)
        if not self.stream and limit is not None and self._max_length > limit:
            raise HarnessError(f"max_length {self._max_length} exceeds the model's context of {limit} tokens")
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.description = {"model": getattr(model, "registry_name", type(model).__name__), "preset": preset,
                            "checkpoint": checkpoint, "tokenizer": self.tok.describe(), "max_length": self._max_length,
                            "scoring": "state carried through whole texts" if self.stream else
                            "lm-eval rolling windows / left-truncated context"}

    # -- what TemplateLM needs --------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eot_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(self.tok.describe())

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tok.decode(tokens if isinstance(tokens, list) else [tokens])

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        items, empty = [], []
        for i, (_, context_enc, continuation_enc) in enumerate(requests):
            tokens = list(context_enc) + list(continuation_enc)
            n = len(continuation_enc)
            if n == 0:
                empty.append(i)
                continue
            if not self.stream:
                if n > self._max_length:
                    raise HarnessError(f"a continuation of {n} tokens is longer than max_length {self._max_length}")
                tokens = tokens[-(self._max_length + 1):]  # HFLM's left truncation
            items.append((i, (tokens, n)))
        scored = score_items(self.model, [it for _, it in items], stream=self.stream, seq_len=self._max_length,
                             batch_size=override_bs or self.batch_size, device=self._device,
                             progress=not disable_tqdm, desc="loglikelihood")
        out: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        for (i, _), res in zip(items, scored):
            out[i] = (res["logprob"], res["greedy"])
        for i, (pair, _, _) in enumerate(requests):
            if pair is not None:
                self.cache_hook.add_partial("loglikelihood", pair, out[i])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        items, owner = [], []
        for r, (string,) in enumerate(req.args for req in requests):
            tokens = self.tok_encode(string)
            if not tokens:
                continue
            if self.stream:  # the whole document, state carried
                windows = [([self.prefix_token_id, *tokens], len(tokens))]
            else:  # lm-eval's rolling windows, exactly as HFLM builds them
                windows = [(a + b, len(b)) for a, b in map(lm_utils.make_disjoint_window,
                           lm_utils.get_rolling_token_windows(token_list=tokens, prefix_token=self.prefix_token_id,
                                                              max_seq_len=self._max_length, context_len=1))]
            items += windows
            owner += [r] * len(windows)
        scored = score_items(self.model, items, stream=self.stream, seq_len=self._max_length,
                             batch_size=self.batch_size, device=self._device, progress=not disable_tqdm,
                             desc="loglikelihood_rolling")
        totals = [0.0] * len(requests)
        for r, res in zip(owner, scored):
            totals[r] += res["logprob"]
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for context, gen_kwargs in tqdm([req.args for req in requests], disable=disable_tqdm, desc="generate_until"):
            kwargs = dict(gen_kwargs or {})
            if kwargs.get("do_sample") and float(kwargs.get("temperature", 1.0) or 0) > 0:
                raise HarnessError("the harness bridge generates greedily only; drop do_sample / set temperature 0")
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            if self.tok.eot_is_special:
                until.append(self.tok.decode([self.tok.eot_id]))
            max_gen = int(kwargs.get("max_gen_toks", 256))
            text = self.greedy(self.tok_encode(context) or [self.prefix_token_id], max_gen, until)
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out

    def greedy(self, context: list[int], max_new: int, until: list[str]) -> str:
        """Greedy continuation of `context`, cut at the first stop string."""
        generated: list[int] = []
        state, logits = None, None
        if self.stream:
            ids = torch.tensor([context], device=self._device)
            for start in range(0, ids.shape[1], self._max_length):
                logits, _, state = self.model(ids[:, start:start + self._max_length], state=state)
        for _ in range(max_new):
            if not self.stream:  # recompute over the last max_length tokens (HFLM-like left truncation)
                window = (context + generated)[-self._max_length:]
                logits, _ = self.model(torch.tensor([window], device=self._device))
            nxt = int(logits[0, -1].float().argmax())
            generated.append(nxt)
            text = self.tok.decode(generated)
            hits = [text.index(s) for s in until if s and s in text]
            if hits:
                return text[:min(hits)]
            if self.stream:
                logits, _, state = self.model(torch.tensor([[nxt]], device=self._device), state=state)
        return self.tok.decode(generated)


def _preset_seq_len(preset: str) -> int:
    from harness.registry import PRESETS

    try:
        return PRESETS.load(preset).seq_len
    except HarnessError:
        return 2048


def register() -> None:
    """Register HarnessLM with lm-eval as "harness" (idempotent)."""
    from lm_eval.api.registry import model_registry, register_model

    current = model_registry._objs.get("harness") if hasattr(model_registry, "_objs") else None
    if current is HarnessLM:
        return
    register_model("harness")(HarnessLM)


def task_manager(include_path=None, **kwargs):
    """lm-eval's TaskManager with the offline tasks of harness/lm_eval_tasks (wikitext2_local, wikitext103_local)
    added: include_path=... paths come after them, so a user's task of the same name wins."""
    from lm_eval.tasks import TaskManager

    return _with_local_tasks(TaskManager)(include_path=include_path, **kwargs)


def _with_local_tasks(factory):
    def make(*args, include_path=None, **kwargs):
        paths = [] if include_path is None else \
            list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
        return factory(*args, include_path=[str(TASKS_DIR), *paths], **kwargs)
    return make


def split_data_dir(argv: list[str]) -> tuple[list[str], str | None]:
    """(argv without `--data-dir DIR` / `--data-dir=DIR`, DIR or None): the harness' own option, not lm-eval's."""
    rest, data_dir, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--data-dir", "--data_dir"):
            if i + 1 >= len(argv):
                raise HarnessError(f"{arg} needs a folder")
            data_dir, i = argv[i + 1], i + 2
            continue
        if arg.startswith(("--data-dir=", "--data_dir=")):
            data_dir = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    if data_dir is not None and not Path(data_dir).is_dir():
        raise HarnessError(f"--data-dir {data_dir} is not a folder")
    return rest, data_dir


def main(argv: list[str] | None = None) -> int:
    """Run lm-eval's CLI (`lm-eval run ...` arguments) with the "harness" model and the offline tasks of
    harness/lm_eval_tasks registered. `--data-dir DIR` (the harness' option, taken out before lm-eval parses the
    rest) is where those tasks find their files; it sets $HARNESS_DATA_DIR for the run."""
    import lm_eval.tasks
    from lm_eval.__main__ import cli_evaluate

    register()
    argv, data_dir = split_data_dir(list(sys.argv[1:] if argv is None else argv))
    saved, saved_env, saved_manager = sys.argv, os.environ.get("HARNESS_DATA_DIR"), lm_eval.tasks.TaskManager
    sys.argv = ["lm-eval", *argv]  # lm-eval's parser reads sys.argv
    if data_dir is not None:
        os.environ["HARNESS_DATA_DIR"] = str(Path(data_dir).resolve())
    lm_eval.tasks.TaskManager = _with_local_tasks(saved_manager)  # the CLI builds its TaskManager from here
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
        lm_eval.tasks.TaskManager = saved_manager
        if data_dir is not None:
            if saved_env is None:
                os.environ.pop("HARNESS_DATA_DIR", None)
            else:
                os.environ["HARNESS_DATA_DIR"] = saved_env
    return 0


if __name__ == "__main__":
    from harness.lm_eval_bridge import main as _main  # the importable module registers; this copy does not

    sys.exit(_main())
else:
    register()
