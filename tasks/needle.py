"""Needle in a haystack at length: RULER-style key-value needles in filler, trained short, scored long.

RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your Long-Context Language Models?", arXiv
2404.06654, section 3.1, multi-key NIAH): `needles` key-value needles are hidden at random depths in filler; at the
end the model is given one of the keys and must produce its value. Here in token form: a needle is
[NEEDLE, key, value...], the query [QUERY, key], scored by greedy decoding of the `value_len` value tokens (right
only when all are). The model trains on `train_length`-token sequences that query every needle in turn (loss on
the value tokens only) and is
scored at each of `lengths` (default 1k, 4k, 16k; `lengths=1k,4k,16k,64k,128k` for the full curve), feeding each
sample segment by segment through the model's streaming state (the BABILong scoring path,
tasks/babilong/streaming.py), so memory stays bounded at any length and the curve shows how far each memory
carries a fact. Attention models score within their window (a needle further back is out of sight, and the record
says so); models that cannot stream score only lengths that fit one call.

Filler (`filler=`): `random` tokens (default; nothing to read), or `pg19`: ASCII text of the Project Gutenberg books
in `--data-dir` (pg19/*.txt, or --data-dir pointing at the books), bytes above 127 mapped to '?' so that the
needle's tokens never occur in the filler.

Vocabulary (256, byte-compatible): filler [0, 128), keys [128, 190), values [190, 254), NEEDLE = 254, QUERY = 255.
Lengths are in model tokens, '1k' = 1024.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.errors import DataError, HarnessError
from harness.memory import PeakMemory
from tasks.babilong.scoring import binomial_accuracy, mean_of_accuracies
from tasks.babilong.streaming import (
    can_batch,
    greedy_continue,
    greedy_generate,
    none_if_nonfinite,
    stream_prompts,
)
from tasks.base import Metric, Task, int_option, reject_unknown_options

VOCAB, FILLER_TOP, KEY_LOW, VALUE_LOW, NEEDLE, QUERY = 256, 128, 128, 190, 254, 255
TEST_SALT = 0x7E57
OPTIONS = ("lengths", "train_length", "needles", "value_len", "filler", "samples", "seed", "eval_batch",
           "segment_len", "data_dir", "data_file")
# Training budget at preset tiny (flags override each field), the recall suite's (tasks/recall.py) at the
# needle's longer training rows.
CPU_BUDGET = dict(steps=600, batch_size=32, lr=1e-3, warmup_steps=30, eval_every=100, eval_batches=4,
                  checkpoint_every=200)


def parse_tokens(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", str(text))
    if not m:
        raise HarnessError(f"needle length {text!r} is not a token count like 512, 4k or 1M")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2}[m.group(2).lower()]


def _int(value, what, minimum):
    return int_option(value, what, minimum, "needle")


class NeedleTask(Task):
    name = "needle"
    primary_metric = "acc"
    vocab_size = VOCAB
    exact_seq_len = True

    def __init__(self, lengths="1k,4k,16k", train_length="128", needles=4, value_len=2, filler="random",
                 samples=20, seed=0, eval_batch=16, segment_len=None, data_dir=None, data_file=None, preset=None,
                 **unknown):
        reject_unknown_options(self.name, unknown, OPTIONS)
        names = [x.strip() for x in str(lengths).split(",") if x.strip()]
        if not names or len(set(names)) != len(names):
            raise HarnessError(f"needle lengths={lengths!r} must list distinct lengths like 1k,4k,16k")
        self.lengths = {name: parse_tokens(name) for name in names}
        self.train_length = parse_tokens(train_length)
        self.needles, self.value_len = _int(needles, "needles", 1), _int(value_len, "value_len", 1)
        self.samples, self.seed = _int(samples, "samples", 1), _int(seed, "seed", 0)
        self.eval_batch = _int(eval_batch, "eval_batch", 1)
        self.segment_len = _int(segment_len, "segment_len", 1) if segment_len is not None else None
        if self.needles > VALUE_LOW - KEY_LOW:
            raise HarnessError(f"needle option needles={needles} exceeds the {VALUE_LOW - KEY_LOW} distinct keys")
        self.span = 2 + self.value_len  # tokens of one needle
        shortest = min([self.train_length, *self.lengths.values()])
        if 2 * self.needles * self.span + 1 > shortest:
            raise HarnessError(f"{self.needles} needles of {self.span} tokens and the query do not fit in "
                               f"{shortest} tokens; raise the lengths or lower needles")
        if filler not in ("random", "pg19"):
            raise HarnessError(f"needle filler {filler!r} is not one of random, pg19")
        self.filler = filler
        self.text, self.text_source = None, None
        if filler == "pg19":
            self.text, self.text_source = _load_books(data_dir or data_file)
        self.preferred_seq_len = self.train_length
        self.last_eval: dict = {}

    def budget_defaults(self, preset: str) -> dict:
        return dict(CPU_BUDGET) if preset == "tiny" else {}

    # -- samples ------------------------------------------------------------------------------------------------
    def _filler(self, rng, n: int, length: int) -> np.ndarray:
        if self.text is None:
            return rng.integers(0, FILLER_TOP, size=(n, length))
        starts = rng.integers(0, len(self.text) - length, size=n)
        return np.stack([self.text[s:s + length] for s in starts]).astype(np.int64)

    def haystack(self, rng, n: int, length: int):
        """(haystacks [n, length], keys [n, needles], values [n, needles, value_len]): filler with the needles at
        random depths."""
        keys = np.argsort(rng.random((n, VALUE_LOW - KEY_LOW)), axis=1)[:, :self.needles] + KEY_LOW
        values = rng.integers(VALUE_LOW, NEEDLE, size=(n, self.needles, self.value_len))
        filler = self._filler(rng, n, length - self.needles * self.span)
        out = np.empty((n, length), dtype=np.int64)
        for r in range(n):
            # needle j goes before filler token cut[j] (sorted cuts keep the needles' order random in depth)
            cuts = np.sort(rng.integers(0, filler.shape[1] + 1, size=self.needles))
            parts, prev = [], 0
            for j, cut in enumerate(cuts):
                parts += [filler[r, prev:cut], [NEEDLE, keys[r, j]], values[r, j]]
                prev = cut
            parts.append(filler[r, prev:])
            out[r] = np.concatenate(parts)
        return out, keys, values

    def make(self, rng, n: int, prompt_len: int):
        """(prompts [n, prompt_len], answers [n, value_len]): a haystack, then the query of one of its needles."""
        hay, keys, values = self.haystack(rng, n, prompt_len - 2)
        asked = rng.integers(0, self.needles, size=n)
        rows = np.arange(n)
        prompts = np.concatenate([hay, np.full((n, 1), QUERY), keys[rows, asked][:, None]], axis=1)
        return prompts, values[rows, asked]

    def _rows(self, rng, batch_size: int, seq_len: int):
        """Training rows: a haystack, then every needle queried in random order, each query followed by its value
        (teacher-forced; loss on the value tokens): `needles` answers per row instead of one (RULER's multi-query
        form), the same query-then-value format the test's single query is scored in."""
        q = 2 + self.value_len  # tokens of one query and its answer
        hay, keys, values = self.haystack(rng, batch_size, seq_len + 1 - self.needles * q)
        order = np.argsort(rng.random((batch_size, self.needles)), axis=1)
        rows = np.arange(batch_size)[:, None]
        queries = np.concatenate([np.full((batch_size, self.needles, 1), QUERY), keys[rows, order][..., None],
                                  values[rows, order]], axis=2).reshape(batch_size, -1)
        seq = torch.from_numpy(np.concatenate([hay, queries], axis=1))
        labels = torch.full_like(seq, -100)
        answer = torch.zeros(self.needles * q, dtype=torch.bool).reshape(self.needles, q)
        answer[:, 2:] = True
        at = hay.shape[1] + answer.reshape(-1).nonzero().flatten()
        labels[:, at] = seq[:, at]
        return seq[:, :-1], labels[:, 1:]

    def train_batch(self, step, batch_size, seq_len, seed):
        return self._rows(np.random.default_rng([seed, step]), batch_size, seq_len)

    def val_batch(self, index, batch_size, seq_len):
        return self._rows(np.random.default_rng([0x5EED, index]), batch_size, seq_len)

    def test_samples(self, length_name: str, n: int):
        """The fixed test samples of a length (a function of the task's seed only; training draws its own
        random stream and never the test one)."""
        rng = np.random.default_rng([self.seed, TEST_SALT, self.lengths[length_name]])
        return self.make(rng, n, self.lengths[length_name])

    # -- scoring ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model, *, device, seq_len, batch_size, limit=None, progress=True):
        n = self.samples if limit is None else min(self.samples, _int(limit, "limit", 1))
        seg_len = self.segment_len or seq_len
        if model.streaming == "window" and model.max_context:
            seg_len = max(seg_len, model.max_context)
        batched = self.eval_batch > 1 and can_batch(model)
        dev = torch.device(device)
        self.last_eval = {"samples_per_length": n, "segment_len": seg_len, "batched": batched,
                          "model_streaming": model.streaming, "model_window": model.max_context, "notes": [],
                          "nonfinite_samples": {},  # per length: samples whose log-probs were NaN / inf (wrong)
                          # per length: the peak while that length was scored (flat in length = bounded state)
                          # and what the process held when it began (CPU: memory earlier work left allocated,
                          # e.g. an earlier job of a sweep, counts in both)
                          "peak_memory_mb": {}, "memory_at_start_mb": {},
                          "peak_memory_method": ("torch.cuda.max_memory_allocated" if dev.type == "cuda" else
                                                 "process RSS sampled every 5 ms (model and tokens included)")}
        model.eval()
        metrics, cells = {}, []
        bar = tqdm(total=n * len(self.lengths), desc="needle", unit="sample", disable=not progress)
        for name, tokens in self.lengths.items():
            if model.streaming == "none" and tokens + self.value_len > (model.max_context or 0):
                self.last_eval["notes"].append(f"{name}: not scored, longer than one call of a model that "
                                               f"cannot stream")
                bar.update(n)
                continue
            if model.streaming == "window" and model.max_context and tokens > model.max_context:
                self.last_eval["notes"].append(f"{name}: longer than the model's {model.max_context}-token window; "
                                               f"needles further back than the window are out of sight")
            prompts, answers = self.test_samples(name, n)
            with PeakMemory(dev) as peak:
                outs = self._answers(model, prompts, seg_len, device, batched, bar)
            self.last_eval["peak_memory_mb"][name] = round(peak.megabytes, 1)
            self.last_eval["memory_at_start_mb"][name] = round(peak.start_megabytes, 1)
            bad = sum(out is None for out in outs)
            if bad:
                self.last_eval["nonfinite_samples"][name] = bad
                self.last_eval["notes"].append(f"{name}: the model's log-probs were NaN or infinite on {bad} of {n} "
                                               f"samples (counted wrong)")
            outcomes = [out is not None and list(out) == answers[i].tolist() for i, out in enumerate(outs)]
            metrics[f"acc/{name}"] = Metric(*binomial_accuracy(outcomes), higher_is_better=True)
            cells.append(metrics[f"acc/{name}"])
        bar.close()
        if not cells:
            raise HarnessError("no needle length could be scored with this model (see the record's notes)")
        metrics["acc"] = Metric(*mean_of_accuracies([(c.value, c.stderr, c.n) for c in cells]), higher_is_better=True)
        return metrics

    def _answers(self, model, prompts, seg_len, device, batched, bar):
        """The model's greedy answers to the prompts, streamed (None where the log-probs were not finite)."""
        n = len(prompts)
        outs = [None] * n
        if batched:
            for lo in range(0, n, self.eval_batch):
                group = list(range(lo, min(n, lo + self.eval_batch)))
                for k, first, state in stream_prompts(model, [prompts[i] for i in group], seg_len, device):
                    outs[group[k]] = none_if_nonfinite(greedy_continue, model, first, state, device, self.value_len)
                    bar.update(1)
        else:
            for i in range(n):
                outs[i] = none_if_nonfinite(greedy_generate, model, prompts[i].tolist(), seg_len, device,
                                            self.value_len)
                bar.update(1)
        return outs

    def describe(self):
        return {"name": self.name, "source": "generated (RULER multi-key NIAH, arXiv 2404.06654), token form",
                "filler": self.filler if self.text is None else f"pg19 ASCII text ({self.text_source})",
                "lengths": self.lengths, "length_unit": "model tokens; 1k = 1024", "train_length": self.train_length,
                "needles": self.needles, "value_len": self.value_len, "samples_per_length": self.samples,
                "seed": self.seed, "chance": f"1/{(NEEDLE - VALUE_LOW) ** self.value_len} per answer",
                "accuracy_unit": "percent of samples whose value tokens were all decoded right; stderr binomial",
                "evaluation": dict(self.last_eval)}


def _load_books(where) -> tuple[np.ndarray, str]:
    """The books' ASCII bytes (non-ASCII bytes as '?'), concatenated in file-name order, and their sha256."""
    if not where:
        raise DataError("needle filler=pg19 needs the books: --data-dir DIR with DIR/pg19/*.txt (or DIR/*.txt)")
    folder = Path(where)
    files = sorted((folder / "pg19").glob("*.txt")) or sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"no .txt books in {folder} or {folder / 'pg19'}")
    data = np.frombuffer(b"\n".join(f.read_bytes() for f in files), dtype=np.uint8).copy()
    data[data >= FILLER_TOP] = ord("?")
    return data, f"{len(files)} books in {files[0].parent}, sha256 {hashlib.sha256(data.tobytes()).hexdigest()[:16]}"


def build(**options) -> NeedleTask:
    return NeedleTask(**options)
