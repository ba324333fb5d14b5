"""Resumable checkpoints: model, optimizer, scheduler, step, RNG states and the loss history, written atomically
(a crash mid-write never replaces the last good checkpoint)."""

from __future__ import annotations

import io
import random
import re
from pathlib import Path

import numpy as np
import torch

from harness.data import atomic_write_bytes
from harness.errors import HarnessError


def rng_state() -> dict:
    """Every generator's state as tensors, lists and numbers only, which weights_only=True loads."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": {"version": version, "state": list(words), "gauss_next": gauss},
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """payload: {"model": state_dict, "model_name", "preset", "vocab_size", "overrides", "tokenizer",
    "tokenizer_sha256", "seq_len" (the effective training context), "step", "optimizer", "scheduler", "rng",
    "history", "run_config"} (optimizer/scheduler/rng absent in final exports); plain data only, see
    load_checkpoint."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """Load with weights_only=True: a checkpoint is data (tensors, lists, numbers), never code, so a crafted
    file passed to --checkpoint / --resume or met by a sweep cannot run anything."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated, foreign or crafted file: say which, in one line
        raise HarnessError(f"cannot read checkpoint {path}: {load_failure(exc)}") from exc
    if not isinstance(payload, dict):
        raise HarnessError(f"cannot read checkpoint {path}: it holds a {type(payload).__name__}, not a dict")
    return payload


def load_failure(exc: Exception) -> str:
    """One line for a failed weights-only load: the global it refused (a class, a function), or the error."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if "Weights only load failed" in text:
        what = f" ({found.group(1)})" if found else ""
        return (f"it holds a Python object{what}, and only tensors and plain data are loaded "
                "(weights_only=True); re-create a checkpoint written by an older harness")
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__
