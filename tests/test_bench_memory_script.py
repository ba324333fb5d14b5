"""scripts/bench_memory.py runs end to end at a tiny budget (the speed figures themselves are not tested)."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_memory.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, check=False)


def test_model_pair_prints_a_measured_ratio():
    out = _run("--only", "models", "--rounds", "1", "--steps", "1")
    assert out.returncode == 0, out.stderr
    assert "ratio titans-mac tiny / transformer-pp tiny = " in out.stdout
    rates = re.findall(r"^\s+(titans-mac tiny|transformer-pp tiny)\s+median\s+([\d.]+) tokens/s", out.stdout, re.MULTILINE)
    assert [name for name, _ in rates] == ["titans-mac tiny", "transformer-pp tiny"]
    assert all(float(rate) > 0 for _, rate in rates)


@pytest.mark.skipif(importlib.util.find_spec("titans_pytorch") is not None,
                    reason="titans-pytorch is installed here: pair 1 would be measured")
def test_memory_pair_without_titans_pytorch_says_not_measured():
    out = _run("--only", "memory", "--rounds", "1", "--steps", "1")
    assert out.returncode == 0, out.stderr
    assert "not measured" in out.stdout and "ratio" not in out.stdout


@pytest.mark.parametrize("chunks", ["16,x", "0", "48"])
def test_bad_chunks_are_a_one_line_usage_error(chunks):
    out = _run("--only", "memory", "--chunks", chunks)
    assert out.returncode == 2
    assert "--chunks" in out.stderr.strip().splitlines()[-1] or "chunk size" in out.stderr.strip().splitlines()[-1]
