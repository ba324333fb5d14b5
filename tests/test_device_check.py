"""scripts/device_check.py --dry-run: every step of the GPU readiness check, on the CPU."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "scripts" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(folder: Path) -> dict[str, dict]:
    with open(folder / "device_check.csv") as f:
        return {row["check"]: row for row in csv.DictReader(f)}


def test_dry_run_trains_compares_paths_and_writes_the_table(tmp_path, capsys):
    check = _load_script()
    code = check.main(["--dry-run", "--models", "transformer-pp,mamba2", "--output-dir", str(tmp_path)])
    rows = _rows(tmp_path)
    assert code == 0, rows
    assert set(rows) == {"train/transformer-pp", "train/mamba2", "kernel/mamba2", "titans-memory"}
    for name in ("train/transformer-pp", "train/mamba2"):
        assert rows[name]["status"] == "ok" and float(rows[name]["tokens_per_s"]) > 0
        assert float(rows[name]["mfu_pct"]) > 0 and float(rows[name]["peak_mem_mb"]) > 0
    assert rows["kernel/mamba2"]["status"] == "ok" and float(rows["kernel/mamba2"]["max_rel_diff"]) == 0.0
    assert float(rows["titans-memory"]["max_rel_diff"]) <= check.MEMORY_ATOL
    out = capsys.readouterr().out
    assert "device check on CPU (dry run)" in out and f"table -> {tmp_path / 'device_check.csv'}" in out


def test_a_memory_that_disagrees_with_the_recurrence_fails_the_check(tmp_path, monkeypatch):
    check = _load_script()
    from models.titans import ops

    real = ops.memory_parallel

    def off_by_a_little(*args, **kwargs):
        y, state = real(*args, **kwargs)
        return y * 1.001, state
    monkeypatch.setattr(ops, "memory_parallel", off_by_a_little)
    assert check.main(["--dry-run", "--models", "bag-of-tokens", "--output-dir", str(tmp_path)]) == 1
    assert _rows(tmp_path)["titans-memory"]["status"] == "FAIL"


def test_the_shell_wrapper_runs_the_dry_run_without_installing(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), "--dry-run", "--models",
                             "bag-of-tokens", "--output-dir", str(tmp_path)], env=env, capture_output=True, check=False,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pip" not in result.stderr and _rows(tmp_path)["train/bag-of-tokens"]["status"] == "ok"
