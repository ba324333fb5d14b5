"""BABILong (Kuratov et al., 2024, "BABILong: Testing the Limits of LLMs with Long Context Reasoning-in-a-Haystack"):
bAbI qa1..qa5 facts hidden in long background text, accuracy by task and context length.

Protocol (the defaults; every choice is in the record's task_info):
- Tokens: words (`tokenizer=words`, words.py): one id per bAbI word, hashed ids for other words, so a tiny model
  trained from scratch spends its budget on the task, not on spelling. `bytes`, `gpt2`, `phrases` and
  `hf:<source>` (a pretrained model's own tokenizer, codecs.py) are options. Sample lengths are always GPT-2 token
  counts, as in the benchmark.
- Prompt: `plain` (the benchmark's user template + "Answer:") for models trained here; `official` (instruction,
  examples and post-prompt first, prompts.py) is the default with an `hf:` tokenizer, scored by generation.
- Training rows: training samples at `train_length` (default 0k), packed whole one after another into each row
  (`pack=1`), each followed by up to `extra_questions` (default 3) more "Where is <person>?" questions about the
  same context answered by its move facts (training.py); loss on the answer tokens (`loss=answer`, or `all`).
  Test samples are never trained on and never changed. `curriculum=qa1:300` draws the first 300 steps' rows from
  qa1 alone (tasks joined by '+'), then every task; none by default.
- Named protocols (`protocol=`, protocols.py) set the defaults of the options above and the model settings each
  architecture gets: `standard` (the defaults above) and `curriculum` (phrase tokens, a qa1:600 curriculum, the
  Titans memories as a delta-rule-range matrix memory with chunks of 2), the protocol the README's main job uses.
- Budget at preset tiny (`budget_defaults`, `budget=main`): 750 steps x 32 rows x 128 tokens, lr 1e-3 (`budget=long`:
  1,500 steps); the runner records the
  learning curve (accuracy at 0k and 1k on `curve_samples` test samples per cell) at every validation step.
- Scoring: every (task, length) cell, `samples` (default 100) samples per 0k cell and `long_samples` (default 25)
  per longer cell, lengths 0k,1k,2k,4k,8k by default. Small models trained from scratch are scored in the
  constrained form: the answer is the label (the benchmark's label set of the task) whose continuation
  " <label>." is most likely after the prompt; `scoring=generate` decodes greedily and applies the benchmark's
  rule.

Long samples are fed segment by segment with the model's streaming state (streaming.py), so a 128k-token sample
scores in bounded memory on recurrent models; attention models ("window") score within their window, and the
record says which lengths exceeded it; models that cannot stream score only samples that fit one call. Models
that stream ("state" and "window") are scored `eval_batch` samples at a time (default 16): the samples of one
cell, sorted by prompt length, are streamed in lockstep and leave the batch as their prompts end, and each
sample's candidates are scored in one call; `eval_batch=1` keeps the one-sample path. The record's
`evaluation.batched` says which path ran. The runner's `limit` can only lower the samples per cell.
"""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.errors import HarnessError
from tasks.babilong.codecs import ByteCodec, make_codec
from tasks.babilong.common import (
    ANSWER_TEMPLATE,
    PROMPT_TEMPLATE,
    TASK_LABELS,
    TASKS,
    BabilongSample,
    context_budget,
    parse_length,
    parse_list,
)
from tasks.babilong.prompts import DEFAULT_TEMPLATE, official_prompt
from tasks.babilong.protocols import get_protocol
from tasks.babilong.scoring import binomial_accuracy, compare_answers, mean_of_accuracies, shortcut_accuracy
from tasks.babilong.sources import SOURCES, find_builder_files, open_source
from tasks.babilong.streaming import (
    argmax_first,
    can_batch,
    greedy_continue,
    greedy_generate,
    none_if_nonfinite,
    score_candidates,
    score_choices_full,
    score_choices_streaming,
    stream_prompts,
)
from tasks.babilong.training import EXTRA_TEMPLATE, fitting_example, pack_rows, where_questions
from tasks.base import Metric, Task, int_option

