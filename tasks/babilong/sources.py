"""Where BABILong samples come from, all in one sample format (`BabilongSample`):

- "hf": the official datasets on the Hugging Face Hub, `RMT-team/babilong` (evaluation; configs are length
  names, splits are tasks, fields input/question/target) and `RMT-team/babilong-train-5k-samples` (training),
  through `datasets.load_dataset` (cached by `datasets`). Offline, or for a length the Hub does not hold, this is a
  one-line DataError.
- "builder": samples of any length built from bAbI files + background books in --data-dir (see builder.py).
- "generator": the built-in generator (generator.py), no files at all.
- "auto" (the default): the builder when --data-dir holds bAbI, books and the GPT-2 tokenizer files, else
  the generator. It makes no network call: the Hub is used only when asked for (source=hf), so a default
  run's data never depends on whether the Hub answers. The record says which source was used and why.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from harness import data_catalog
from harness.data import data_dirs
from harness.errors import DataError, HarnessError
from tasks.babilong.builder import BabilongBuilder
from tasks.babilong.common import BabilongSample, TASKS
from tasks.babilong.generator import BabilongGenerator

HF_EVAL = data_catalog.BABILONG_EVAL  # ids from the dataset catalog (`harness data fetch babilong` caches them)
HF_TRAIN = data_catalog.BABILONG_TRAIN
SOURCES = ("auto", "hf", "builder", "generator")


class HFSource:
    """The official datasets; every (task, length) is loaded once and kept."""

    name = "hf"

    def __init__(self, eval_repo: str = HF_EVAL, train_repo: str = HF_TRAIN, seed: int = 0):
        self.eval_repo, self.train_repo, self.seed = eval_repo, train_repo, seed
        self._cache: dict[tuple[str, str, str], list[dict]] = {}

    def _load(self, repo: str, length: str, task: str) -> list[dict]:
        key = (repo, length, task)
        if key not in self._cache:
            try:
                rows = data_catalog.babilong_hf_rows(repo, length, task)
            except Exception as exc:  # offline, unknown config/split, hub errors: one line for the user
                raise DataError(f"could not load {repo} config {length!r} split {task!r} from the Hugging Face "
                                f"Hub ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                                f"use --task-arg source=builder --data-dir DIR or source=generator offline") from exc
            self._cache[key] = [{"input": r["input"], "question": r["question"], "target": r["target"]} for r in rows]
        return self._cache[key]

    def _sample(self, row: dict, task: str, length: str) -> BabilongSample:
        return BabilongSample(row["input"], row["question"], row["target"], task, length, "hf")

    def eval_samples(self, task, length, length_tokens, n):
        rows = self._load(self.eval_repo, length, task)
        return [self._sample(r, task, length) for r in rows[:n]]

    def train_sample(self, task, length, length_tokens, seed, index, max_lines=None):  # fixed samples: no cap
        rows = self._load(self.train_repo, length, task)
        j = int(np.random.default_rng([seed, 0, TASKS.index(task) + 1, length_tokens, index]).integers(len(rows)))
        return self._sample(rows[j], task, length)

    def describe(self):
        return {"source": "hf", "eval_dataset": self.eval_repo, "train_dataset": self.train_repo,
                "length_tokenizer": "gpt2 (the datasets' own lengths)", "notes": []}


def find_builder_files(data_dir, babi_dir=None, books_dir=None, tokenizer_dir=None,
                       include_cache: bool = False) -> tuple[Path, Path, Path] | None:
    """(bAbI folder, books folder, GPT-2 tokenizer folder) from explicit options or the data folders, or None.
    The cache (`harness data fetch babi pg19 gpt2-tokenizer`) is searched with --data-dir / $HARNESS_DATA_DIR, or
    with include_cache (source=builder asked for explicitly); never by a plain auto run, whose data must not
    depend on what happens to be cached."""
    roots = data_dirs(data_dir) if data_dir or os.environ.get("HARNESS_DATA_DIR") or include_cache else []
    def pick(explicit, subpaths, check):
        if explicit:
            return Path(explicit)
        for root in roots:
            for sub in subpaths:
                if check(root / sub):
                    return root / sub
        return None
    babi = pick(babi_dir, (*data_catalog.folders("babi"), "."),
                lambda p: (p / "en-10k").is_dir() or (p / "en").is_dir())
    books = pick(books_dir, data_catalog.folders("pg19"), lambda p: p.is_dir() and any(p.glob("*.txt")))
    tok = pick(tokenizer_dir, data_catalog.folders("gpt2-tokenizer"),
               lambda p: (p / "encoder.json").is_file() or (p / "vocab.json").is_file())
    if babi and books and tok:
        return babi, books, tok
    return None


def open_source(source: str, seed: int, data_dir=None, babi_dir=None, books_dir=None, tokenizer_dir=None):
    """The sample source object and a note on how it was chosen."""
    if source not in SOURCES:
        raise HarnessError(f"BABILong source {source!r} is not one of {', '.join(SOURCES)}")
    if source == "generator":
        return BabilongGenerator(seed), "asked for the built-in generator"
    if source == "hf":
        return HFSource(seed=seed), "asked for the Hugging Face datasets"
    files = find_builder_files(data_dir, babi_dir, books_dir, tokenizer_dir, include_cache=source == "builder")
    if source == "builder":
        if files is None:
            raise DataError("the BABILong builder needs bAbI files (babi/en-10k), books (pg19/*.txt) and the GPT-2 "
                            "tokenizer (tokenizers/gpt2/encoder.json + vocab.bpe) under --data-dir, "
                            "$HARNESS_DATA_DIR or the cache: `harness data fetch babi pg19 gpt2-tokenizer`; or set "
                            "babi_dir / books_dir / tokenizer_dir")
        return BabilongBuilder(*files, seed=seed), f"builder files from {files[0].parent}"
    if files is not None:
        return BabilongBuilder(*files, seed=seed), "auto: --data-dir holds bAbI + books + GPT-2 tokenizer"
    return BabilongGenerator(seed), ("auto: no bAbI + books + GPT-2 tokenizer files in --data-dir; the "
                                     "built-in generator (source=hf for the Hugging Face datasets)")
