"""CI regression scores: `harness regress --suite ci` reruns a fixed suite and compares each score with the
reference in `results/reference/<suite>.csv`; `harness regress --update --seeds 3` rewrites the reference.

The `ci` suite (sized to fit 15 minutes on 2 CPU cores with about a dozen models):
- every model registered when it runs, at preset `tiny` (no model overrides), 60 steps x 8 x 64 bytes, bits per
  byte on the first 8,192 test bytes of a byte-level text. enwik8 cannot be fetched offline, so the text is the
  task `bytes` on the catalog's `pg19` (20 Project Gutenberg books, found in $HARNESS_DATA_DIR or the cache:
  `harness data fetch pg19`; CI points $HARNESS_DATA_DIR at ../shared/data) or `--data-file`: this is NOT
  enwik8, and the reference's `data` column names what was used (source and sha256) so that a run on other data
  fails loudly instead of being compared;
- MQAR recall (task `mqar`, CI_MQAR: 4 key-value pairs in 32 tokens, vocabulary 64) for every model, trained
  CI_MQAR_BUDGET (150 steps x 32): the rows sit above the random-guess level (1/32), most at the no-recall
  level (25 %), so a model whose memory or attention breaks fails them. The models that learn the cell at a CI
  budget (CI_MQAR_LEARNERS: Transformer++ at lr 1e-3, titans-lmm at 3e-3) train 600 steps instead: their rows
  sit near 100 %, so a model that still copies values but stops recalling fails too;
- BABILong qa1 at 0k (CI_BABILONG, 300 steps x 32) for the models that learn it at that budget
  (CI_BABILONG_MODELS: Gated DeltaNet); the other models' rows would sit near chance and could not fail.

Compared metrics: each case's primary metric and its per-length breakdown (`acc/mean` and `acc/mean/<len>`).

Reference columns: model, task, metric, value, tolerance, seeds, spread, data, created, config_id.
- value: the seed-0 score. The check reruns seed 0 only: on one machine a seed reproduces bit for bit, so any
  difference there comes from a code (or library / hardware) change, never from sampling.
- spread: the seed-to-seed standard deviation s (ddof 1) over the `--update` seeds.
- tolerance = max(4 s, floor). A change that only reorders floating-point work acts like a fresh seed, so the
  new seed-0 score differs from the old by about N(0, 2 sigma^2); a bound of 4 s then fails such a harmless
  change with probability ~0.5% (when s ~ sigma) while any shift bigger than ~4 seed-sigmas is caught. The floor
  only matters where the seeds happen to agree exactly (s = 0): 1e-4 for continuous scores (the size of
  cross-machine float drift for these runs), and one sample's worth (100/n percent) for accuracies.

Rows that cannot fail a broken model are marked so: `informative` is "no: ..." when the row's lower bound
(value - tolerance) does not clear what guessing at random scores on the row's n items 95 % of the time (the
task's task_info["guess_level"], e.g. MQAR's 1/values, plus 1.96 binomial standard errors), which is where a
model with broken mixing lands. `--update` prints them; the check skips such a case with a printed line
instead of running a comparison that cannot fail (a later `--update` re-measures it).

A check with nothing to check against fails: a missing or empty reference, or a suite case (a newly
registered model, the babilong task appearing) with no reference row; add its rows with `--update` (which may
run only some models: `--models`). A reference row whose data or configuration identity (config_id,
harness/identity.py: budget, settings, data) differs from the current run's, or a metric that disappeared,
fails too. Rows written before config_id existed are compared without that check.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness import data_catalog, identity
from harness.data import atomic_write_bytes
from harness.errors import HarnessError
from harness.registry import MODELS, TASKS
from harness.results import REPO_ROOT, utc_now

REFERENCE_COLUMNS = ["model", "task", "metric", "value", "tolerance", "seeds", "spread", "data", "created",
                     "config_id", "informative"]
OPTIONAL_COLUMNS = {"config_id", "informative"}  # absent from references written before they existed
SUITE_THREADS = 2  # fixed, because CPU matmul results may depend on the thread count
TOLERANCE_SIGMAS = 4.0
CONTINUOUS_FLOOR = 1e-4


@dataclass
class Case:
    """One suite run (without its seed)."""
    model: str
    task: str
    run_args: dict = field(default_factory=dict)  # RunConfig fields: budget, data, task_args

    def config(self, seed: int, device: str, output_path: str):
        from harness.runner import RunConfig

        return RunConfig(model=self.model, task=self.task, seed=seed, device=device, output_path=output_path,
                         update_leaderboard=False, progress=False, **self.run_args)


CI_BUDGET = dict(preset="tiny", steps=60, batch_size=8, seq_len=64, eval_every=0, checkpoint_every=0)
CI_BYTES_LIMIT = 8192
# Recall rows that a broken model fails: a small MQAR cell (4 pairs in 32 tokens, vocabulary 64) on a short
# budget. Most models sit at the no-recall level (25 %), which still needs token mixing: a model whose attention or
# memory is broken falls to the random-guess level (1/32 values), far outside the row's tolerance; the learners
# below sit near 100 % (tests/test_regress.py breaks three models on purpose and sees them fail).
CI_MQAR = dict(kv_pairs="4", seq_len="32", test_size="256")
CI_MQAR_BUDGET = dict(preset="tiny", steps=150, batch_size=32, lr=3e-3, eval_every=0, checkpoint_every=0)
# Learned recall rows: on the same cell these models pass the recall transition within ~400 steps, each at its own
# best rate as Zoology compares them (seed 0, one thread: Transformer++ at lr 1e-3 val accuracy 26 / 25 / 39 / 95 %
# at steps 100-400, test 99.6 %; titans-lmm at lr 3e-3 13 / 73 / 94 / 99 %, test 99.6 %; titans-lmm at 1e-3 reaches
# only 84 % by step 600), so 600 steps leave them near 100 %, far above the no-recall level (25 %).
CI_MQAR_LEARNERS = {"transformer-pp": dict(CI_MQAR_BUDGET, steps=600, lr=1e-3),
                    "titans-lmm": dict(CI_MQAR_BUDGET, steps=600, lr=3e-3)}
# BABILong rows only for models that learn it at a CI budget (lower bound far above the 1-in-6 guess): qa1 at 0k
# with movement phrases as single tokens, where Gated DeltaNet tiny answers ~all 100 samples after 300 steps
# (the others stay near the "person's places" plateau and their rows could not fail a broken model)
CI_BABILONG_MODELS = ("gated-deltanet",)
CI_BABILONG = dict(tasks="qa1", lengths="0k", samples="100", tokenizer="phrases", curve_samples="0")
CI_BABILONG_BUDGET = dict(preset="tiny", steps=300, batch_size=32, lr=1e-3, eval_every=0, checkpoint_every=0)


def ci_suite(models: list[str], data_file: str | None) -> tuple[list[Case], list[str]]:
    notes = []
    data = data_catalog.default_text(data_file)  # --data-file, else pg19 from $HARNESS_DATA_DIR or the cache
    if not data.exists():
        raise HarnessError(f"regression data {data} does not exist; pass --data-file (a text file or folder of "
                           f".txt files; enwik8 is not available offline)")
    notes.append(f"byte-level cases: task 'bytes' on {data.resolve()} (not enwik8: enwik8 is not available "
                 f"offline)")
    cases = [Case(m, "bytes", dict(CI_BUDGET, limit=CI_BYTES_LIMIT, data_file=str(data))) for m in models]
    cases += [Case(m, "mqar", dict(CI_MQAR_LEARNERS.get(m, CI_MQAR_BUDGET), task_args=dict(CI_MQAR)))
              for m in models]
    learned = ", ".join(f"{m} {b['steps']} steps at lr {b['lr']:g}"
                        for m, b in CI_MQAR_LEARNERS.items() if m in models)
    notes.append(f"mqar cases: {CI_MQAR}, {CI_MQAR_BUDGET['steps']} steps x {CI_MQAR_BUDGET['batch_size']} at lr "
                 f"{CI_MQAR_BUDGET['lr']:g}" + (f"; learned rows: {learned}" if learned else ""))
    learners = [m for m in models if m in CI_BABILONG_MODELS]
    cases += [Case(m, "babilong", dict(CI_BABILONG_BUDGET, task_args=dict(CI_BABILONG))) for m in learners]
    if learners:
        notes.append(f"babilong cases ({', '.join(learners)}): {CI_BABILONG}, {CI_BABILONG_BUDGET['steps']} steps x "
                     f"{CI_BABILONG_BUDGET['batch_size']}")
    return cases, notes


SUITES = {"ci": ci_suite}


def compared_metrics(record: dict) -> dict[str, dict]:
    primary = record["primary_metric"]
    return {name: m for name, m in record["metrics"].items() if name == primary or name.startswith(primary + "/")}


def data_label(record: dict) -> str:
    info = record.get("task_info") or {}
    if record["task"] == "bytes":
        return f"bytes:{Path(str(info.get('source', '?'))).name} sha256={str(info.get('sha256', ''))[:16]}"
    digest = info.get("sha256")
    args = " ".join(f"{k}={v}" for k, v in sorted((record.get("task_args") or {}).items()))
    return f"{record['task']}:{info.get('source', '?')} {args}".strip() + (f" sha256={digest[:16]}" if digest else "")


def _accuracy_scale(record: dict, values) -> float:
    """100 where the record's accuracies are percentages (its task says so, or a value exceeds 1), else 1."""
    percent = "percent" in str((record.get("task_info") or {}).get("accuracy_unit", "")) or max(values) > 1
    return 100.0 if percent else 1.0


