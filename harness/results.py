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
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", "_".join(map(str, parts))) + ".json"


def write_record(record: dict, root: str | os.PathLike) -> Path:
    record.setdefault("schema", SCHEMA_VERSION)
    path = Path(root) / "runs" / record_filename(record)
    atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=False, default=str) + "\n").encode())
    return path


def load_records(root: str | os.PathLike) -> list[tuple[Path, dict]]:
    """All readable run records under <root>/runs (unreadable files are reported, not silently dropped)."""
    runs = Path(root) / "runs"
    out = []
    for path in sorted(runs.glob("*.json")):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"warning: skipping unreadable run record {path}: {exc}", file=sys.stderr)
    return out
