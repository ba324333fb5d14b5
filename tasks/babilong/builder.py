"""Building BABILong samples of any length from bAbI task files and background book text, the way the
benchmark's authors build them (../shared/data/README.md, section 6):

- background: pick a random book and a random start, split the text into sentences, drop the partial first and
  last sentence, keep sentences of at least 10 GPT-2 tokens (each counted with a leading space) and add them until
  the budget (context length minus the facts' tokens) is met; the last sentence is trimmed to fit;
- facts: each fact gets a slot drawn at random (with replacement) among the sentence boundaries; the slots are
  sorted so the facts keep their order, and each fact goes before the sentence at its slot. The question is not
  placed in the context.

Lengths are counted in GPT-2 tokens with the local tokenizer files (encoder.json + vocab.bpe). Sentences are split
with NLTK's PunktSentenceTokenizer built with default parameters (what the benchmark instantiates; it needs no
downloaded data) when nltk is installed, otherwise with a regex splitter (end punctuation followed by white space
and a capital letter); the record says which. Whitespace inside a sentence is collapsed to single spaces, and the
Project Gutenberg header and licence are cut off each book.

Differences from the official generator, on purpose: every sample has its own random generator seeded by
(seed, split, task, length, index), so any sample can be rebuilt alone; evaluation samples come from the bAbI
*test* files and PG19 *test* books (the official sets draw stories from the en-10k train files), training samples
from the train files and the other books, so fine-tuning never sees an evaluation story.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from harness.data import sha256_file
from harness.errors import DataError
from tasks.babilong.babi import BabiStory, read_babi
from tasks.babilong.common import BABI_FILE_STEMS, TASKS, BabilongSample, context_budget, max_story_lines

MIN_SENTENCE_TOKENS = 10  # the benchmark's SentenceSampler(min_sentence_len=10)
PG19_TEST_IDS = frozenset({"10146", "10321", "10356", "10762"})  # books of ../shared/data/pg19 in PG19's test split
SPLIT_IDS = {"train": 0, "eval": 1}


class GPT2Counter:
    """GPT-2 token counts from OpenAI's encoder.json / vocab.bpe (loaded with `tokenizers`, fully offline)."""

    def __init__(self, folder: Path):
        from tokenizers import ByteLevelBPETokenizer

        vocab, merges = folder / "encoder.json", folder / "vocab.bpe"
        if not vocab.is_file() or not merges.is_file():
            vocab, merges = folder / "vocab.json", folder / "merges.txt"  # Hugging Face file names
        if not vocab.is_file() or not merges.is_file():
            raise DataError(f"no GPT-2 tokenizer in {folder}: it needs encoder.json + vocab.bpe "
                            f"(or vocab.json + merges.txt)")
        self.folder = folder
        self.tokenizer = ByteLevelBPETokenizer(str(vocab), str(merges))
        self.name = "gpt2 (local encoder.json/vocab.bpe)"

    def counts(self, pieces: Sequence[str]) -> list[int]:
        """Token count of each piece as it stands in running text (with a leading space)."""
        return [len(e.ids) for e in self.tokenizer.encode_batch([" " + p for p in pieces])]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def trim(self, piece: str, n_tokens: int) -> tuple[str, int]:
        """The first `n_tokens` tokens of a piece (counted with its leading space), as text, and its count."""
        ids = self.encode(" " + piece)[:n_tokens]
        while ids:
            text = self.decode(ids).strip()
            count = self.counts([text])[0] if text else 0
            if 0 < count <= n_tokens:
                return text, count
            ids = ids[:-1]  # re-tokenising a cut can merge differently; shorten until it fits
        return "", 0


def _regex_split(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z])", text) if s.strip()]


def sentence_splitter() -> tuple[Callable[[str], list[str]], str]:
    """(split function, its name for the record)."""
    try:
        from nltk.tokenize.punkt import PunktSentenceTokenizer
    except ImportError:
        return _regex_split, "regex (end punctuation + space + capital letter); nltk is not installed"
    punkt = PunktSentenceTokenizer()
    return punkt.tokenize, "nltk PunktSentenceTokenizer() with default parameters (as the benchmark)"


