"""BABILong (Kuratov et al., 2024, "BABILong: Testing the Limits of LLMs with Long Context Reasoning-in-a-Haystack"):
bAbI qa1..qa5 facts hidden in long background text, accuracy by task and context length.

Protocol: fine-tune on training samples at `train_length` (loss only on the answer tokens), then score every
(task, length) cell on `samples` evaluation samples. Small models trained from scratch are scored in the
constrained form: the answer is the label (the benchmark's label set of the task) whose continuation " <label>."
is most likely after the prompt; `scoring=generate` instead decodes greedily and applies the benchmark's rule.
Long samples are fed segment by segment with the model's streaming state (streaming.py), so a 128k-token sample
scores in bounded memory on recurrent models; attention models ("window") score within their window, and the
record says which lengths exceeded it; models that cannot stream score only samples that fit one call.

Recurrent models (streaming "state") are scored `eval_batch` samples at a time (default 16): the samples of one
(task, length) cell, sorted by prompt length, are streamed in lockstep and leave the batch as their prompts end,
and each sample's candidates are scored in one call (streaming.py). Exact-streaming models give the same scores
as one sample at a time up to float rounding; `eval_batch=1` keeps the one-sample path. Attention models
("window"), models that cannot stream and models whose state cannot be batched are scored one sample at a time;
the record's `evaluation.batched` says which path ran.

Models see bytes (vocab 256) by default (`tokenizer=gpt2` switches to GPT-2 tokens when the files are at hand);
sample lengths are always GPT-2 token counts, as in the benchmark.

Defaults (`harness eval --task babilong --preset tiny` stays a few CPU minutes): tasks qa1..qa5, lengths
0k,1k,2k,4k, 20 samples per cell, train_length 0k. Ask for more with e.g.
`--task-arg lengths=0k,1k,4k,16k,128k --task-arg samples=100`. The runner's `limit` can only lower the samples per
cell (a preset's token limit for LM tasks must not turn into 131072 samples).
"""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.errors import DataError, HarnessError
from tasks.base import Metric, Task, int_option
from tasks.babilong.common import (ANSWER_TEMPLATE, PROMPT_TEMPLATE, TASK_LABELS, TASKS,
                                   context_budget, parse_length, parse_list)
from tasks.babilong.scoring import binomial_accuracy, compare_answers, mean_of_accuracies
from tasks.babilong.sources import SOURCES, find_builder_files, open_source
from tasks.babilong.streaming import (argmax_first, can_batch, greedy_continue, greedy_generate, score_candidates,
                                      score_choices_full, score_choices_streaming, stream_prompts)

DEFAULT_LENGTHS = "0k,1k,2k,4k"
DEFAULT_EVAL_BATCH = 16  # samples streamed together by recurrent models (1: one sample at a time)
TRAIN_FIT_TRIES = 16  # training draws tried to find a sample that fits the training context
OPTIONS = ("source", "tasks", "lengths", "train_length", "samples", "seed", "scoring", "tokenizer",
           "max_new_tokens", "segment_len", "eval_batch", "babi_dir", "books_dir", "tokenizer_dir", "data_dir",
           "data_file")


class ByteCodec:
    name, vocab_size, pad_id = "bytes (UTF-8, vocab 256)", 256, ord("\n")

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class GPT2Codec:
    def __init__(self, folder: Path):
        from tasks.babilong.builder import GPT2Counter

        self.counter = GPT2Counter(folder)
        self.name, self.vocab_size, self.pad_id = f"gpt2 ({folder})", 50257, 50256

    def encode(self, text):
        return self.counter.encode(text)

    def decode(self, ids):
        return self.counter.decode(ids)


def _as_int(value, what: str, minimum: int) -> int:
    return int_option(value, what, minimum, "BABILong")