def _floor(metric: dict, record: dict, values: list[float]) -> float:
    if metric.get("higher_is_better") and "acc" in record.get("primary_metric", "") and metric.get("n"):
        return _accuracy_scale(record, values) / metric["n"]
    return CONTINUOUS_FLOOR


def run_cases(cases: list[Case], seeds: list[int], device: str, output_path: str, log=print) -> dict:
    """{(model, task): {seed: record}}, with each run's wall time printed."""
    from harness.runner import run

    threads = torch.get_num_threads()
    torch.set_num_threads(SUITE_THREADS)
    out: dict = {}
    try:
        for case in cases:
            for seed in seeds:
                start = time.perf_counter()
                record, _ = run(case.config(seed, device, output_path))
                out.setdefault((case.model, case.task), {})[seed] = record
                shown = ", ".join(f"{k} {v['value']:.4f}" for k, v in compared_metrics(record).items())
                log(f"  {case.model:<18} {case.task:<9} seed {seed}: {shown}  ({time.perf_counter() - start:.1f} s)")
    finally:
        torch.set_num_threads(threads)
    return out


def reference_rows(results: dict, created: str | None = None) -> list[dict]:
    created = created or utc_now()
    rows = []
    for (model, task), by_seed in sorted(results.items()):
        seeds = sorted(by_seed)
        base = by_seed[0] if 0 in by_seed else by_seed[seeds[0]]
        for metric, m in compared_metrics(base).items():
            values = [by_seed[s]["metrics"][metric]["value"] for s in seeds]
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            if math.isnan(spread):
                raise HarnessError("--update needs at least 2 seeds to measure the spread (e.g. --seeds 3)")
            tolerance = max(TOLERANCE_SIGMAS * spread, _floor(m, base, values))
            rows.append({"model": model, "task": task, "metric": metric, "value": repr(float(m["value"])),
                         "tolerance": f"{tolerance:.3g}", "seeds": " ".join(map(str, seeds)),
                         "spread": f"{spread:.3g}", "data": data_label(base), "created": created,
                         "config_id": identity.from_record(base),
                         "informative": informative(base, metric, float(m["value"]), tolerance)})
    return rows


