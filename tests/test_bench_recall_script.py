"""scripts/bench_recall.py runs end to end at a tiny budget and tabulates what its runs recorded (the accuracy and
speed figures themselves are not tested)."""

import json
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_recall.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, check=False)


def test_needle_table_has_lengths_in_token_order_and_the_recorded_peak_memory(tmp_path):
    out = _run("--task", "needle", "--models", "titans-lmm", "--seeds", "0", "--steps", "2", "--task-arg",
               "lengths=1k,256", "--task-arg", "samples=2", "--task-arg", "train_length=64", "--output_path",
               str(tmp_path))
    assert out.returncode == 0, out.stderr
    head = next(line for line in out.stdout.splitlines() if line.startswith("| model"))
    assert [c.strip() for c in head.strip("|").split("|")] == [
        "model", "params", "lr", "seeds", "256", "1k", "peak MB 256", "peak MB 1k", "train s", "wall s"]
    row = next(line for line in out.stdout.splitlines() if line.startswith("| titans-lmm"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    peaks = record["task_info"]["evaluation"]["peak_memory_mb"]
    assert cells[6:8] == [f"{peaks['256']:,.0f}", f"{peaks['1k']:,.0f}"]
    assert cells[4] == f"{record['metrics']['acc/256']['value']:.1f} ± {record['metrics']['acc/256']['stderr']:.1f}"
    assert re.search(r"bench wall time \d+ s", out.stdout)


def test_mqar_grid_table_orders_cells_and_states_the_no_recall_level(tmp_path):
    out = _run("--models", "bag-of-tokens", "--seeds", "0", "--steps", "2", "--task-arg", "kv_pairs=8,4",
               "--task-arg", "seq_len=64", "--task-arg", "test_size=32", "--output_path", str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    head = next(line for line in lines if line.startswith("| model"))
    assert [c.strip() for c in head.strip("|").split("|")][4:6] == ["kv4/T64", "kv8/T64"]
    level = next(line for line in lines if line.startswith("| no recall"))
    assert [c.strip() for c in level.strip("|").split("|")] == ["no recall (1/kv)", "", "", "", "25.0", "12.5", "", ""]
    assert any(line.startswith("| bag-of-tokens") for line in lines)
