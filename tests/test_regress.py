"""`harness regress`: the reference is written from several seeds, a rerun of seed 0 reproduces exactly and
passes, a moved score fails naming the metric, and a case without a reference is an UNCHECKED warning."""

import csv

import pytest

from harness import regress
from harness.regress import TOLERANCE_SIGMAS, Case, reference_rows

TINY = dict(preset="tiny", steps=3, batch_size=4, seq_len=16, limit=256, eval_every=0, checkpoint_every=0,
            model_args={"depth": "1", "dim": "32", "heads": "2"})


@pytest.fixture
def unit_suite(monkeypatch, small_text):
    def suite(models, data_file):
        return [Case("transformer-pp", "bytes", dict(TINY, data_file=str(small_text)))], ["unit suite"]
    monkeypatch.setitem(regress.SUITES, "unit", suite)


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_update_check_and_failures(tmp_path, unit_suite):
    ref = tmp_path / "ci.csv"
    lines = []
    assert regress.main("unit", update=True, seeds="2", reference=str(ref), log=lines.append) == 0
    rows = read(ref)
    assert [(r["model"], r["task"], r["metric"], r["seeds"]) for r in rows] == [("transformer-pp", "bytes", "bpb", "0 1")]
    assert float(rows[0]["tolerance"]) >= TOLERANCE_SIGMAS * float(rows[0]["spread"]) * 0.99
    assert rows[0]["data"].startswith("bytes:corpus.txt sha256=")

    lines.clear()
    assert regress.main("unit", reference=str(ref), log=lines.append) == 0
    assert any(line.startswith("ok ") and "(diff +0," in line for line in lines), lines  # seed 0 reproduces exactly

    moved = dict(rows[0], value=str(float(rows[0]["value"]) + 2 * float(rows[0]["tolerance"])))
    regress.write_reference(ref, [moved])
    lines.clear()
    assert regress.main("unit", reference=str(ref), log=lines.append) == 1
    assert any(line.startswith("FAILED") and "transformer-pp bytes bpb" in line for line in lines), lines

    regress.write_reference(ref, [dict(rows[0], model="gone-model")])
    lines.clear()
    assert regress.main("unit", reference=str(ref), log=lines.append) == 0
    assert any(line.startswith("UNCHECKED") and "transformer-pp bytes bpb" in line for line in lines)
    assert any(line.startswith("stale") and "gone-model" in line for line in lines)
    assert regress.main("unit", reference=str(ref), strict=True, log=lines.append) == 1


def test_tolerance_is_four_sigma_with_a_floor():
    def rec(value, n=100, task="bytes", primary="bpb", hib=False):
        return {"model": "m", "task": task, "primary_metric": primary, "task_info": {"source": "x", "sha256": "ab"},
                "metrics": {primary: {"value": value, "stderr": 0.1, "n": n, "higher_is_better": hib}}}
    rows = reference_rows({("m", "bytes"): {0: rec(2.0), 1: rec(2.2), 2: rec(2.1)}})
    assert float(rows[0]["tolerance"]) == pytest.approx(4 * 0.1, rel=1e-3) and rows[0]["value"] == "2.0"
    same = {("m", "babilong"): {s: rec(50.0, n=40, task="babilong", primary="acc/mean", hib=True) for s in range(3)}}
    assert float(reference_rows(same)[0]["tolerance"]) == pytest.approx(100 / 40)  # one sample's worth
    with pytest.raises(Exception, match="at least 2 seeds"):
        reference_rows({("m", "bytes"): {0: rec(2.0)}})


def test_ci_suite_covers_every_registered_model(tmp_path):
    from harness.registry import MODELS, TASKS

    cases, notes = regress.ci_suite(MODELS.names(), str(tmp_path))
    assert {c.model for c in cases if c.task == "bytes"} == set(MODELS.names())
    assert all(c.run_args["steps"] == 60 and "model_args" not in c.run_args for c in cases)
    assert any("not enwik8" in n for n in notes)
    assert ("babilong" in TASKS) == any(c.task == "babilong" for c in cases)