def guess_level(record: dict, metric: str) -> float | None:
    """The score of guessing at random for a metric, where the task states it (task_info["guess_level"]: per
    cell, e.g. MQAR's 1/values; a mean over cells gets the mean of its cells' levels)."""
    levels = (record.get("task_info") or {}).get("guess_level")
    if not isinstance(levels, dict) or not levels:
        return None
    cell = metric.split("/", 1)[1] if "/" in metric else None
    if cell is not None:
        return levels.get(cell)
    return sum(levels.values()) / len(levels)


def guess_bound(record: dict, metric: str, guess: float) -> float:
    """The most a model that guesses at random scores on the row's n items, 95 % of the time: the guess level plus
    1.96 binomial standard errors (the level itself where n is unknown). Accuracies in percent or as fractions."""
    n = record["metrics"][metric].get("n")
    if not n:
        return guess
    unit = _accuracy_scale(record, [guess])
    p = min(max(guess / unit, 0.0), 1.0)
    return guess + 1.96 * unit * math.sqrt(p * (1 - p) / n)


def informative(record: dict, metric: str, value: float, tolerance: float) -> str:
    """'yes' when a model that guesses at random (a broken one) would fail the row; else 'no: why'. A row whose
    tolerance reaches down to what a random guesser scores on its n items (guess_bound) cannot fail such a model:
    CI skips its case, saying so."""
    guess = guess_level(record, metric)
    if guess is None or not record["metrics"][metric].get("higher_is_better"):
        return "yes"
    bound = guess_bound(record, metric, guess)
    if value - tolerance > bound:
        return "yes"
    n = record["metrics"][metric].get("n", "?")
    return (f"no: lower bound {value - tolerance:.3g} <= {bound:.3g}, what a random guesser scores (level "
            f"{guess:.3g}) on {n} items at 95 %")