DEFAULT_LENGTHS = "0k,1k,2k,4k,8k"
# preset tiny: 750 steps x 32 packed rows x 128 word tokens (~3.1M tokens; the main job in 15 minutes on 2 cores),
# lr 1e-3 (3e-3 left transformer-pp and titans-mac at chance for 400 steps), the 0k / 1k learning curve every 150
# steps. Longer runs do not help tiny models past the shortcut level (docs/history.md: 1,500 steps of qa1)
TINY_BUDGET = {"steps": 750, "batch_size": 32, "lr": 1e-3, "warmup_steps": 50, "eval_every": 150,
               "checkpoint_every": 150}
# Named budgets at preset tiny (`--task-arg budget=...`): "main" above; "long" doubles the steps, which took Gated
# DeltaNet's qa1 at 0k from 66 % to 100 % on the seed that had not learned it at 750 steps (~17 minutes on 2 cores)
BUDGETS = {"main": TINY_BUDGET, "long": {**TINY_BUDGET, "steps": 1500, "eval_every": 250, "checkpoint_every": 250}}
DEFAULT_EXTRA_QUESTIONS = 3  # "Where is <person>?" questions added to each training sample (training.py)
DEFAULT_CURVE_SAMPLES = 20  # per (task, length) cell at each validation step: the 0k / 1k learning curve
DEFAULT_SAMPLES = 100  # per (task, 0k) cell: enough for a binomial stderr of <= 5 points
DEFAULT_LONG_SAMPLES = 25  # per (task, length > 0k) cell: long samples cost ~length tokens each to score
DEFAULT_EVAL_BATCH = 16  # samples streamed together by recurrent models (1: one sample at a time)
TRAIN_FIT_TRIES = 16  # training draws tried to find a sample that fits the room left in a training row
OPTIONS = ("source", "tasks", "lengths", "train_length", "budget", "samples", "long_samples", "seed", "scoring", "tokenizer",
           "prompt", "max_new_tokens", "segment_len", "eval_batch", "pack", "loss", "extra_questions", "curve_samples",
           "curriculum", "protocol",
           "babi_dir", "books_dir", "tokenizer_dir", "data_dir", "data_file")
# plain: the user template + "Answer:" (PROMPT_TEMPLATE); official: the benchmark's instruction, examples and
# post-prompt before it (prompts.py)
PROMPTS = ("plain", "official")


def _as_int(value, what: str, minimum: int) -> int:
    return int_option(value, what, minimum, "BABILong")


def parse_curriculum(value, tasks: list[str]) -> tuple[list[str], int] | None:
    """`curriculum=qa1:300` (tasks joined by '+', then the steps): training rows draw only those tasks for the first
    300 steps, then every task. None: no curriculum."""
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    first, sep, steps = str(value).partition(":")
    if not sep:
        raise HarnessError(f"BABILong curriculum {value!r} is not TASKS:STEPS; e.g. curriculum=qa1:300 (qa1 alone for "
                           f"the first 300 steps) or qa1+qa2:200")
    names = [t.strip() for t in first.split("+") if t.strip()]
    unknown = [t for t in names if t not in tasks]
    if not names or unknown:
        raise HarnessError(f"BABILong curriculum {value!r}: its tasks must be among the trained tasks "
                           f"({', '.join(tasks)})")
    return names, _as_int(steps, "curriculum steps", 1)


