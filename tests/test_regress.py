"""`harness regress`: the reference is written from several seeds, a rerun of seed 0 reproduces exactly and
passes, a moved score fails naming the metric, and a check with nothing to compare (no reference, an empty
one, a case without a row) fails."""

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
    assert rows[0]["data"].startswith("bytes:corpus.txt sha256=") and rows[0]["config_id"]

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
    assert regress.main("unit", reference=str(ref), log=lines.append) == 1  # a case without a row fails
    assert any(line.startswith("UNCHECKED") and "transformer-pp bytes bpb" in line for line in lines)
    assert any(line.startswith("stale") and "gone-model" in line for line in lines)


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
    assert {c.model for c in cases if c.task == "mqar"} == set(MODELS.names())
    # the models that learn the MQAR cell train long enough to learn it; the others keep the short budget
    budgets = {c.model: {k: c.run_args[k] for k in ("steps", "lr")} for c in cases if c.task == "mqar"}
    for model, budget in budgets.items():
        expected = regress.CI_MQAR_LEARNERS.get(model, regress.CI_MQAR_BUDGET)
        assert budget == {"steps": expected["steps"], "lr": expected["lr"]}, model
    assert set(regress.CI_MQAR_LEARNERS) <= set(MODELS.names())
    assert all("model_args" not in c.run_args for c in cases)
    assert all(c.run_args["steps"] == 60 for c in cases if c.task == "bytes")
    assert any("not enwik8" in n for n in notes)
    # BABILong rows only for the models that learn it at the CI budget (others would sit at chance and never fail)
    assert {c.model for c in cases if c.task == "babilong"} == set(regress.CI_BABILONG_MODELS) & set(MODELS.names())
    assert "mqar" in TASKS


def test_missing_or_empty_reference_fails_unless_updating(tmp_path, monkeypatch, capsys):
    """Issue 16: a header-only reference printed "0 passed, 0 failed, N unchecked" and exited 0."""
    record = {"model": "m", "task": "bytes", "primary_metric": "bpb",
              "task_info": {"source": "x", "sha256": "ab"},
              "metrics": {"bpb": {"value": 2.0, "stderr": 0.1, "n": 100, "higher_is_better": False}}}
    monkeypatch.setitem(regress.SUITES, "stub", lambda models, data_file: ([Case("m", "bytes")], []))
    monkeypatch.setattr(regress, "run_cases",
                        lambda cases, seeds, *a: {("m", "bytes"): {s: record for s in seeds}})
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(regress.REFERENCE_COLUMNS) + "\n")
    for ref in (empty, tmp_path / "missing.csv"):
        assert regress.main("stub", reference=str(ref), models=["tpp"], log=lambda line: None) == 1
        assert "no reference rows" in capsys.readouterr().err
    assert regress.main("stub", update=True, seeds="2", reference=str(empty), models=["tpp"],
                        log=lambda line: None) == 0
    assert regress.main("stub", reference=str(empty), models=["tpp"], log=lambda line: None) == 0


def test_reference_of_another_configuration_fails(tmp_path, monkeypatch):
    record = {"model": "m", "task": "bytes", "primary_metric": "bpb",
              "task_info": {"source": "x", "sha256": "ab"}, "config_id": "now",
              "metrics": {"bpb": {"value": 2.0, "stderr": 0.1, "n": 100}}}
    row = dict(regress.reference_rows({("m", "bytes"): {0: record, 1: record}})[0], config_id="before")
    result = regress.compare({("m", "bytes"): {0: record}}, [row])
    assert len(result.failures) == 1 and "configuration differs" in result.failures[0]
    legacy = {k: v for k, v in row.items() if k != "config_id"}  # rows from before config_id: still compared
    assert regress.compare({("m", "bytes"): {0: record}}, [legacy]).passed


# A deliberately broken mechanism under the same name and configuration identity. Transformer++ and titans-lmm
# learn the CI cell (their rows sit near 100 %), so breaking them must cost the recall; titans-mag sits at the
# no-recall level, so breaking it must cost the token mixing that copying values needs.
BROKEN = {
    # the memory's inner learning rate forced to 0: the memory never learns within the sequence, and the short conv
    # alone cannot carry a key to its query
    "titans-lmm": ("models.titans.presets", "build_lmm", {"theta_max": 0.0}),
    # attention sees one token: recall must come through the memory, which cannot learn the cell at this budget
    "titans-mag": ("models.titans.presets", "build_mag", {"window": 1}),
    "transformer-pp": ("baselines.transformer_pp", None, {"attn_window": 0}),  # attention sees one token
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(BROKEN))
def test_ci_suite_fails_a_deliberately_broken_model(model, monkeypatch, shared_data):
    """The committed reference's recall rows catch a model whose mixing is broken: its MQAR score drops far outside
    the seed tolerance, from near 100 % (the learned rows) or from the no-recall level towards the random-guess
    level (the healthy model passes the same rows in CI)."""
    import importlib
    from dataclasses import replace

    module_name, builder, change = BROKEN[model]
    module = importlib.import_module(module_name)
    table = getattr(module, builder).FLAVORS if builder else module.FLAVORS
    monkeypatch.setitem(table, "tiny", replace(table["tiny"], **change))
    lines = []
    assert regress.main("ci", models=[model], tasks=["mqar"], data_file=str(shared_data / "pg19"),
                        log=lines.append) == 1
    failed = [line for line in lines if line.startswith("FAILED") and f"{model} mqar acc" in line]
    assert failed and all("diff -" in line for line in failed), lines  # failed on the score, not the config