def uninformative_cases(reference: list[dict]) -> set[tuple[str, str]]:
    """(model, task) whose every reference row is marked not informative."""
    by_case: dict[tuple[str, str], list[bool]] = {}
    for r in reference:
        by_case.setdefault((r["model"], r["task"]), []).append(str(r.get("informative") or "yes").startswith("no"))
    return {case for case, flags in by_case.items() if all(flags)}


def read_reference(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = set(REFERENCE_COLUMNS) - OPTIONAL_COLUMNS - set(rows[0] if rows else REFERENCE_COLUMNS)
    if missing:
        raise HarnessError(f"{path} lacks columns {sorted(missing)}; rewrite it with harness regress "
                           f"--update")
    return rows


def write_reference(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REFERENCE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (r["task"], r["model"], r["metric"])))
    atomic_write_bytes(path, buf.getvalue().encode())


@dataclass
class Comparison:
    failures: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)


def compare(results: dict, reference: list[dict], seed: int = 0) -> Comparison:
    ref = {(r["model"], r["task"], r["metric"]): r for r in reference}
    out, seen = Comparison(), set()
    for (model, task), by_seed in sorted(results.items()):
        record = by_seed[seed]
        current = compared_metrics(record)
        for metric, m in current.items():
            key = (model, task, metric)
            seen.add(key)
            row = ref.get(key)
            name = f"{model} {task} {metric}"
            if row is None:
                out.unchecked.append(f"{name} = {m['value']:.6g} has no reference row")
                continue
            if row["data"] != data_label(record):
                out.failures.append(f"{name}: data differs (reference: {row['data']}; now: {data_label(record)})")
                continue
            if row.get("config_id") and row["config_id"] != identity.from_record(record):
                out.failures.append(f"{name}: configuration differs from the reference's (config_id "
                                    f"{row['config_id']} vs {identity.from_record(record)}); rerun --update")
                continue
            diff = m["value"] - float(row["value"])
            line = (f"{name}: {m['value']:.6g} vs reference {float(row['value']):.6g} "
                    f"(diff {diff:+.3g}, tolerance {float(row['tolerance']):.3g})")
            (out.failures if abs(diff) > float(row["tolerance"]) else out.passed).append(line)
        for key in ref:
            if key[:2] == (model, task) and key not in seen:
                out.failures.append(f"{' '.join(key)}: in the reference but no longer reported")
    ran = set(results)
    out.stale = [f"{' '.join(k)}: reference row for a case that did not run" for k in ref if k[:2] not in ran]
    return out