class BabilongTask(Task):
    name = "babilong"
    primary_metric = "acc/mean"

    def __init__(self, source: str = "auto", tasks: str = ",".join(TASKS), lengths: str = DEFAULT_LENGTHS,
                 train_length: str = "0k", budget: str = "main", samples=DEFAULT_SAMPLES, long_samples=DEFAULT_LONG_SAMPLES, seed=0,
                 scoring: str | None = None, tokenizer: str | None = None, prompt: str | None = None,
                 max_new_tokens=None, segment_len=None, eval_batch=DEFAULT_EVAL_BATCH, pack=1, loss="answer", extra_questions=DEFAULT_EXTRA_QUESTIONS, curve_samples=DEFAULT_CURVE_SAMPLES,
                 curriculum: str | None = None, protocol: str = "standard",
                 data_dir=None, babi_dir=None,
                 books_dir=None, tokenizer_dir=None, data_file=None, preset=None, **unknown):
        if unknown:
            raise HarnessError(f"unknown BABILong option(s) {', '.join(sorted(unknown))}; valid: {', '.join(OPTIONS)}")
        self.tasks = parse_list(tasks, TASKS, "tasks")
        # the named protocol (protocols.py) gives the defaults of the options below that the caller left unset
        self.protocol_name, self.protocol = protocol, get_protocol(protocol)
        tokenizer = self.protocol.tokenizer if tokenizer is None else tokenizer
        self.lengths = [parse_length(x) for x in parse_list(lengths, None, "lengths")]
        tokens = [t for _, t in self.lengths]
        if len(set(tokens)) < len(tokens):  # one cell scored twice would overwrite itself
            raise HarnessError(f"BABILong lengths {lengths!r} name one length twice; give each length once")
        self.train_length = parse_length(train_length)
        if budget not in BUDGETS:
            raise HarnessError(f"BABILong budget {budget!r} is not one of {', '.join(BUDGETS)}")
        self.budget = budget
        self.samples = _as_int(samples, "samples", 1)
        self.long_samples = _as_int(long_samples, "long_samples", 1)
        self.seed = _as_int(seed, "seed", 0)
        if scoring not in ("choice", "generate", None):
            raise HarnessError(f"BABILong scoring {scoring!r} is not one of choice, generate")
        if source not in SOURCES:
            raise HarnessError(f"BABILong source {source!r} is not one of {', '.join(SOURCES)}")
        self.requested_source = source
        self.source, self.source_note = open_source(source, self.seed, data_dir, babi_dir, books_dir, tokenizer_dir)
        print(f"[babilong] samples from source {self.source.name}: {self.source_note}", file=sys.stderr)
        hf_tokenizer = str(tokenizer).startswith("hf:")
        files = find_builder_files(data_dir, babi_dir, books_dir, tokenizer_dir) if tokenizer == "gpt2" else None
        self.codec = make_codec(str(tokenizer), files, tokenizer_dir)
        # a pretrained model (its own tokenizer) answers the benchmark's prompt in its own words; small models
        # trained from scratch get the bare user template and are scored on the label set
        self.prompt = prompt if prompt is not None else ("official" if hf_tokenizer else "plain")
        if self.prompt not in PROMPTS:
            raise HarnessError(f"BABILong prompt {prompt!r} is not one of {', '.join(PROMPTS)}")
        self.scoring = scoring if scoring is not None else ("generate" if hf_tokenizer else "choice")
        self.vocab_size = self.codec.vocab_size
        # Fine-tuning rows (prompt frame + story + answer) need ~256 bytes at 0k; the runner widens a shorter
        # preset context to this and says so in the record.
        self.preferred_seq_len = 256 if tokenizer == "bytes" else 128
        # tokens per story line and of the prompt frame (train_story_cap): a bAbI line is ~30 bytes (~8 GPT-2
        # tokens) and the plain frame ~50 bytes; a pretrained model's tokenizer and the official prompt (~200
        # tokens) are measured once here, and the rows get room for that frame plus a 0k story
        if hf_tokenizer or self.prompt != "plain":
            self.line_tokens = len(self.codec.encode("Mary travelled to the bathroom.\n")) + 1
            self.frame_tokens = len(self.prompt_ids(BabilongSample("", "Where is Mary?", "kitchen", self.tasks[0],
                                                                   "0k", "")))
            self.preferred_seq_len = -(-(self.frame_tokens + 128) // 64) * 64
        else:
            self.line_tokens, self.frame_tokens = (30, 50) if isinstance(self.codec, ByteCodec) else (8, 15)
        self.max_new_tokens = _as_int(max_new_tokens, "max_new_tokens", 1) if max_new_tokens is not None else (
            20 if tokenizer == "gpt2" or hf_tokenizer else 40)  # the benchmark generates 20 tokens (~40 bytes)
        self.segment_len = _as_int(segment_len, "segment_len", 1) if segment_len is not None else None
        self.eval_batch = _as_int(eval_batch, "eval_batch", 1)
        if str(pack) not in ("0", "1"):
            raise HarnessError(f"BABILong option pack={pack!r} must be 1 (pack samples into training rows) or 0")
        self.pack = str(pack) == "1"
        if loss not in ("answer", "all"):
            raise HarnessError(f"BABILong option loss={loss!r} is not one of answer (loss on the answer tokens), "
                               f"all (language-model loss on every token of the samples)")
        self.loss = loss
        self.extra_questions = _as_int(extra_questions, "extra_questions", 0)
        # what a sample's extra questions add to its length (packing sizes later stories for it)
        self.extra_question_tokens = self.extra_questions * len(self.codec.encode(EXTRA_TEMPLATE + " garden."))
        self.curve_samples = _as_int(curve_samples, "curve_samples", 0)
        if curriculum is None and self.protocol.curriculum is not None:
            # the protocol's curriculum, where its tasks are among those trained (tasks=qa2 trains without it)
            wanted, _ = parse_curriculum(self.protocol.curriculum, TASKS)
            curriculum = self.protocol.curriculum if set(wanted) <= set(self.tasks) else None
        self.curriculum = parse_curriculum(curriculum, self.tasks)
        self.labels = {t: TASK_LABELS[t] for t in self.tasks}
        self._candidates = {t: [self.codec.encode(ANSWER_TEMPLATE.format(answer=l)) for l in self.labels[t]]
                            for t in self.tasks}
        # rows made, rows whose sample was cut at the left (no draw fitted), samples that needed a redraw,
        # and the story-length cap used for the training context; packed: samples after the first of a row;
        # tokens / padding: real and padding positions of the rows made
        self.train_stats = {"rows": 0, "packed": 0, "answers": 0, "truncated": 0, "redrawn": 0, "tokens": 0, "padding": 0,
                            "story_line_cap": None}
        self.table: dict[str, dict[str, float]] | None = None
        self.last_eval: dict = {}
        self.eval_notes: list[str] = []
        self._nonfinite = 0  # samples of the cell being scored whose outputs were NaN or infinite

    # -- samples ----------------------------------------------------------------------------------------------
    def samples_at(self, length_tokens: int) -> int:
        """Samples scored per (task, 0k) cell and per (task, longer length) cell."""
        return self.samples if length_tokens == 0 else self.long_samples

    def eval_samples(self, task: str, length: str, length_tokens: int, n: int):
        return self.source.eval_samples(task, length, length_tokens, n)

    def model_defaults(self, model_name: str) -> dict[str, str]:
        """The protocol's model settings for this architecture (registry name), as `--model-arg` strings; the
        runner applies those the command line did not set and records them."""
        return dict(self.protocol.model_settings.get(model_name, {}))

    def budget_defaults(self, preset: str) -> dict:
        """The CPU fine-tuning budget at preset tiny, named by the `budget` option (flags override each field;
        larger presets keep their own): "main", a 15-minute main job on 2 cores for titans-mac, scoring included;
        "long", twice the steps."""
        return dict(BUDGETS[self.budget]) if preset == "tiny" else {}

    def train_story_cap(self, seq_len: int) -> int | None:
        """Longest story (lines) worth drawing for a training context of seq_len tokens (line and frame sizes from
        __init__); longer stories would only be cut."""
        return max(3, (seq_len - self.frame_tokens) // self.line_tokens)

    def _train_sample(self, task, index, seed, max_lines=None):
        length, tokens = self.train_length
        return self.source.train_sample(task, length, tokens, seed, index, max_lines)

    def prompt_ids(self, sample) -> list[int]:
        """The token ids a model reads before answering (the `prompt` option, through the codec)."""
        if self.prompt == "official":
            return self.codec.encode_prompt(official_prompt(sample.task, sample.context, sample.question))
        return self.codec.encode_prompt(sample.prompt())

    def encode_example(self, sample, extra_questions: int = 0) -> tuple[list[int], list[int]]:
        """(prompt + answer tokens, positions of the answer tokens); with extra_questions, up to that many
        "Where is <person>?" questions about the same context follow the answer (training.py)."""
        ids = self.prompt_ids(sample)
        answers: list[int] = []
        pairs = [("", sample.target)] + where_questions(sample.context, sample.question, extra_questions)
        for frame, target in pairs:
            ids += self.codec.encode(frame)
            answer = self.codec.encode(ANSWER_TEMPLATE.format(answer=target))
            answers += range(len(ids), len(ids) + len(answer))
            ids += answer
        return ids, answers

    def _example(self, task, index, seed, room, cap_lines) -> tuple[list[int], list[int], int]:
        """(ids, answer positions, draws needed) of training sample `index`, redrawn until it fits `room` tokens
        (training.fitting_example)."""
        def draw(attempt):
            sample = self._train_sample(task, index * TRAIN_FIT_TRIES + attempt, seed, cap_lines)
            return self.encode_example(sample, self.extra_questions)
        return fitting_example(draw, room, TRAIN_FIT_TRIES)

    def _rows(self, tasks: list[str], step: int, batch_size: int, seq_len: int, seed: int, answers_only: bool = True,
              stats: dict | None = None):
        stats = {} if stats is None else stats  # counters of training rows only (not validation)
        return pack_rows(self._example, tasks, step, batch_size, seq_len, seed, pad_id=self.codec.pad_id,
                         story_cap=self.train_story_cap, pack=bool(self.pack), answers_only=answers_only,
                         extra_tokens=self.extra_question_tokens, stats=stats)

    def train_tasks(self, step: int) -> list[str]:
        """The tasks training rows are drawn from at this step: the curriculum's first tasks for its first steps,
        then every task."""
        if self.curriculum is not None and step < self.curriculum[1]:
            return self.curriculum[0]
        return self.tasks

    def train_batch(self, step, batch_size, seq_len, seed):
        return self._rows(self.train_tasks(step), step, batch_size, seq_len, seed,
                          answers_only=self.loss == "answer", stats=self.train_stats)

    def val_batch(self, index, batch_size, seq_len):
        return self._rows(self.tasks, index, batch_size, seq_len, 0x5EED)

    # -- scoring ----------------------------------------------------------------------------------------------
    def _judge_choice(self, sample, scores) -> bool:
        return self.labels[sample.task][argmax_first(scores)].lower() == sample.target.lower()

    def _continue_and_judge(self, sample, model, first, state, device) -> bool:
        out = greedy_continue(model, first, state, device, self.max_new_tokens, self._stop_ids())
        return self._judge_generation(sample, out)

    def _judged(self, judge, *args) -> bool:
        """judge(*args) for one sample; a model whose output is NaN or infinite gave no answer: wrong, and counted
        in the cell's count (evaluation.nonfinite_samples in the record)."""
        correct = none_if_nonfinite(judge, *args)
        if correct is None:
            self._nonfinite += 1
            return False
        return correct

    def _judge_generation(self, sample, out) -> bool:
        return compare_answers(sample.target, self.codec.decode(out), sample.question, self.labels[sample.task])

    def _stop_ids(self) -> set[int]:
        # a pretrained model's answer ends at its end-of-sequence token (the benchmark generates up to 20 tokens
        # and keeps newlines); a model trained here ends an answer line with a newline
        stop = getattr(self.codec, "stop_ids", None)
        return set(stop) if stop is not None else set(self.codec.encode("\n"))

    def _predict(self, model, sample, device, seg_len, prompt=None) -> bool | None:
        """One sample scored alone (None: skipped, too long for a model that cannot stream)."""
        prompt = self.prompt_ids(sample) if prompt is None else prompt
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
            return self._judged(lambda: self._judge_generation(sample, greedy_generate(
                model, prompt, seg_len, device, self.max_new_tokens, stop_ids=self._stop_ids())))
        return self._judged(self._judge_choice, sample, scores)

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
                    outcomes[i] = self._judged(self._judge_choice, sample, scores)
                else:
                    outcomes[i] = self._judged(self._continue_and_judge, sample, model, first, state, device)
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
        cap = None if limit is None else _as_int(limit, "limit", 1)
        per_length = {name: self.samples_at(tokens) if cap is None else min(self.samples_at(tokens), cap)
                      for name, tokens in self.lengths}
        seg_len = self.segment_length(model, seq_len)
        batched = self.eval_batch > 1 and can_batch(model)
        self.last_eval = {"samples_per_cell": per_length, "segment_len": seg_len, "model_streaming": model.streaming,
                          "model_window": model.max_context, "batched": batched, "eval_batch": self.eval_batch}
        if not batched:
            self.last_eval["batched_why_not"] = (
                "eval_batch=1" if self.eval_batch == 1 else
                f"streaming={model.streaming!r} scores one sample at a time" if model.streaming == "none" else
                "the model's state cannot be batched (batched_state=False)")
        model.eval()
        metrics: dict[str, Metric] = {}
        cells: dict[tuple[str, str], tuple[float, float | None, int]] = {}
        self.eval_notes = []
        self.last_eval["samples_scored"] = scored = {}  # per cell "task/length": samples actually scored
        # per cell: samples whose scores were NaN or infinite, counted wrong (empty when every output was finite)
        self.last_eval["nonfinite_samples"] = nonfinite = {}
        # per cell: the accuracy of answering with the label the context names last (scoring.shortcut_accuracy)
        self.last_eval["shortcut_last_mentioned"] = shortcut = {}
        window = model.max_context if model.streaming == "window" else None
        bar = tqdm(total=len(self.tasks) * sum(per_length.values()), desc="babilong", unit="sample", disable=not progress)
        for length, tokens in self.lengths:
            exceeded = skipped = 0
            n = per_length[length]
            for task in self.tasks:
                samples = self.eval_samples(task, length, tokens, n)
                if len(samples) < n:  # a fixed pool smaller than asked: say so, the record holds the count
                    note = f"{task}/{length}: {len(samples)} samples scored, {n} asked (the pool is smaller)"
                    self.eval_notes.append(note)
                    print(f"warning: BABILong {note}", file=sys.stderr)
                prompts = [self.prompt_ids(sample) for sample in samples]
                self._nonfinite = 0
                if samples:
                    shortcut[f"{task}/{length}"] = round(shortcut_accuracy(samples, self.labels[task]), 2)
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
                if self._nonfinite:
                    nonfinite[f"{task}/{length}"] = self._nonfinite
                if outcomes:
                    cells[task, length] = binomial_accuracy(outcomes)
                    metrics[f"acc/{task}/{length}"] = Metric(*cells[task, length], higher_is_better=True)
            if exceeded:
                self.eval_notes.append(f"{length}: {exceeded} samples longer than the model's {window}-token "
                                       f"window were scored with a sliding window (earlier facts unseen)")
            if skipped:
                self.eval_notes.append(f"{length}: {skipped} samples skipped, longer than one call of a model "
                                       f"that cannot stream")
            bad = sum(nonfinite.get(f"{t}/{length}", 0) for t in self.tasks)
            if bad:
                note = (f"{length}: the model's scores were NaN or infinite on {bad} of {len(self.tasks) * n} samples "
                        f"(counted wrong; per cell in evaluation.nonfinite_samples)")
                self.eval_notes.append(note)
                if progress:
                    tqdm.write(f"warning: BABILong {note}", file=sys.stderr)
            levels = [shortcut[f"{t}/{length}"] for t in self.tasks if f"{t}/{length}" in shortcut]
            if len(levels) == len(self.tasks):
                shortcut[f"mean/{length}"] = round(sum(levels) / len(levels), 2)
            row = [cells[t, length] for t in self.tasks if (t, length) in cells]
            if len(row) == len(self.tasks):
                metrics[f"acc/mean/{length}"] = Metric(*mean_of_accuracies(row), higher_is_better=True)
        bar.close()
        if not cells:
            raise HarnessError("no BABILong sample could be scored with this model (see the notes in the record)")
        metrics["acc/mean"] = Metric(*mean_of_accuracies(list(cells.values())), higher_is_better=True)
        self.table = table_from_metrics(metrics)
        if progress:
            levels = ", ".join(f"{k.split('/')[1]} {v:.1f}" for k, v in shortcut.items() if k.startswith("mean/"))
            print(f"[babilong] shortcut level (answer with the label the context names last), mean over tasks, %: "
                  f"{levels} (record: evaluation.shortcut_last_mentioned)", file=sys.stderr)
        return metrics

    CURVE_LENGTHS = ("0k", "1k")

    @torch.no_grad()
    def progress_metrics(self, model, *, device, seq_len) -> dict[str, float]:
        """Accuracy (%) at 0k and 1k, mean over the tasks, on the first `curve_samples` evaluation samples of each
        cell: the learning curve the runner records at each validation step (0: none)."""
        if not self.curve_samples:
            return {}
        saved = (self.lengths, self.samples, self.long_samples, self.table, self.last_eval, self.eval_notes)
        try:
            self.lengths = [parse_length(x) for x in self.CURVE_LENGTHS]
            self.samples = self.long_samples = self.curve_samples
            metrics = self.evaluate(model, device=device, seq_len=seq_len, batch_size=1, progress=False)
        finally:
            self.lengths, self.samples, self.long_samples, self.table, self.last_eval, self.eval_notes = saved
        return {f"acc/mean/{length}": round(metrics[f"acc/mean/{length}"].value, 2) for length in self.CURVE_LENGTHS
                if f"acc/mean/{length}" in metrics}

    # -- record and plots -------------------------------------------------------------------------------------
    def guess_levels(self) -> dict[str, float]:
        """Accuracy (percent) of a uniformly random label per cell, per length's mean and overall."""
        chance = {t: 100.0 / len(self.labels[t]) for t in self.tasks}
        levels = {}
        for name, _ in self.lengths:
            levels.update({f"{t}/{name}": round(c, 4) for t, c in chance.items()})
            levels[f"mean/{name}"] = round(sum(chance.values()) / len(chance), 4)
        levels["mean"] = round(sum(chance.values()) / len(chance), 4)
        return levels

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
            "samples_per_cell": {name: self.samples_at(tokens) for name, tokens in self.lengths},
            "eval_batch": self.eval_batch,
            "seed": self.seed,
            "train_length": self.train_length[0],
            "budget": self.budget,
            "protocol": f"{self.protocol_name}: {self.protocol.summary}",
            "train_curriculum": (f"steps 0-{self.curriculum[1] - 1} on {', '.join(self.curriculum[0])} only, then "
                                 f"every task" if self.curriculum else "none: every step draws every task in turn"),
            "train_rows": dict(self.train_stats),
            "train_loss": ("answer tokens only" if self.loss == "answer" else
                           "every token of the samples (validation: answer tokens only)"),
            "train_extra_questions": (f"up to {self.extra_questions} extra 'Where is <person>?' questions per "
                                      f"training sample, answered by its move facts" if self.extra_questions
                                      else "none"),
            "train_packing": ("whole samples packed one after another into each training row, loss on every "
                              "answer" if self.pack else "one sample per training row"),
            "model_tokens": self.codec.name,
            "scoring": ("choice: most likely label continuation " + repr(ANSWER_TEMPLATE) if self.scoring == "choice"
                        else f"generate: greedy {self.max_new_tokens} tokens, judged by the benchmark's rule"),
            "labels": {t: list(v) for t, v in self.labels.items()},
            "prompt": self.prompt,
            "prompt_template": PROMPT_TEMPLATE if self.prompt == "plain" else DEFAULT_TEMPLATE,
            "accuracy_unit": "percent; stderr binomial; acc/mean/<len> = unweighted mean over tasks",
            # answering with a random label of the task's set: where a model with broken mixing lands (harness
            # regress checks a row only where its lower bound clears this)
            "guess_level": self.guess_levels(),
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
        from tasks.babilong.plot import plot_heatmap, plot_learning_curve

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
        written = [str(plot_heatmap(table, path, title=title))]
        curve = (record.get("training") or {}).get("task_curve") if isinstance(record, dict) else None
        if curve:
            chance = 100 * sum(1 / len(self.labels[t]) for t in self.tasks) / len(self.tasks)
            written.append(str(plot_learning_curve(curve, path.with_name(f"{tag}_curve.png"),
                                                   title=f"{tag}: accuracy during training", chance=chance)))
        return written


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
