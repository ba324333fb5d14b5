"""Multi-query associative recall (MQAR) and its MAD variants: the synthetic recall suite.

MQAR (Arora et al., 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models", arXiv 2312.04927,
section 3 and appendix E.1): a sequence opens with `kv_pairs` key-value pairs, keys drawn without replacement
from the first half of the vocabulary and values from the second half; the rest of the sequence holds queries of
those keys, each key queried once, at gaps drawn without replacement from a power law p(i) ∝ a * i^(a-1) (a =
`power_a`, Zoology's 0.01), and random tokens everywhere else. The model is scored only where a query key has just
been read: the target there is the value the key was paired with. Its recall accuracy explains most of the
perplexity gap between attention and recurrent models (Zoology, figure 1).

MAD variants (Poli et al., 2024, "Mechanistic Design and Scaling of Hybrid Architectures", arXiv 2403.17844,
section 3.1), as options of the same task:
- noisy recall (`noise=N`): N tokens of a separate noise vocabulary are scattered between the key-value pairs;
- fuzzy recall (`key_len=K`, `value_len=L`): keys and values are runs of K and L tokens; a query gives the K key
  tokens and the model must produce all L value tokens (teacher-forced after the first; a query counts as
  recalled only when every value token is right).

Vocabulary layout (`vocab` tokens; default 64, doubled until the largest cell has kv_pairs distinct keys and
values, so the Zoology grid up to 64 pairs gets 256): noise tokens (if any) take the top `noise_vocab` ids; the rest is split in
half, keys from [1, half) and values from [half, 2 * half), exactly Zoology's layout when there is no noise.

Grid: `kv_pairs=4,8,16 seq_len=64,128` makes one cell per valid (kv_pairs, seq_len) pair (Zoology's rule: a cell
needs seq_len >= 2 * kv_pairs * (key_len + value_len), + noise); training draws each step's batch from one cell in turn and the test
set holds `test_size` sequences per cell. Metrics: `acc` (the mean over cells, each weighted equally) and
`acc/kv<N>/T<L>` per cell, in percent with binomial standard errors over queries.

Train and test never share an item: the test set is a fixed function of the task's `seed` option (not of the
run's seed, so every run is scored on the same items); any training sequence whose key-value assignment and
query order equals a test sequence's is drawn again.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.errors import HarnessError
from tasks.babilong.scoring import binomial_accuracy, mean_of_accuracies
from tasks.base import Metric, Task, reject_unknown_options

DEFAULT_VOCAB = 64  # doubled when the largest cell needs more keys (kv_pairs=64 -> 256)
TEST_SALT = 0x7E57  # test sequences come from their own random stream
VAL_SALT = 0x5EED
# Training budget at preset tiny: on the default cell (8 pairs in 64 tokens, vocabulary 64) Transformer++ tiny
# passes its induction "phase transition" at ~600 steps and titans-lmm at ~200 (lr 1e-3 and 3e-3; lr 3e-3 kept
# Transformer++ on the no-recall plateau for 1,100 steps), within minutes on 2 CPU cores; scripts/bench_recall.py
# measures every model and sweeps the learning rate (--lrs). Fresh sequences each step: 25,600 distinct items.
CPU_BUDGET = dict(steps=800, batch_size=32, lr=1e-3, warmup_steps=30, eval_every=100, eval_batches=4,
                  checkpoint_every=200)
OPTIONS = ("kv_pairs", "seq_len", "vocab", "power_a", "noise", "noise_vocab", "key_len", "value_len",
           "train_size", "test_size", "seed", "eval_batch")


def _int_list(value, what: str, minimum: int) -> list[int]:
    items = str(value).split(",") if not isinstance(value, (list, tuple)) else value
    try:
        out = [int(x) for x in items if str(x).strip()]
    except ValueError:
        raise HarnessError(f"MQAR option {what}={value!r} must be an integer >= {minimum} or a list like 4,8,16") \
            from None
    if not out or min(out) < minimum:
        raise HarnessError(f"MQAR option {what}={value!r} must be an integer >= {minimum} or a list like 4,8,16")
    if len(set(out)) != len(out):
        raise HarnessError(f"MQAR option {what}={value!r} lists a value twice")
    return out


def _one_int(value, what: str, minimum: int) -> int:
    out = _int_list(value, what, minimum)
    if len(out) != 1:
        raise HarnessError(f"MQAR option {what}={value!r} takes one integer")
    return out[0]


@dataclass(frozen=True)
class Cell:
    """One configuration of a synthetic task: `count` items (MQAR: key-value pairs) in `seq_len` tokens."""
    count: int
    seq_len: int
    prefix: str = "kv"

    @property
    def kv_pairs(self) -> int:
        return self.count

    @property
    def name(self) -> str:
        return f"{self.prefix}{self.count}/T{self.seq_len}"


def power_law_gaps(rng: np.random.Generator, n: int, slots: int, k: int, power_a: float) -> np.ndarray:
    """[n, k] distinct slot indices in [0, slots) per row, drawn without replacement with p(i) ∝ a i^(a-1)
    (Zoology's query placement: most queries come soon after the context, a long tail far from it). Gumbel top-k
    draws exactly the distribution of k successive draws without replacement."""
    logp = np.log(power_a) + (power_a - 1) * np.log(np.arange(1, slots + 1))
    scores = logp[None, :] + rng.gumbel(size=(n, slots))
    return np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < slots else np.tile(np.arange(slots), (n, 1))


def distinct_choice(rng: np.random.Generator, n: int, low: int, high: int, k: int) -> np.ndarray:
    """[n, k] distinct integers from [low, high) per row, uniformly (a random permutation's first k)."""
    return np.argsort(rng.random((n, high - low)), axis=1)[:, :k] + low


class SyntheticTask(Task):
    """What the synthetic tasks share: cells of (count, seq_len), a fixed test set per cell that training never
    draws (sequences whose signature equals a test sequence's are drawn again), training batches that take each
    cell in turn, and accuracy per cell over answers of `answer_len` tokens. Subclasses set the cells and
    `answer_len` and implement generate(rng, n, cell) -> (inputs, targets, signatures)."""

    primary_metric = "acc"
    exact_seq_len = True  # the runner trains at the task's own sequence length (the longest cell's)
    answer_len = 1

    def _setup(self, cells, train_size, test_size, seed, eval_batch):
        self.cells = cells
        self.train_size = _one_int(train_size, "train_size", 1) if train_size is not None else None
        self.test_size = _one_int(test_size, "test_size", 1)
        self.seed = _one_int(seed, "seed", 0)
        self.eval_batch = _one_int(eval_batch, "eval_batch", 1)
        self.preferred_seq_len = max(c.seq_len for c in self.cells)
        self._test: dict[Cell, tuple[torch.Tensor, torch.Tensor]] = {}
        self._test_keys: set[bytes] | None = None
        self._pools: dict[tuple[int, Cell], tuple[torch.Tensor, torch.Tensor]] = {}
        self.redrawn = 0  # training sequences drawn again because they equalled a test sequence

    def budget_defaults(self, preset: str) -> dict:
        """The CPU budget at preset tiny (flags override each field; larger presets keep their own budget)."""
        return dict(CPU_BUDGET) if preset == "tiny" else {}

    def test_set(self, cell: Cell) -> tuple[torch.Tensor, torch.Tensor]:
        if cell not in self._test:
            rng = np.random.default_rng([self.seed, TEST_SALT, cell.count, cell.seq_len])
            x, y, sigs = self.generate(rng, self.test_size, cell)
            self._test[cell] = (x, y)
            self._test_keys = (self._test_keys or set()) | set(sigs)
        return self._test[cell]

    def _held_out(self) -> set[bytes]:
        for cell in self.cells:
            self.test_set(cell)
        return self._test_keys

    def _draw(self, rng, n: int, cell: Cell):
        """n training sequences of a cell, none equal to a test sequence."""
        held_out = self._held_out()
        x, y, sigs = self.generate(rng, n, cell)
        for _ in range(1000):
            clash = [i for i, s in enumerate(sigs) if s in held_out]
            if not clash:
                return x, y
            self.redrawn += len(clash)
            x2, y2, sigs2 = self.generate(rng, len(clash), cell)
            x[clash], y[clash] = x2, y2
            for i, s in zip(clash, sigs2):
                sigs[i] = s
        raise HarnessError(f"{self.name} cannot draw training items distinct from the test set: the cell has too few "
                           "possible items; raise vocab or lower test_size")

    def _cell_at(self, step: int) -> Cell:
        return self.cells[step % len(self.cells)]

    def _batch(self, rng, step, batch_size, seq_len, seed):
        cell = self._cell_at(step)
        if self.train_size is None:
            x, y = self._draw(rng, batch_size, cell)
        else:  # a fixed pool of train_size sequences per cell, sampled with replacement
            key = (seed, cell)
            if key not in self._pools:
                self._pools[key] = self._draw(np.random.default_rng([seed, 0xD00D, cell.count, cell.seq_len]),
                                              self.train_size, cell)
            px, py = self._pools[key]
            idx = torch.from_numpy(rng.integers(0, self.train_size, size=batch_size))
            x, y = px[idx], py[idx]
        return _pad_to(x, y, seq_len)

    def train_batch(self, step, batch_size, seq_len, seed):
        return self._batch(np.random.default_rng([seed, step]), step, batch_size, seq_len, seed)

    def val_batch(self, index, batch_size, seq_len):
        # validation: fresh items (not the test set) from a fixed stream, every cell in turn
        return self._batch(np.random.default_rng([VAL_SALT, index]), index, batch_size, seq_len, VAL_SALT)

    # -- scoring ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model, *, device, seq_len, batch_size, limit=None, progress=True):
        """Accuracy per cell over its test answers (an answer is right when every one of its `answer_len`
        target tokens is the argmax)."""
        n = self.test_size if limit is None else min(self.test_size, max(1, int(limit)))
        model.eval()
        metrics: dict[str, Metric] = {}
        per_cell = []
        bar = tqdm(total=n * len(self.cells), desc=self.name, unit="seq", disable=not progress)
        for cell in self.cells:
            x, y = self.test_set(cell)
            outcomes: list[bool] = []
            for lo in range(0, n, self.eval_batch):
                xb, yb = x[lo:min(n, lo + self.eval_batch)].to(device), y[lo:min(n, lo + self.eval_batch)].to(device)
                logits, _ = model(xb)
                hit = (logits.argmax(-1) == yb) | (yb == -100)
                # an answer's tokens are consecutive targets; group them answer by answer
                mask = (yb != -100).reshape(len(yb), -1)
                outcomes += _answers_right(hit, mask, self.answer_len).tolist()
                bar.update(len(xb))
            metrics[f"acc/{cell.name}"] = Metric(*binomial_accuracy(outcomes), higher_is_better=True)
            per_cell.append(metrics[f"acc/{cell.name}"])
        bar.close()
        metrics["acc"] = Metric(*mean_of_accuracies([(m.value, m.stderr, m.n) for m in per_cell]),
                                higher_is_better=True)
        return metrics



class MQARTask(SyntheticTask):
    name = "mqar"

    def __init__(self, kv_pairs="8", seq_len="64", vocab=None, power_a=0.01, noise=0, noise_vocab=None,
                 key_len=1, value_len=1, train_size=None, test_size=1000, seed=0, eval_batch=256,
                 data_dir=None, data_file=None, preset=None, **unknown):
        reject_unknown_options(self.name, unknown, OPTIONS)
        if data_file:
            raise HarnessError("MQAR is generated; it reads no --data-file")
        self.key_len, self.value_len = _one_int(key_len, "key_len", 1), _one_int(value_len, "value_len", 1)
        self.noise = _one_int(noise, "noise", 0)
        kv_list, len_list = _int_list(kv_pairs, "kv_pairs", 1), _int_list(seq_len, "seq_len", 4)
        if vocab is None:  # 64, doubled until the largest cell has enough distinct keys and values
            vocab = DEFAULT_VOCAB
            while not self._enough_items(vocab, noise_vocab, max(kv_list)):
                vocab *= 2
        self.vocab_size = _one_int(vocab, "vocab", 8)
        self.noise_vocab = self._noise_vocab(self.vocab_size, noise_vocab)
        try:
            self.power_a = float(power_a)
        except (TypeError, ValueError):
            raise HarnessError(f"MQAR option power_a={power_a!r} must be a number in (0, 1]") from None
        if not 0 < self.power_a <= 1:
            raise HarnessError(f"MQAR option power_a={power_a!r} must be a number in (0, 1]")
        self.half = (self.vocab_size - self.noise_vocab) // 2
        self.span = self.key_len + self.value_len  # tokens of one pair, and of one query slot
        self.cells = [Cell(k, t) for t, k in itertools.product(len_list, kv_list) if self._fits(k, t)]
        if not self.cells:
            raise HarnessError(f"no MQAR cell fits: each needs seq_len >= 2 x kv_pairs x {self.span} (key_len + "
                               f"value_len) + noise ({self.noise}); got kv_pairs={kv_pairs} seq_len={seq_len}")
        self.dropped = [f"kv{k}/T{t}" for t, k in itertools.product(len_list, kv_list) if not self._fits(k, t)]
        max_keys = max(c.kv_pairs for c in self.cells)
        if not self._enough_items(self.vocab_size, noise_vocab, max_keys):
            raise HarnessError(f"MQAR vocab={self.vocab_size} has too few keys/values for kv_pairs={max_keys}; "
                               f"raise vocab")
        self.answer_len = self.value_len
        self._setup(self.cells, train_size, test_size, seed, eval_batch)

    def _noise_vocab(self, vocab: int, noise_vocab) -> int:
        if noise_vocab is not None:
            return _one_int(noise_vocab, "noise_vocab", 1)
        return max(1, vocab // 8) if self.noise else 0

    def _enough_items(self, vocab: int, noise_vocab, kv: int) -> bool:
        half = (vocab - self._noise_vocab(vocab, noise_vocab)) // 2
        return (half - 1) ** self.key_len >= kv and half ** self.value_len >= kv

    def _fits(self, kv: int, seq_len: int) -> bool:
        return 2 * kv * self.span + self.noise <= seq_len  # Zoology: 4 kv <= T at span 2

    # -- generation -------------------------------------------------------------------------------------------
    def _tokens(self, rng, n, low, high, k, length) -> np.ndarray:
        """[n, k, length] multi-token items, distinct within a row: single tokens without replacement, runs of
        tokens by redrawing rows that repeat an item (rare unless the vocabulary is tiny)."""
        if length == 1:
            return distinct_choice(rng, n, low, high, k)[:, :, None]
        items = rng.integers(low, high, size=(n, k, length))
        for _ in range(100):
            flat = items.reshape(n, k, -1)
            same = (flat[:, :, None, :] == flat[:, None, :, :]).all(-1)
            bad = (same.sum((1, 2)) > k)
            if not bad.any():
                return items
            items[bad] = rng.integers(low, high, size=(int(bad.sum()), k, length))
        raise HarnessError("MQAR could not draw distinct multi-token keys/values; raise vocab")

    def generate(self, rng: np.random.Generator, n: int, cell: Cell):
        """(inputs [n, T], targets [n, T] with -100 off the answers, content signatures [n]) for one cell."""
        kv, T, kl, vl = cell.kv_pairs, cell.seq_len, self.key_len, self.value_len
        keys = self._tokens(rng, n, 1, self.half, kv, kl)
        values = self._tokens(rng, n, self.half, 2 * self.half, kv, vl)
        pairs = np.concatenate([keys, values], axis=2).reshape(n, kv * self.span)
        if self.noise:  # noise tokens at random places between pairs (never inside one)
            noise_tok = rng.integers(self.vocab_size - self.noise_vocab, self.vocab_size, size=(n, self.noise))
            slot = np.sort(rng.integers(0, kv + 1, size=(n, self.noise)), axis=1)  # which gap each goes into
            context = np.empty((n, kv * self.span + self.noise), dtype=np.int64)
            for r in range(n):
                parts, j = [], 0
                for p in range(kv + 1):
                    m = int(np.searchsorted(slot[r], p, side="right")) - j
                    parts.append(noise_tok[r, j:j + m])
                    j += m
                    if p < kv:
                        parts.append(pairs[r, p * self.span:(p + 1) * self.span])
                context[r] = np.concatenate(parts)
        else:
            context = pairs
        c = context.shape[1]
        slots = (T - c) // self.span
        gaps = power_law_gaps(rng, n, slots, kv, self.power_a)  # query slot of pair i
        seq = np.zeros((n, T + 1), dtype=np.int64)
        seq[:, :c] = context
        labels = np.full((n, T + 1), -100, dtype=np.int64)
        rows = np.arange(n)[:, None]
        for j in range(kl):  # the key tokens of each query
            seq[rows, c + gaps * self.span + j] = keys[:, :, j]
        for j in range(vl):  # each value token is the target after the previous query token
            pos = c + gaps * self.span + kl + j
            labels[rows, pos] = values[:, :, j]
            if j < vl - 1:
                seq[rows, pos] = values[:, :, j]  # teacher forcing inside a multi-token value
        fill = seq == 0
        fill[:, :c] = False
        seq[fill] = rng.integers(0, self.vocab_size, size=int(fill.sum()))  # Zoology's random non-queries
        order = np.argsort(gaps, axis=1)  # query order, part of what makes an item
        signature = np.concatenate([pairs, np.take_along_axis(keys[:, :, 0], order, axis=1)], axis=1)
        sigs = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in signature]
        return torch.from_numpy(seq[:, :-1]), torch.from_numpy(labels[:, 1:]), sigs

    def describe(self):
        return {
            "name": self.name, "source": "generated (Zoology MQAR, arXiv 2312.04927; MAD variants, arXiv 2403.17844)",
            "cells": [c.name for c in self.cells], "cells_dropped": self.dropped,
            "vocab": self.vocab_size, "key_vocab": [1, self.half], "value_vocab": [self.half, 2 * self.half],
            "noise": self.noise, "noise_vocab": self.noise_vocab, "key_len": self.key_len,
            "value_len": self.value_len, "power_a": self.power_a,
            "train_size": self.train_size or "unbounded (fresh sequences every step)",
            "test_size_per_cell": self.test_size, "seed": self.seed,
            "no_recall_level": {c.name: round(100 / c.kv_pairs, 3) for c in self.cells},
            "guess_level": {c.name: round(100 / self.half ** self.value_len, 4) for c in self.cells},
            "accuracy_unit": "percent of queries recalled; stderr binomial over queries; acc = mean over cells",
            "train_redrawn_test_clashes": self.redrawn,
        }


class SelectiveCopyTask(SyntheticTask):
    """MAD's selective copying (arXiv 2403.17844, section 3.1): `n_tokens` content tokens scattered at random
    positions among blank tokens, then a copy marker after which the model must reproduce the content tokens in
    order (teacher-forced; each copied token is one answer). Vocabulary: blank 0, marker 1, content [2, vocab).
    Cells: `n_tokens` x `seq_len` (the model's input length; a cell needs seq_len >= 2 x n_tokens)."""

    name = "selective-copy"
    BLANK, MARK = 0, 1

    def __init__(self, n_tokens="16", seq_len="64", vocab=16, train_size=None, test_size=1000, seed=0,
                 eval_batch=256, data_dir=None, data_file=None, preset=None, **unknown):
        reject_unknown_options(self.name, unknown, ("n_tokens", "seq_len", "vocab", "train_size", "test_size",
                                                    "seed", "eval_batch"))
        if data_file:
            raise HarnessError("selective-copy is generated; it reads no --data-file")
        self.vocab_size = _one_int(vocab, "vocab", 3)
        counts, lengths = _int_list(n_tokens, "n_tokens", 1), _int_list(seq_len, "seq_len", 2)
        cells = [Cell(n, t, "n") for t, n in itertools.product(lengths, counts) if 2 * n <= t]
        if not cells:
            raise HarnessError(f"no selective-copy cell fits: each needs seq_len >= 2 x n_tokens; got "
                               f"n_tokens={n_tokens} seq_len={seq_len}")
        self.dropped = [f"n{n}/T{t}" for t, n in itertools.product(lengths, counts) if 2 * n > t]
        self._setup(cells, train_size, test_size, seed, eval_batch)

    def generate(self, rng, n: int, cell: Cell):
        k, T = cell.count, cell.seq_len
        context = T - k  # tokens before the marker
        positions = np.sort(distinct_choice(rng, n, 0, context, k), axis=1)
        content = rng.integers(2, self.vocab_size, size=(n, k))
        seq = np.full((n, T + 1), self.BLANK, dtype=np.int64)
        np.put_along_axis(seq, positions, content, axis=1)
        seq[:, context] = self.MARK
        seq[:, context + 1:] = content
        labels = np.full((n, T + 1), -100, dtype=np.int64)
        labels[:, context + 1:] = content
        signature = np.concatenate([positions, content], axis=1)
        sigs = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in signature]
        return torch.from_numpy(seq[:, :-1]), torch.from_numpy(labels[:, 1:]), sigs

    def describe(self):
        return {"name": self.name, "source": "generated (MAD selective copying, arXiv 2403.17844)",
                "cells": [c.name for c in self.cells], "cells_dropped": self.dropped, "vocab": self.vocab_size,
                "content_vocab": [2, self.vocab_size],
                "train_size": self.train_size or "unbounded (fresh sequences every step)",
                "test_size_per_cell": self.test_size, "seed": self.seed,
                "chance": f"1/{self.vocab_size - 2} per copied token",
                "accuracy_unit": "percent of copied tokens right (teacher-forced); stderr binomial; acc = mean over "
                                 "cells", "train_redrawn_test_clashes": self.redrawn}


def _answers_right(hit: torch.Tensor, mask: torch.Tensor, answer_len: int) -> torch.Tensor:
    """[answers] bool: all answer_len consecutive target positions of each answer were predicted right."""
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: each answer's tokens are adjacent
    return hit[rows, cols].reshape(-1, answer_len).all(-1)


def _pad_to(x: torch.Tensor, y: torch.Tensor, seq_len: int):
    """Training rows of a shorter cell padded on the right to the run's context (no loss on the padding)."""
    if x.shape[1] == seq_len:
        return x, y
    if x.shape[1] > seq_len:
        raise HarnessError(f"sequences of {x.shape[1]} tokens do not fit the training context of {seq_len}; "
                           f"leave --seq-len unset (the runner uses the task's longest cell)")
    pad = seq_len - x.shape[1]
    return (torch.nn.functional.pad(x, (0, pad)), torch.nn.functional.pad(y, (0, pad), value=-100))


def build(**options) -> MQARTask:
    return MQARTask(**options)


def build_selective_copy(**options) -> SelectiveCopyTask:
    return SelectiveCopyTask(**options)
