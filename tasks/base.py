"""The task interface the runner drives.

A task knows its data (where to find it, how to verify it, how to split it), gives the runner training and
validation batches, and scores a model on its test split, returning metrics with standard errors.

Batches are a pure function of (seed, step): a resumed run sees exactly the batches an uninterrupted run would,
and two architectures trained with the same seed see the same data in the same order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from harness.errors import DataError, HarnessError


@dataclass(frozen=True)
class Metric:
    value: float
    stderr: float | None  # standard error of `value` (None where it cannot be estimated)
    n: int  # number of units the value averages over (bytes, tokens, samples)
    higher_is_better: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class Task:
    """Base class. Subclasses set `name`, `vocab_size` and `primary_metric` and implement the methods below."""

    name: ClassVar[str] = ""
    primary_metric: ClassVar[str] = ""
    vocab_size: int = 0

    def train_batch(self, step: int, batch_size: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs [B, T], targets [B, T]) for one optimizer step; targets use -100 where no loss is taken."""
        raise NotImplementedError

    def val_batch(self, index: int, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed validation batch (the same for every run), for evaluation during training."""
        raise NotImplementedError

    def evaluate(self, model, *, device: torch.device, seq_len: int, batch_size: int, limit: int | None = None,
                 progress: bool = True) -> dict[str, Metric]:
        """Score `model` on the test split; `limit` caps the amount scored (tokens or samples, task-defined)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Facts about the data for the run record: source, checksums, split sizes, caveats."""
        return {"name": self.name}


class StreamTask(Task):
    """A language-modelling task over one token stream per split: training and validation batches are random
    windows of the "train" and "valid" streams, seeded by (seed, step) and by a fixed seed with the batch index."""

    def token_stream(self, split: str) -> tuple[np.ndarray, str]:
        """(tokens of `split`, how to name that stream in an error)."""
        raise NotImplementedError

    def _windows(self, split: str, rng: np.random.Generator, batch_size: int, seq_len: int):
        stream, what = self.token_stream(split)
        return random_windows(stream, rng, batch_size, seq_len, what)

    def train_batch(self, step, batch_size, seq_len, seed):
        return self._windows("train", np.random.default_rng([seed, step]), batch_size, seq_len)

    def val_batch(self, index, batch_size, seq_len):
        return self._windows("valid", np.random.default_rng([0x5EED, index]), batch_size, seq_len)


def reject_unknown_options(task: str, unknown: dict, accepted) -> None:
    """One-line error for task options a task does not take (never silently ignored)."""
    if unknown:
        raise HarnessError(f"unknown option(s) {', '.join(sorted(unknown))} for task {task}; accepted: "
                           f"{', '.join(accepted) or 'none'}")


def random_windows(stream: np.ndarray, rng: np.random.Generator, batch_size: int, seq_len: int, what: str):
    """(inputs, targets) of `batch_size` windows of seq_len + 1 tokens at random offsets of a token stream: the
    batch sampler of every language-modelling task (seeded by the caller with (seed, step) or a fixed index)."""
    if len(stream) < seq_len + 2:
        raise DataError(f"{what} has {len(stream):,} tokens, fewer than one window of {seq_len + 1}")
    starts = rng.integers(0, len(stream) - seq_len - 1, size=batch_size)
    x = torch.from_numpy(np.stack([stream[s:s + seq_len + 1] for s in starts]).astype(np.int64))
    return x[:, :-1], x[:, 1:]


def int_option(value, what: str, minimum: int, owner: str) -> int:
    """A task option that must be an integer >= minimum (given as text on the command line), or a one-line error
    naming the option, e.g. "BABILong option samples='x' must be an integer >= 1"."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        raise HarnessError(f"{owner} option {what}={value!r} must be an integer >= {minimum}")
    return number
