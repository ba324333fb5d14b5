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


def test_configurations_are_not_averaged_and_a_seed_counts_once(tmp_path):
    """Issue 16: runs at lr 3e-3 and 1e-5 were one row, and a --resume of a finished run added its seed
    again."""
    def at(lr, value, created, steps=10):
        rec = record(value=value, created=created)
        budget = {"steps": steps, "batch_size": 4, "seq_len": 16, "lr": lr, "warmup_steps": 1}
        rec["training"] = {"steps": steps, "tokens_seen": 640, "lr": lr, "budget": budget}
        return rec  # no config_id: records written before it existed derive it from their fields

    write_record(at(3e-3, 7.0, "2026-11-23T00:00:00Z"), tmp_path)
    write_record(at(3e-3, 7.0, "2026-11-23T00:01:00Z"), tmp_path)  # seed 0 again (a resumed finished run)
    write_record(at(1e-5, 7.8, "2026-11-23T00:02:00Z"), tmp_path)
    rebuild(tmp_path)
    got = sorted((float(r["lr"]), r["n_seeds"], r["seeds"], float(r["value"])) for r in rows(tmp_path))
    assert got == [(1e-5, "1", "0", 7.8), (3e-3, "1", "0", 7.0)]
    assert len({r["config_id"] for r in rows(tmp_path)}) == 2
    md = (tmp_path / "leaderboard.md").read_text()
    assert "7 ± 0.01" in md and "7.8 ± 0.01" in md and "(n=" not in md

    write_record(at(3e-3, 6.5, "2026-11-23T00:03:00Z", steps=20), tmp_path)  # differs only in steps
    rebuild(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "6.5 ± 0.01" in md and "7 ± 0.01" in md and "7.8 ± 0.01" in md  # no group disappears


def test_newest_record_of_a_seed_wins_and_stored_config_id_groups(tmp_path):
    old = dict(record(value=2.0, created="2026-11-23T00:00:00Z"), config_id="cfgA")
    new = dict(record(value=1.0, created="2026-11-24T00:00:00Z"), config_id="cfgA")
    other = dict(record(seed=1, value=3.0), config_id="cfgA")
    for rec in (new, old, other):
        write_record(rec, tmp_path)
    rebuild(tmp_path)
    (row,) = rows(tmp_path)
    assert row["n_seeds"] == "2" and float(row["value"]) == pytest.approx(2.0) and row["config_id"] == "cfgA"


def test_bad_record_files_are_skipped_with_a_warning(tmp_path, capsys):
    write_record(record(), tmp_path)
    runs = tmp_path / "runs"
    (runs / "empty.json").write_text("{}")
    (runs / "list.json").write_text("[1, 2]")
    (runs / "bytes.json").write_bytes(b"\xff\xfe\x00garbage")
    no_created = record(model="x")
    del no_created["created"]
    (runs / "nocreated.json").write_text(json.dumps(no_created))
    rebuild(tmp_path)
    assert [r["model"] for r in rows(tmp_path)] == ["m"]
    err = capsys.readouterr().err
    for name in ("empty.json", "list.json", "bytes.json", "nocreated.json"):
        hits = [line for line in err.splitlines() if name in line and line.startswith("warning: skipping")]
        assert len(hits) == 1, err
