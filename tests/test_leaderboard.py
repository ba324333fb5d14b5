import csv
import json
import multiprocessing as mp

import pytest

from harness.leaderboard import rebuild
from harness.results import write_record


def record(model="m", seed=0, value=1.0, stderr=0.01, task="bytes", created="2026-11-23T00:00:00Z"):
    return {"run_id": f"{model}{seed}{value}", "created": created, "model": model, "preset": "tiny", "params": 1000,
            "task": task, "primary_metric": "bpb", "seed": seed, "optimizer": "adamw",
            "metrics": {"bpb": {"value": value, "stderr": stderr, "n": 100, "higher_is_better": False}},
            "training": {"steps": 10, "tokens_seen": 640}, "task_info": {"sha256": "abc"}, "git": {"hash": "f" * 40}}


def rows(root):
    with open(root / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


def test_seeds_aggregate_to_mean_and_seed_stderr(tmp_path):
    for seed, value in enumerate([1.0, 1.2, 1.4]):
        write_record(record(seed=seed, value=value), tmp_path)
    write_record(record(model="other", value=0.9), tmp_path)
    rebuild(tmp_path)
    by_model = {r["model"]: r for r in rows(tmp_path)}
    assert float(by_model["m"]["value"]) == pytest.approx(1.2)
    assert float(by_model["m"]["stderr"]) == pytest.approx(0.2 / 3 ** 0.5)  # std 0.2 over 3 seeds
    assert by_model["m"]["n_seeds"] == "3" and by_model["other"]["stderr"] == "0.01"
    md = (tmp_path / "leaderboard.md").read_text()
    assert "**0.9" in md  # lower bpb is best and marked


def test_filters(tmp_path):
    write_record(record(model="a"), tmp_path)
    write_record(record(model="b", task="enwik8"), tmp_path)
    rebuild(tmp_path, task="enwik8")
    assert [r["model"] for r in rows(tmp_path)] == ["b"]


def _writer(root, model, n):
    for i in range(n):
        write_record(record(model=model, seed=i, created=f"2026-11-23T00:00:{i:02d}Z"), root)
        rebuild(root)


def test_concurrent_writers_lose_no_rows(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(tmp_path, f"model{k}", 6)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    got = {(r["model"], r["n_seeds"]) for r in rows(tmp_path)}
    assert got == {("model0", "6"), ("model1", "6")}
    assert len(list((tmp_path / "runs").glob("*.json"))) == 12
    assert all(json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json"))