_GUTENBERG_START = re.compile(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n")
_GUTENBERG_END = re.compile(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg")


def clean_book(text: str) -> str:
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return text


def assemble(facts: Sequence[str], background: Sequence[str], rng: np.random.Generator) -> str:
    """Facts scattered (in order) at random sentence boundaries of the background; one space between pieces."""
    slots = np.sort(rng.integers(0, len(background) + 1, size=len(facts)))
    pieces: list[str] = []
    fact_iter = iter(zip(slots.tolist(), facts))
    pending = next(fact_iter, None)
    for i in range(len(background) + 1):
        while pending is not None and pending[0] == i:
            pieces.append(pending[1])
            pending = next(fact_iter, None)
        if i < len(background):
            pieces.append(background[i])
    return " ".join(pieces)


class SampleSource:
    """What the builder and the generator share: choosing stories, filling a length, numbering samples."""

    name = ""

    def __init__(self, seed: int):
        self.seed = seed

    # implemented by subclasses
    def stories(self, task: str, split: str) -> list[BabiStory] | None: ...
    def random_story(self, task: str, split: str, rng: np.random.Generator, max_lines: int | None) -> BabiStory: ...
    def background(self, budget: int, rng: np.random.Generator, split: str) -> list[str]: ...
    def counts(self, pieces: Sequence[str]) -> list[int]: ...

    def rng(self, split: str, task: str, length_tokens: int, index: int, seed: int | None = None):
        return np.random.default_rng([self.seed if seed is None else seed, SPLIT_IDS[split], TASKS.index(task) + 1,
                                      length_tokens, index])

    def make_sample(self, story: BabiStory, task: str, length: str, length_tokens: int, split: str,
                    rng: np.random.Generator) -> BabilongSample:
        budget = context_budget(length_tokens)
        background: list[str] = []
        if budget > 0:
            fact_tokens = sum(self.counts(story.facts))
            if budget > fact_tokens:
                background = self.background(budget - fact_tokens, rng, split)
        context = assemble(story.facts, background, rng)
        return BabilongSample(context, story.question, story.answer, task, length, self.name)

    def eval_samples(self, task: str, length: str, length_tokens: int, n: int) -> list[BabilongSample]:
        max_lines = max_story_lines(length_tokens)
        pool = self.stories(task, "eval")
        samples = []
        if pool is not None:  # a fixed pool: n distinct stories, in a seeded order (fewer when the pool is
            # smaller: the task warns and records the count scored per cell)
            eligible = [s for s in pool if max_lines is None or s.n_lines <= max_lines]
            if not eligible:
                raise DataError(f"no {task} story fits {length} ({max_lines} lines at most)")
            order = np.random.default_rng([self.seed, 7, TASKS.index(task) + 1, length_tokens]).permutation(
                len(eligible))
            for i, j in enumerate(order[:n].tolist()):
                samples.append(self.make_sample(eligible[j], task, length, length_tokens, "eval",
                                                self.rng("eval", task, length_tokens, i)))
            return samples
        for i in range(n):
            rng = self.rng("eval", task, length_tokens, i)
            story = self.random_story(task, "eval", rng, max_lines)
            samples.append(self.make_sample(story, task, length, length_tokens, "eval", rng))
        return samples

    def train_sample(self, task: str, length: str, length_tokens: int, seed: int, index: int,
                     max_lines: int | None = None) -> BabilongSample:
        """A training sample; `max_lines` can cap the story further (so that it fits a short training context)."""
        rng = self.rng("train", task, length_tokens, index, seed=seed)
        limit = max_story_lines(length_tokens)
        if max_lines is not None:
            limit = max_lines if limit is None else min(limit, max_lines)
        story = self.random_story(task, "train", rng, limit)
        return self.make_sample(story, task, length, length_tokens, "train", rng)


class BabilongBuilder(SampleSource):
    """Samples from bAbI files (`babi_dir/en-10k/` or `babi_dir/en/`) and books (`books_dir/*.txt`)."""

    name = "builder"

    def __init__(self, babi_dir: Path, books_dir: Path, tokenizer_dir: Path, seed: int = 0):
        super().__init__(seed)
        self.babi_dir, self.books_dir = Path(babi_dir), Path(books_dir)
        self.counter = GPT2Counter(Path(tokenizer_dir))
        self.split_sentences, self.splitter_name = sentence_splitter()
        self.notes: list[str] = []
        self._files: dict[tuple[str, str], Path] = {}
        for task in TASKS:
            for split, suffix in (("train", "train"), ("eval", "test")):
                self._files[task, split] = self._find_babi(task, suffix)
        books = sorted(p for p in self.books_dir.glob("*.txt") if p.is_file())
        if not books:
            raise DataError(f"no background books (*.txt) in {self.books_dir}")
        test = [p for p in books if p.stem in PG19_TEST_IDS]
        other = [p for p in books if p.stem not in PG19_TEST_IDS]
        if not test or not other:
            self.notes.append("train and eval background come from the same books (no PG19 test/other split)")
            test = other = books
        self._book_files = {"eval": test, "train": other}
        self._books: dict[str, list[str]] = {}

    def _find_babi(self, task: str, suffix: str) -> Path:
        name = f"{BABI_FILE_STEMS[task]}_{suffix}.txt"
        for sub in ("en-10k", "en", "."):
            path = self.babi_dir / sub / name
            if path.is_file():
                if sub != "en-10k":
                    self.notes.append(f"{name}: en-10k copy missing, used {sub}/{name}")
                return path
        raise DataError(f"bAbI file {name} not found under {self.babi_dir} (looked in en-10k/, en/ and the folder)")

    @lru_cache(maxsize=None)
    def stories(self, task: str, split: str) -> list[BabiStory]:
        return read_babi(self._files[task, split])

    def random_story(self, task, split, rng, max_lines):
        pool = [s for s in self.stories(task, split) if max_lines is None or s.n_lines <= max_lines]
        if not pool and split == "train":  # a training cap shorter than every story: take the shortest ones
            shortest = min(s.n_lines for s in self.stories(task, split))
            pool = [s for s in self.stories(task, split) if s.n_lines == shortest]
        if not pool:
            raise DataError(f"no {task} story in {self._files[task, split]} has at most {max_lines} lines")
        return pool[int(rng.integers(len(pool)))]

    def books(self, split: str) -> list[str]:
        if split not in self._books:
            self._books[split] = [clean_book(p.read_text(encoding="utf-8", errors="replace"))
                                  for p in self._book_files[split]]
        return self._books[split]

    def counts(self, pieces):
        return self.counter.counts(pieces)

    def background(self, budget: int, rng: np.random.Generator, split: str) -> list[str]:
        books = self.books(split)
        chosen: list[str] = []
        total = 0
        for _ in range(100_000):
            book = books[int(rng.integers(len(books)))]
            start = int(rng.integers(len(book)))
            chunk = book[start:start + min(max(budget * 10, 5_000), 400_000)]  # the benchmark reads 10x budget chars
            sentences = [" ".join(s.split()) for s in self.split_sentences(chunk)[1:-1]]
            sentences = [s for s in sentences if s]
            for sentence, n in zip(sentences, self.counts(sentences)):
                if n < MIN_SENTENCE_TOKENS:
                    continue
                if total + n >= budget:
                    text, n = self.counter.trim(sentence, budget - total) if total + n > budget else (sentence, n)
                    if text:
                        chosen.append(text)
                    return chosen
                chosen.append(sentence)
                total += n
        raise DataError(f"could not fill {budget} tokens of background from {self.books_dir}")

    def describe(self) -> dict:
        return {
            "source": "builder",
            "babi_files": {f"{t}/{s}": str(p) for (t, s), p in self._files.items()},
            "babi_sha256": {f"{t}/{s}": sha256_file(p)[:16] for (t, s), p in self._files.items()},
            "books": {split: [p.name for p in files] for split, files in self._book_files.items()},
            "length_tokenizer": self.counter.name,
            "sentence_splitter": self.splitter_name,
            "notes": list(dict.fromkeys(self.notes)),
        }