def parse_seeds(text: str | None, default: int) -> list[int]:
    if not text:
        return list(range(default))
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise HarnessError(f"--seeds takes a count N or a list like 0,1,2, got {text!r}") from exc
    seeds = list(range(values[0])) if len(values) == 1 else values
    if not seeds or min(seeds) < 0:
        raise HarnessError(f"--seeds takes a count N >= 1 or a list of seeds >= 0, got {text!r}")
    return seeds


def main(suite: str = "ci", update: bool = False, seeds: str | None = None, reference: str | None = None,
         models: list[str] | None = None, data_file: str | None = None, device: str = "cpu",
         output_path: str | None = None, tasks: list[str] | None = None, log=print) -> int:
    if suite not in SUITES:
        raise HarnessError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    model_names = [MODELS.resolve(m).name for m in models] if models else MODELS.names()
    ref_path = Path(reference) if reference else REPO_ROOT / "results" / "reference" / f"{suite}.csv"
    run_seeds = parse_seeds(seeds, 3) if update else [0]
    if not update and seeds:
        log("note: the check runs seed 0 only (a seed reproduces exactly on one machine); --seeds is for --update")
    if update and 0 not in run_seeds:
        raise HarnessError("--update needs seed 0 among --seeds: the reference value is the seed-0 score")
    cases, notes = SUITES[suite](model_names, data_file)
    if tasks:
        wanted = {TASKS.resolve(t).name for t in tasks}
        cases = [c for c in cases if c.task in wanted]
        if not cases:
            raise HarnessError(f"suite {suite} has no case for task(s) {', '.join(sorted(wanted))}")
    for note in notes:
        log(f"note: {note}")
    reference_data = read_reference(ref_path)
    skip: set[tuple[str, str]] = set()
    if not update:
        skip = uninformative_cases(reference_data)
        for case in [c for c in cases if (c.model, c.task) in skip]:
            why = next(r["informative"] for r in reference_data if (r["model"], r["task"]) == (case.model, case.task))
            log(f"skipped   {case.model} {case.task}: the reference row cannot fail a broken model ({why[4:]}); "
                f"--update re-measures it")
        cases = [c for c in cases if (c.model, c.task) not in skip]
    log(f"suite {suite}: {len(cases)} cases x seeds {run_seeds} on {device}, {SUITE_THREADS} threads")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="regress-") as tmp:
        results = run_cases(cases, run_seeds, device, output_path or tmp, log)
    log(f"suite ran in {time.perf_counter() - start:.1f} s")

    if update:
        rows = reference_rows(results)
        ran = {(r["model"], r["task"]) for r in rows}
        kept = [r for r in read_reference(ref_path) if (r["model"], r["task"]) not in ran]
        write_reference(ref_path, kept + rows)
        for r in rows:
            if r["informative"].startswith("no"):
                log(f"not informative: {r['model']} {r['task']} {r['metric']} ({r['informative'][4:]}); CI skips it")
        log(f"reference -> {ref_path} ({len(rows)} rows rewritten, {len(kept)} kept)")
        return 0

    if not reference_data:
        log(f"FAILED    no reference rows at {ref_path}: nothing to check against")
        print(f"regression check failed: no reference rows at {ref_path}; create them with "
              f"harness regress --update --seeds 3", file=sys.stderr)
        return 1
    result = compare(results, reference_data)
    for line in result.passed:
        log(f"ok        {line}")
    for line in result.unchecked:
        log(f"UNCHECKED {line}")
    result.stale = [line for line in result.stale if tuple(line.split(" ", 2)[:2]) not in skip]  # said above
    for line in result.stale:
        log(f"stale     {line}")
    for line in result.failures:
        log(f"FAILED    {line}")
    failed = result.failures + result.unchecked  # a case with no reference row is a check that did not happen
    log(f"{len(result.passed)} passed, {len(result.failures)} failed, {len(result.unchecked)} unchecked "
        f"(unchecked fail: add their rows with --update)")
    if failed:
        print("regression check failed: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0
