"""A/B experiments (`harness ab arch|optimizer`): two configurations that differ in one thing only - the
architecture or the optimizer - trained and scored over the same paired seeds, so data order, tokens seen,
schedule and evaluation cadence are identical. The statistics (paired CIs, p-values, verdict) live in harness.ab.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness import ab
from harness.errors import HarnessError
from harness.registry import MODELS, OPTIMIZERS
from harness.results import results_root
from harness.runner import RunConfig, run

KINDS = ("arch", "optimizer")


def side_config(base: RunConfig, kind: str, name: str, side_args: dict, seed: int) -> RunConfig:
    """The base configuration with one thing swapped: the model (arch) or the optimizer (optimizer)."""
    if kind == "arch":
        return replace(base, model=name, seed=seed, model_args={**base.model_args, **side_args})
    return replace(base, optimizer=name, seed=seed, optimizer_args={**base.optimizer_args, **side_args})


def run_ab(kind: str, a: str, b: str, base: RunConfig, seeds: list[int], a_args: dict | None = None,
           b_args: dict | None = None, confidence: float = 0.95):
    """Train and score A and B for every seed; returns (report, markdown, verdict, plot path, record paths)."""
    if kind not in KINDS:
        raise HarnessError(f"unknown A/B kind {kind!r}; use one of {', '.join(KINDS)}")
    if not seeds:
        raise HarnessError("an A/B needs at least one seed (two or more for a confidence interval)")
    registry = MODELS if kind == "arch" else OPTIMIZERS
    a, b = registry.resolve(a).name, registry.resolve(b).name  # typos fail before any training
    records = {"A": [], "B": []}
    paths = []
    for seed in seeds:
        for side, name, args in (("A", a, a_args or {}), ("B", b, b_args or {})):
            record, path = run(side_config(base, kind, name, args, seed))
            records[side].append(record)
            paths.append(path)
    label_a = a + (f" {a_args}" if a_args else "")
    label_b = b + (f" {b_args}" if b_args else "")
    specs = ab.task_metric_specs(records["A"] + records["B"])
    runs_a = [ab.from_run_record(r) for r in records["A"]]
    runs_b = [ab.from_run_record(r) for r in records["B"]]
    report = ab.compare(runs_a, runs_b, label_a, label_b, metrics=specs, confidence=confidence)
    plot = ab.plot_curves(runs_a, runs_b, ab.default_plot_path(kind, a, b, Path(results_root(base.output_path)) / "plots"),
                          label_a, label_b)
    return report, ab.markdown_table(report), ab.verdict_line(report), plot, paths