@pytest.mark.slow
def test_the_babilong_row_fails_a_gated_deltanet_without_its_memory(monkeypatch, shared_data):
    """The BABILong row (qa1 at 0k, where Gated DeltaNet answers every sample) catches the model with its delta rule
    replaced by a pass-through of the values: no token reaches the question from further than the short conv."""
    from baselines.gated_deltanet import layer

    def pass_through(q, k, v, *args, **kwargs):  # the values out, an empty state [B, H, K, V]
        return v, v.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])

    monkeypatch.setattr(layer, "chunk_gated_delta_rule", pass_through)
    monkeypatch.setenv("HARNESS_DATA_DIR", str(shared_data))  # the reference's samples: built from bAbI + PG19
    lines = []
    assert regress.main("ci", models=["gated-deltanet"], tasks=["babilong"], data_file=str(shared_data / "pg19"),
                        log=lines.append) == 1
    failed = [line for line in lines if line.startswith("FAILED") and "gated-deltanet babilong acc" in line]
    assert failed and all("diff -" in line for line in failed), lines


def test_a_row_inside_a_random_guessers_range_is_not_informative():
    """A lower bound just above the guess level is not enough: on 1,024 items a random guesser at 3.125 % scores
    up to 3.125 + 1.96 * 100 * sqrt(0.03125 * 0.96875 / 1024) = 4.19 % 95 % of the time, so a row whose lower
    bound is 3.6 % could pass a broken model; one at 4.3 % fails it. Fractions are handled like percentages."""
    def record(n, unit="percent", guess=3.125):
        return {"task_info": {"guess_level": {"kv4/T32": guess}, "accuracy_unit": unit},
                "metrics": {"acc": {"value": 0.0, "n": n, "higher_is_better": True}}}
    assert regress.guess_bound(record(1024), "acc", 3.125) == pytest.approx(4.1905, abs=1e-3)
    assert regress.informative(record(1024), "acc", 8.3, 4.7).startswith("no: lower bound 3.6 <= 4.19")
    assert regress.informative(record(1024), "acc", 9.0, 4.7) == "yes"
    assert regress.informative(record(None), "acc", 8.3, 4.7) == "yes"  # n unknown: the level itself
    frac = record(1024, unit="fraction", guess=0.03125)
    assert regress.guess_bound(frac, "acc", 0.03125) == pytest.approx(0.041905, abs=1e-5)


def test_rows_that_cannot_fail_a_broken_model_are_marked_and_skipped(tmp_path, monkeypatch):
    """An accuracy row whose tolerance reaches down to the random-guess level is marked not informative by
    --update, and the check skips that case with a printed line rather than pretending to check it."""
    def record(value):
        return {"model": "m", "task": "mqar", "primary_metric": "acc", "task_args": {},
                "task_info": {"source": "generated", "guess_level": {"kv4/T32": 3.125},
                              "accuracy_unit": "percent"},
                "metrics": {"acc": {"value": value, "stderr": 1.0, "n": 1024, "higher_is_better": True}}}
    learns = {0: record(60.0), 1: record(62.0), 2: record(61.0)}
    guesses = {0: record(3.0), 1: record(9.0), 2: record(2.5)}
    rows = reference_rows({("m", "mqar"): learns, ("g", "mqar"): guesses})
    marks = {r["model"]: r["informative"] for r in rows}
    assert marks["m"] == "yes" and marks["g"].startswith("no: lower bound")
    assert regress.uninformative_cases(rows) == {("g", "mqar")}

    ran = []
    monkeypatch.setitem(regress.SUITES, "two", lambda models, data_file: (
        [Case("m", "mqar"), Case("g", "mqar")], []))
    monkeypatch.setattr(regress, "run_cases", lambda cases, seeds, *a: ran.extend(c.model for c in cases) or
                        {(c.model, c.task): {0: learns[0]} for c in cases})
    ref = tmp_path / "ref.csv"
    regress.write_reference(ref, rows)
    lines = []
    assert regress.main("two", reference=str(ref), models=["tpp"], log=lines.append) == 0
    assert ran == ["m"] and any(line.startswith("skipped   g mqar") for line in lines)
    assert not any(line.startswith("stale") for line in lines)  # a skipped case is said once, not as stale
