"""Run records: one JSON file per run, written atomically under <results>/runs/.

A record holds everything needed to trust and reproduce a number: model, preset, parameter count, task and its
data checksum, metrics with standard errors, optimizer, training budget, seed, device, dtype, timings, peak
memory, package versions, and the git commit with a dirty flag.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import secrets
import subprocess
import sys
from pathlib import Path

from harness.data import atomic_write_bytes
from harness.errors import HarnessError

SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]
_PACKAGES = ("torch", "transformers", "x-transformers", "datasets", "lm-eval", "tokenizers", "numpy", "pandas",
             "mamba-ssm", "causal-conv1d", "flash-linear-attention", "memory-harness")


def results_root(output_path: str | os.PathLike | None = None) -> Path:
    """--output_path, else $HARNESS_RESULTS_DIR, else ./results."""
    return Path(output_path or os.environ.get("HARNESS_RESULTS_DIR") or "results")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def git_info() -> dict:
    """Commit hash and whether the working tree had uncommitted changes (None outside a git checkout)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"hash": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"hash": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"hash": None, "dirty": None}


def environment(device) -> dict:
    import torch

    env = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    if getattr(device, "type", str(device)) == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def atomic_write_bytes_text(path: str | os.PathLike, text: str) -> Path:
    atomic_write_bytes(path, text.encode())
    return Path(path)


def record_filename(record: dict) -> str:
    stamp = record["created"].replace(":", "").replace("-", "")
    # The random tail keeps two runs of one configuration finishing in the same second from overwriting each other.
    parts = [stamp, record["model"], record["preset"], record["task"], f"s{record['seed']}", record["run_id"][:8],
             secrets.token_hex(3)]
    return safe_filename("_".join(map(str, parts))) + ".json"


def safe_filename(name: str) -> str:
    """`name` with every character outside [A-Za-z0-9_.+-] replaced by "-" (model names like hf:org/name)."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", name)


def ensure_writable(root: str | os.PathLike) -> None:
    """Fail with one line, before any training, when run records cannot be written under `root`."""
    runs = Path(root) / "runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
        probe = runs / f".write-test-{os.getpid()}-{secrets.token_hex(3)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise HarnessError(f"results folder {root} is not writable ({exc.strerror or exc}); "
                           f"choose another --output_path") from exc


def write_record(record: dict, root: str | os.PathLike) -> Path:
    record.setdefault("schema", SCHEMA_VERSION)
    path = Path(root) / "runs" / record_filename(record)
    try:
        atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=False, default=str) + "\n").encode())
    except OSError as exc:
        raise HarnessError(f"cannot write run record {path}: {exc.strerror or exc}") from exc
    return path


# What every reader of a record relies on; a file without these is not a run record.
_RECORD_FIELDS = {"created": str, "model": str, "preset": str, "task": str, "seed": int, "metrics": dict}


def _record_problem(record) -> str | None:
    if not isinstance(record, dict):
        return f"it holds a JSON {type(record).__name__}, not an object"
    for name, kind in _RECORD_FIELDS.items():
        if not isinstance(record.get(name), kind):
            return f"field {name!r} is missing or not a {kind.__name__}"
    for metric, value in record["metrics"].items():
        if not isinstance(value, dict) or not isinstance(value.get("value"), (int, float)):
            return f"metric {metric!r} has no numeric value"
    return None


def load_records(root: str | os.PathLike) -> list[tuple[Path, dict]]:
    """All valid run records under <root>/runs; a file that is unreadable, not JSON or not a record is skipped
    with a one-line warning naming it (one bad file must not stop the leaderboard, evals or sweeps)."""
    runs = Path(root) / "runs"
    out = []
    for path in sorted(runs.glob("*.json")):
        try:
            record = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: bad UTF-8 or bad JSON
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        else:
            problem = _record_problem(record)
            if problem is None:
                out.append((path, record))
                continue
        print(f"warning: skipping run record {path}: {problem}", file=sys.stderr)
    return out
