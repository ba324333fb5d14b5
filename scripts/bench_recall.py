"""The recall suite's table and wall time: every model on MQAR cells at the CPU budget, over seeds.

    python scripts/bench_recall.py                                   # default cell, every model, 3 seeds
    python scripts/bench_recall.py --lrs 1e-3,3e-3 --seeds 0          # Zoology's protocol: each model at its best lr
    python scripts/bench_recall.py --models titans-lmm,transformer-pp --seeds 0 \
        --task-arg kv_pairs=4,8,16,32,64 --task-arg seq_len=64,128,256,512     # the Zoology grid
    python scripts/bench_recall.py --task needle --models titans-lmm,mamba2 --seeds 0 \
        --task-arg lengths=128,1k,16k,128k --task-arg samples=10      # needle by length, with peak memory

Runs the jobs with `harness sweep` (finished jobs are skipped, so an interrupted bench resumes), then prints one
row per model: parameters, the learning rate, accuracy per cell (mean over seeds ± seed-to-seed standard error,
or the binomial stderr for one seed), the no-recall level, training time and wall time per run, and the bench's
total wall time; for the needle task also the peak memory while the shortest and the longest length were scored
(flat in length where the model's state is bounded). With several `--lrs` each model is trained at each and its
row is the lr with the best mean accuracy (Zoology, section 3: architectures compared at their own best learning
rate); every lr's rows are printed first.
Timings are what the records measured on this machine; they go here, never into tests.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.errors import HarnessError
from harness.registry import MODELS
from harness.results import load_records, results_root
from harness.runner import RunConfig
from harness.sweep import main as sweep_main
from tasks.needle import parse_tokens


def _cell_key(metric: str) -> tuple:
    """Sort key of a metric acc/<cell>: MQAR's kv<N>/T<L> by (N, L), the needle's lengths (512, 4k) by tokens."""
    cell = metric.removeprefix("acc/")
    m = re.fullmatch(r"kv(\d+)/T(\d+)", cell)
    if m:
        return int(m.group(1)), int(m.group(2))
    try:
        return (parse_tokens(cell),)
    except HarnessError:
        return (math.inf, cell)


def _peaks(recs) -> dict[str, float]:
    """Mean over seeds of the needle's per-length scoring peak memory (MB), {} for other tasks."""
    by_length = defaultdict(list)
    for rec in recs:
        for name, mb in ((rec.get("task_info") or {}).get("evaluation") or {}).get("peak_memory_mb", {}).items():
            by_length[name].append(mb)
    return {name: statistics.mean(values) for name, values in by_length.items()}


def table(records: list[dict]) -> list[str]:
    by_model: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_model[rec["model"]].append(rec)
    cells = sorted({m for rec in records for m in rec["metrics"] if m.startswith("acc/")}, key=_cell_key)
    level = records[0]["task_info"].get("no_recall_level", {}) if records else {}
    lengths = sorted({name for rec in records for name in _peaks([rec])}, key=lambda n: _cell_key("acc/" + n))
    peak_lengths = [lengths[0], lengths[-1]] if lengths else []  # the shortest and the longest
    peak_cols = [f"peak MB {name}" for name in peak_lengths]
    head = ["model", "params", "lr", "seeds", *[c.removeprefix("acc/") for c in cells], *peak_cols, "train s",
            "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if level:
        row = ["no recall (1/kv)", "", "", "", *[f"{level.get(c.removeprefix('acc/'), float('nan')):.1f}"
                                                 for c in cells], *[""] * (len(peak_cols) + 2)]
        lines.append("| " + " | ".join(row) + " |")
    for model, recs in sorted(by_model.items(), key=lambda kv: -_mean(kv[1], "acc")[0]):
        row = [model, f"{recs[0]['params']:,}", f"{recs[0]['training']['lr']:g}",
               " ".join(str(r["seed"]) for r in sorted(recs, key=lambda r: r["seed"]))]
        for c in cells:
            mean, se = _mean(recs, c)
            row.append(f"{mean:.1f} ± {se:.1f}" if not math.isnan(mean) else "")
        peaks = _peaks(recs)
        row += [f"{peaks[name]:,.0f}" if name in peaks else "" for name in peak_lengths]
        row.append(f"{statistics.mean(r['training']['train_time_s'] for r in recs):.0f}")
        row.append(f"{statistics.mean(r['wall_time_s'] for r in recs):.0f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _budget_lr(args, model: str) -> float:
    """The learning rate a run of the model gets without --lr: the task's CPU budget at this preset, else the
    preset's."""
    from harness.runner import resolve_run

    cfg = RunConfig(model=model, task=args.task, preset=args.preset, task_args=dict(kv.split("=", 1)
                                                                                    for kv in args.task_arg))
    return resolve_run(cfg)[1].lr


def _mean(recs, metric) -> tuple[float, float]:
    values = [r["metrics"][metric]["value"] for r in recs if metric in r["metrics"]]
    if not values:
        return float("nan"), float("nan")
    if len(values) == 1:
        se = recs[0]["metrics"][metric].get("stderr") or 0.0
        return values[0], se
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="all", help="comma-separated names, or all (every registered model)")
    ap.add_argument("--task", default="mqar")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--task-arg", action="append", default=[], help="KEY=VALUE task option (repeatable)")
    ap.add_argument("--lrs", help="learning rates to try for every model (comma-separated); default: the budget's")
    ap.add_argument("--steps", type=int, help="override the budget's steps for every model")
    ap.add_argument("--jobs", type=int, default=1, help="parallel runs (each gets cores / jobs threads)")
    ap.add_argument("--output_path", default="results/bench/recall")
    args = ap.parse_args(argv)

    models = MODELS.names() if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    task_args = dict(kv.split("=", 1) for kv in args.task_arg)
    lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else [None]
    seeds = [int(s) for s in args.seeds.split(",")]
    start, code = time.perf_counter(), 0
    for lr in lrs:
        base = RunConfig(model="?", task=args.task, preset=args.preset, lr=lr, steps=args.steps,
                         task_args=task_args, output_path=args.output_path, progress=False)
        code |= sweep_main(models, [args.task], seeds, base, jobs=args.jobs)
    wall = time.perf_counter() - start
    names = {MODELS.resolve(m).name for m in models}
    budget_lr = {name: _budget_lr(args, name) for name in names} if lrs == [None] else {}
    records = [r for _, r in load_records(results_root(args.output_path))
               if r["model"] in names and r["task"] == args.task and (r.get("task_args") or {}) == task_args
               and r["preset"] == args.preset and r["seed"] in seeds
               and (args.steps is None or r["training"]["steps"] == args.steps)
               and (lrs == [None] and r["training"]["lr"] == budget_lr[r["model"]] or r["training"]["lr"] in lrs)]
    print(f"\n{args.task} at preset {args.preset}, task options {task_args or 'default'}; accuracy % (mean ± se)")
    if len(lrs) > 1:
        print("\nevery learning rate:")
        for lr in lrs:
            print("\n".join(table([r for r in records if r["training"]["lr"] == lr])[2 if lr != lrs[0] else 0:]))
        best = {}
        for rec in records:
            key = (rec["model"], rec["training"]["lr"])
            best.setdefault(rec["model"], {}).setdefault(key[1], []).append(rec)
        records = [r for by_lr in best.values() for r in max(by_lr.values(), key=lambda rs: _mean(rs, "acc")[0])]
        print("\neach model at its best learning rate:")
    print("\n".join(table(records)))
    print(f"\nbench wall time {wall:.0f} s for the jobs it ran ({args.jobs} parallel); records in "
          f"{results_root(args.output_path) / 'runs'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