class BabilongTask(Task):
    name = "babilong"
    primary_metric = "acc/mean"

    def __init__(self, source: str = "auto", tasks: str = ",".join(TASKS), lengths: str = DEFAULT_LENGTHS,
                 train_length: str = "0k", samples=20, seed=0, scoring: str = "choice", tokenizer: str = "bytes",
                 max_new_tokens=None, segment_len=None, eval_batch=DEFAULT_EVAL_BATCH, data_dir=None, babi_dir=None,
                 books_dir=None, tokenizer_dir=None, data_file=None, preset=None, **unknown):
        if unknown:
            raise HarnessError(f"unknown BABILong option(s) {', '.join(sorted(unknown))}; valid: {', '.join(OPTIONS)}")
        self.tasks = parse_list(tasks, TASKS, "tasks")
        self.lengths = [parse_length(x) for x in parse_list(lengths, None, "lengths")]
        tokens = [t for _, t in self.lengths]
        if len(set(tokens)) < len(tokens):  # one cell scored twice would overwrite itself
            raise HarnessError(f"BABILong lengths {lengths!r} name one length twice; give each length once")
        self.train_length = parse_length(train_length)
        self.samples = _as_int(samples, "samples", 1)
        self.seed = _as_int(seed, "seed", 0)
        if scoring not in ("choice", "generate"):
            raise HarnessError(f"BABILong scoring {scoring!r} is not one of choice, generate")
        self.scoring = scoring
        if source not in SOURCES:
            raise HarnessError(f"BABILong source {source!r} is not one of {', '.join(SOURCES)}")
        self.requested_source = source
        self.source, self.source_note = open_source(source, self.seed, data_dir, babi_dir, books_dir, tokenizer_dir)
        print(f"[babilong] samples from source {self.source.name}: {self.source_note}", file=sys.stderr)
        if tokenizer == "bytes":
            self.codec = ByteCodec()
        elif tokenizer == "gpt2":
            files = find_builder_files(data_dir, babi_dir, books_dir, tokenizer_dir)
            folder = Path(tokenizer_dir) if tokenizer_dir else (files[2] if files else None)
            if folder is None:
                raise DataError("tokenizer=gpt2 needs the GPT-2 files (encoder.json + vocab.bpe): give "
                                "--data-dir with tokenizers/gpt2 or --task-arg tokenizer_dir=DIR")
            self.codec = GPT2Codec(folder)
        else:
            raise HarnessError(f"BABILong tokenizer {tokenizer!r} is not one of bytes, gpt2")
        self.vocab_size = self.codec.vocab_size
        # Fine-tuning rows (prompt frame + story + answer) need ~256 bytes at 0k; the runner widens a shorter
        # preset context to this and says so in the record.
        self.preferred_seq_len = 256 if tokenizer == "bytes" else 128
        self.max_new_tokens = _as_int(max_new_tokens, "max_new_tokens", 1) if max_new_tokens is not None else (
            20 if tokenizer == "gpt2" else 40)  # the benchmark generates 20 GPT-2 tokens; ~40 bytes say as much
        self.segment_len = _as_int(segment_len, "segment_len", 1) if segment_len is not None else None
        self.eval_batch = _as_int(eval_batch, "eval_batch", 1)
        self.labels = {t: TASK_LABELS[t] for t in self.tasks}
        self._candidates = {t: [self.codec.encode(ANSWER_TEMPLATE.format(answer=l)) for l in self.labels[t]]
                            for t in self.tasks}
        # rows made, rows whose sample was cut at the left (no draw fitted), rows that needed a redraw, and the
        # story-length cap used for the training context
        self.train_stats = {"rows": 0, "truncated": 0, "redrawn": 0, "story_line_cap": None}
        self.table: dict[str, dict[str, float]] | None = None
        self.last_eval: dict = {}
        self.eval_notes: list[str] = []

    # -- samples ----------------------------------------------------------------------------------------------
    def eval_samples(self, task: str, length: str, length_tokens: int, n: int):
        return self.source.eval_samples(task, length, length_tokens, n)

    def train_story_cap(self, seq_len: int) -> int | None:
        """Longest story (lines) worth drawing for a training context of seq_len tokens: a bAbI line is ~30
        bytes (~8 GPT-2 tokens) and the prompt frame ~50 bytes; longer stories would only be cut."""
        per_line, frame = (30, 50) if isinstance(self.codec, ByteCodec) else (8, 15)
        return max(3, (seq_len - frame) // per_line)

    def _train_sample(self, task, index, seed, max_lines=None):
        length, tokens = self.train_length
        return self.source.train_sample(task, length, tokens, seed, index, max_lines)

    def encode_example(self, sample) -> tuple[list[int], int]:
        """(prompt + answer tokens, number of answer tokens)."""
        prompt = self.codec.encode(PROMPT_TEMPLATE.format(context=sample.context, question=sample.question))
        answer = self.codec.encode(ANSWER_TEMPLATE.format(answer=sample.target))
        return prompt + answer, len(answer)

    def _rows(self, step: int, batch_size: int, seq_len: int, seed: int):
        inputs = torch.full((batch_size, seq_len), self.codec.pad_id, dtype=torch.long)
        targets = torch.full((batch_size, seq_len), -100, dtype=torch.long)
        cap = self.train_story_cap(seq_len)
        self.train_stats["story_line_cap"] = cap
        for b in range(batch_size):
            index = step * batch_size + b
            task = self.tasks[index % len(self.tasks)]
            for attempt in range(TRAIN_FIT_TRIES):
                ids, n_answer = self.encode_example(
                    self._train_sample(task, index * TRAIN_FIT_TRIES + attempt, seed, cap))
                if len(ids) <= seq_len + 1:
                    break
            self.train_stats["rows"] += 1
            self.train_stats["redrawn"] += attempt > 0
            if len(ids) > seq_len + 1:  # no draw fits: keep the end (question + answer), lose the start
                ids = ids[-(seq_len + 1):]
                self.train_stats["truncated"] += 1
            row = torch.tensor(ids, dtype=torch.long)
            offset = seq_len + 1 - len(ids)  # left padding
            inputs[b, offset:] = row[:-1]
            answer_start = len(ids) - n_answer  # position in ids of the first answer token
            for k in range(answer_start, len(ids)):
                targets[b, offset + k - 1] = row[k]
        return inputs, targets

    def train_batch(self, step, batch_size, seq_len, seed):
        return self._rows(step, batch_size, seq_len, seed)

    def val_batch(self, index, batch_size, seq_len):
        return self._rows(index, batch_size, seq_len, 0x5EED)

    # -- scoring ----------------------------------------------------------------------------------------------
    def _judge_choice(self, sample, scores) -> bool:
        return self.labels[sample.task][argmax_first(scores)].lower() == sample.target.lower()

    def _judge_generation(self, sample, out) -> bool:
        return compare_answers(sample.target, self.codec.decode(out), sample.question, self.labels[sample.task])

    def _stop_ids(self) -> set[int]:
        return set(self.codec.encode("\n"))

    def _predict(self, model, sample, device, seg_len, prompt=None) -> bool | None:
        """One sample scored alone (None: skipped, too long for a model that cannot stream)."""
        prompt = self.codec.encode(sample.prompt()) if prompt is None else prompt
        fits_one_call = len(prompt) + max(map(len, self._candidates[sample.task])) <= (model.max_context or 10**12)
        if model.streaming == "none":
            if not fits_one_call:
                return None
            if self.scoring == "generate":
                raise HarnessError("scoring=generate needs a model that streams; this one has streaming='none'")
            scores = score_choices_full(model, prompt, self._candidates[sample.task], device)
        elif self.scoring == "choice":
            scores, _ = score_choices_streaming(model, prompt, self._candidates[sample.task], seg_len, device)
        else:
            out = greedy_generate(model, prompt, seg_len, device, self.max_new_tokens, stop_ids=self._stop_ids())
            return self._judge_generation(sample, out)
        return self._judge_choice(sample, scores)

    def _predict_batched(self, model, samples, prompts, device, seg_len, done=None) -> list[bool]:
        """The samples of one cell scored `eval_batch` at a time (streaming.stream_prompts): sorted by prompt
        length and cut into groups of even size, so each group streams prompts of similar length. Returns the
        outcomes in the samples' order."""
        outcomes: list[bool | None] = [None] * len(samples)
        order = sorted(range(len(samples)), key=lambda i: len(prompts[i]))
        n_groups = -(-len(order) // self.eval_batch)  # groups of even size: 20 samples at eval_batch 16 are 10 + 10
        bounds = [len(order) * g // n_groups for g in range(n_groups + 1)]
        for lo, hi in itertools.pairwise(bounds):
            group = order[lo:hi]
            for k, first, state in stream_prompts(model, [prompts[i] for i in group], seg_len, device):
                i = group[k]
                sample = samples[i]
                if self.scoring == "choice":
                    scores = score_candidates(model, first, state, self._candidates[sample.task], device)
                    outcomes[i] = self._judge_choice(sample, scores)
                else:
                    out = greedy_continue(model, first, state, device, self.max_new_tokens, self._stop_ids())
                    outcomes[i] = self._judge_generation(sample, out)
                if done is not None:
                    done()
        return outcomes

    def segment_length(self, model, seq_len: int) -> int:
        """Tokens fed per call: the training context by default (`segment_len` overrides); attention models,
        which re-read their window on every call anyway, are fed a whole window at a time."""
        seg = self.segment_len or seq_len
        if model.streaming == "window" and model.max_context:
            seg = max(seg, model.max_context)
        return seg

    @torch.no_grad()
    def evaluate(self, model, *, device, seq_len, batch_size, limit=None, progress=True):
        # `limit` caps the samples per (task, length) cell; the `samples` option sets them
        n = self.samples if limit is None else min(self.samples, _as_int(limit, "limit", 1))
        seg_len = self.segment_length(model, seq_len)
        batched = self.eval_batch > 1 and can_batch(model)
        self.last_eval = {"samples_per_cell": n, "segment_len": seg_len, "model_streaming": model.streaming,
                          "model_window": model.max_context, "batched": batched, "eval_batch": self.eval_batch}
        if not batched:
            self.last_eval["batched_why_not"] = (
                "eval_batch=1" if self.eval_batch == 1 else
                f"streaming={model.streaming!r} scores one sample at a time" if model.streaming != "state" else
                "the model's state cannot be batched (batched_state=False)")
        model.eval()
        metrics: dict[str, Metric] = {}
        cells: dict[tuple[str, str], tuple[float, float | None, int]] = {}
        self.eval_notes = []
        self.last_eval["samples_scored"] = scored = {}  # per cell "task/length": samples actually scored
        window = model.max_context if model.streaming == "window" else None
        bar = tqdm(total=len(self.tasks) * len(self.lengths) * n, desc="babilong", unit="sample", disable=not progress)
        for length, tokens in self.lengths:
            exceeded = skipped = 0
            for task in self.tasks:
                samples = self.eval_samples(task, length, tokens, n)
                if len(samples) < n:  # a fixed pool smaller than asked: say so, the record holds the count
                    note = f"{task}/{length}: {len(samples)} samples scored, {n} asked (the pool is smaller)"
                    self.eval_notes.append(note)
                    print(f"warning: BABILong {note}", file=sys.stderr)
                prompts = [self.codec.encode(sample.prompt()) for sample in samples]
                if batched:
                    results = self._predict_batched(model, samples, prompts, device, seg_len, lambda: bar.update(1))
                else:
                    results = []
                    for sample, prompt in zip(samples, prompts):
                        results.append(self._predict(model, sample, device, seg_len, prompt))
                        bar.update(1)
                outcomes = []
                for prompt, correct in zip(prompts, results):
                    if correct is None:
                        skipped += 1
                        continue
                    outcomes.append(bool(correct))
                    if window is not None and len(prompt) > window:
                        exceeded += 1
                scored[f"{task}/{length}"] = len(outcomes)
                if outcomes:
                    cells[task, length] = binomial_accuracy(outcomes)
                    metrics[f"acc/{task}/{length}"] = Metric(*cells[task, length], higher_is_better=True)
            if exceeded:
                self.eval_notes.append(f"{length}: {exceeded} samples longer than the model's {window}-token "
                                       f"window were scored with a sliding window (earlier facts unseen)")
            if skipped:
                self.eval_notes.append(f"{length}: {skipped} samples skipped, longer than one call of a model "
                                       f"that cannot stream")
            row = [cells[t, length] for t in self.tasks if (t, length) in cells]
            if len(row) == len(self.tasks):
                metrics[f"acc/mean/{length}"] = Metric(*mean_of_accuracies(row), higher_is_better=True)
        bar.close()
        if not cells:
            raise HarnessError("no BABILong sample could be scored with this model (see the notes in the record)")
        metrics["acc/mean"] = Metric(*mean_of_accuracies(list(cells.values())), higher_is_better=True)
        self.table = table_from_metrics(metrics)
        return metrics

    # -- record and plots -------------------------------------------------------------------------------------
    def describe(self):
        info = {
            "name": self.name,
            "source": self.source.name,
            "source_choice": self.source_note,
            **{f"source_{k}": v for k, v in self.source.describe().items() if k != "source"},
            "tasks": self.tasks,
            "lengths": {name: {"tokens": tokens, "context_tokens": context_budget(tokens)}
                        for name, tokens in self.lengths},
            "length_unit": "GPT-2 tokens; '1k' = 1000 (the benchmark's names); 300 tokens left for the prompt",
            "samples_per_cell": self.samples,
            "eval_batch": self.eval_batch,
            "seed": self.seed,
            "train_length": self.train_length[0],
            "train_rows": dict(self.train_stats),
            "model_tokens": self.codec.name,
            "scoring": ("choice: most likely label continuation " + repr(ANSWER_TEMPLATE) if self.scoring == "choice"
                        else f"generate: greedy {self.max_new_tokens} tokens, judged by the benchmark's rule"),
            "labels": {t: list(v) for t, v in self.labels.items()},
            "prompt_template": PROMPT_TEMPLATE,
            "accuracy_unit": "percent; stderr binomial; acc/mean/<len> = unweighted mean over tasks",
            "eval_notes": list(self.eval_notes),
            "evaluation": dict(self.last_eval),
        }
        if self.table is not None:
            info["accuracy_table"] = self.table
        return info

    def artifacts(self, record, results_dir) -> list[str]:
        """The accuracy heatmap, written to <results_dir>/plots/; returns the written paths. The runner records
        describe() before training, so the accuracy table and what evaluation found are added to the record's
        task_info here."""
        from tasks.babilong.plot import plot_heatmap

        metrics = record.get("metrics") if isinstance(record, dict) else None
        table = table_from_metrics(metrics) if metrics else self.table
        if not table:
            return []
        if isinstance(record, dict) and isinstance(record.get("task_info", {}), dict):
            record.setdefault("task_info", {}).update(
                accuracy_table=table, eval_notes=list(self.eval_notes), evaluation=dict(self.last_eval),
                train_rows=dict(self.train_stats), source=self.source.name, source_choice=self.source_note)
        tag = "babilong"
        if isinstance(record, dict):
            parts = [record.get(k) for k in ("model", "preset", "run_id")]
            parts = [p for p in parts if isinstance(p, str) and p]
            if parts:
                tag = "_".join(["babilong", *parts])
        tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag)
        path = Path(results_dir) / "plots" / f"{tag}.png"
        title = f"BABILong accuracy (%), source: {self.source.name}"
        plot_heatmap(table, path, title=title)
        return [str(path)]


def table_from_metrics(metrics: dict) -> dict[str, dict[str, float]]:
    """{task or 'mean': {length: accuracy %}} from metrics named acc/<task>/<length>."""
    table: dict[str, dict[str, float]] = {}
    for key, metric in metrics.items():
        parts = key.split("/")
        if len(parts) != 3 or parts[0] != "acc":
            continue
        value = metric.value if hasattr(metric, "value") else (metric["value"] if isinstance(metric, dict) else metric)
        table.setdefault(parts[1], {})[parts[2]] = float(value)
    return table


def build(**options) -> BabilongTask:
    return BabilongTask(**options)
