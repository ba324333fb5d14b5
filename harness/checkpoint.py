"""Resumable checkpoints: model, optimizer, scheduler, step, RNG states and the loss history, written atomically
(a crash mid-write never replaces the last good checkpoint)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from harness.data import atomic_write_bytes
from harness.errors import HarnessError


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """payload: {"model": state_dict, "model_name", "preset", "vocab_size", "overrides", "tokenizer", "step",
    "optimizer", "scheduler", "rng", "history", "run_config"} (optimizer/scheduler/rng absent in final exports)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which
        raise HarnessError(f"cannot read checkpoint {path}: {exc}") from exc
