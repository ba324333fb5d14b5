"""Leaderboard plots in <results>/plots (matplotlib, Agg backend), drawn from the same aggregated rows as the
leaderboard (mean over seeds, error bars = standard error) and from the records' training curves:

- score_vs_params_<task>_<metric>.png: each task's primary LM metric (bits per byte, perplexity, ...) against
  parameter count, one line per model across its presets;
- babilong_acc_vs_length.png: BABILong mean accuracy (metrics acc/mean/<len>) against context length, one line
  per configuration (configurations of one model are told apart by their config_id);
- babilong_learning_curve.png: the BABILong learning curve the runner records (accuracy at 0k and 1k on a few
  test samples per cell at each validation step) against training tokens, mean over seeds per configuration;
- needle_acc_vs_length.png: needle accuracy (metrics acc/<len>) against context length, and the peak memory
  while each length was scored (the record's task_info.evaluation.peak_memory_mb), one line per configuration;
- recall_<task>.png: Zoology-style recall plot (metrics acc/kv<N>/T<L> of mqar): accuracy against key-value
  pairs, one line per architecture, one panel per sequence length;
- loss_<task>.png: training cross-entropy against step for every record (one line per model/preset/seed).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from harness import identity
from harness.errors import HarnessError
from harness.leaderboard import aggregate, newest_per_seed
from harness.results import load_records

_LEN = re.compile(r"^acc/mean/(\d+(?:\.\d+)?[kKmM]?)$")
_TOKENS = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")
_CELL = re.compile(r"^acc/kv(\d+)/T(\d+)$")
_NEEDLE_LEN = re.compile(r"^acc/(\d+[kKmM]?)$")


def context_length(name: str) -> float | None:
    """Tokens in a length label of a metric acc/mean/<len>: 0k -> 0, 4k -> 4096, 1M -> 1048576."""
    m = _LEN.match(name)
    return length_tokens(m.group(1)) if m else None


def length_tokens(label: str) -> float | None:
    """Tokens in a length label: 0k -> 0, 512 -> 512, 4k -> 4096, 1M -> 1048576; None if it is not one."""
    m = _TOKENS.match(label)
    if not m:
        return None
    return float(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2}[m.group(2).lower()]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", text)


def _save(fig, path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise HarnessError(f"cannot write plot {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)
    return path


def score_vs_params(rows: list[dict], out: Path) -> list[Path]:
    paths = []
    by_metric = defaultdict(list)
    for r in rows:
        if r["primary"] and not r["metric"].startswith("acc") and r.get("params"):
            by_metric[(r["task"], r["metric"])].append(r)
    for (task, metric), members in sorted(by_metric.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        lines = defaultdict(list)
        for r in members:
            lines[(r["model"], r["optimizer"], r["settings"])].append(r)
        for (model, optimizer, settings), pts in sorted(lines.items()):
            pts.sort(key=lambda r: r["params"])
            err = [r["stderr"] if isinstance(r["stderr"], float) else 0.0 for r in pts]
            ax.errorbar([r["params"] for r in pts], [r["value"] for r in pts], yerr=err, marker="o", capsize=3,
                        label=model + (f" ({optimizer})" if optimizer not in ("", "adamw") else ""))
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel(metric)
        ax.set_title(f"{task}: {metric} vs parameters" + (" (lower is better)" if not members[0]["higher_is_better"]
                                                           else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / f"score_vs_params_{_safe(task)}_{_safe(metric)}.png"))
    return paths


def _config_labels(keys) -> dict:
    """'model preset' for each (model, preset, config_id) key, with the config_id's first 8 characters where one
    model and preset has several configurations (e.g. two BABILong protocols), so no line merges two of them."""
    counts = defaultdict(int)
    for model, preset, _ in keys:
        counts[(model, preset)] += 1
    return {(model, preset, cid): f"{model} {preset}" + (f" [{cid[:8]}]" if counts[(model, preset)] > 1 else "")
            for model, preset, cid in keys}


def babilong_vs_length(rows: list[dict], out: Path) -> list[Path]:
    lines = defaultdict(list)
    for r in rows:
        length = context_length(r["metric"])
        if length is not None:
            lines[(r["model"], r["preset"], r["config_id"])].append((length, r))
    if not lines:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {}
    names = _config_labels(lines)
    for key, pts in sorted(lines.items()):
        pts.sort(key=lambda p: p[0])
        xs = [max(p[0], 1.0) for p in pts]  # 0k plotted at 1 token on the log axis
        err = [p[1]["stderr"] if isinstance(p[1]["stderr"], float) else 0.0 for p in pts]
        ax.errorbar(xs, [p[1]["value"] for p in pts], yerr=err, marker="o", capsize=3, label=names[key])
        labels.update({x: p[1]["metric"].rsplit("/", 1)[1] for x, p in zip(xs, pts)})
    ax.set_xscale("log")
    ax.set_xticks(sorted(labels), [labels[x] for x in sorted(labels)])
    ax.set_xlabel("context length")
    ax.set_ylabel("mean accuracy")
    ax.set_title("BABILong accuracy vs context length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [_save(fig, out / "babilong_acc_vs_length.png")]


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """Mean over seeds and the seed-to-seed standard error (0.0 for one seed)."""
    n, mean = len(values), sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0


def learning_curve_lines(records: list[tuple[Path, dict]]) -> dict[str, dict[str, list[tuple]]]:
    """{configuration label: {metric: [(training tokens, mean over seeds, seed-to-seed stderr, seeds)]}} from the
    BABILong records' `training.task_curve` (accuracy at 0k and 1k at each validation step); one record per seed
    (the newest), stderr 0.0 where one seed has the point."""
    groups = defaultdict(list)
    for path, rec in records:
        if rec.get("task") == "babilong" and (rec.get("training") or {}).get("task_curve"):
            groups[(rec["model"], rec["preset"], identity.from_record(rec))].append((path, rec))
    names = _config_labels(groups)
    lines = {}
    for key, members in sorted(groups.items()):
        by_metric = defaultdict(lambda: defaultdict(list))  # metric -> tokens -> values over seeds
        for _, rec in newest_per_seed(members):
            for _, tokens, point in rec["training"]["task_curve"]:
                for metric, value in point.items():
                    by_metric[metric][tokens].append(value)
        lines[names[key]] = {}
        for metric, by_tokens in by_metric.items():
            points = []
            for tokens, values in sorted(by_tokens.items()):
                points.append((tokens, *_mean_and_stderr(values), len(values)))
            lines[names[key]][metric] = points
    return lines


def babilong_learning_curves(records: list[tuple[Path, dict]], out: Path) -> list[Path]:
    """learning_curve_lines drawn: one panel per metric (0k, 1k), one line per configuration."""
    lines = learning_curve_lines(records)
    if not lines:
        return []
    metrics = sorted({m for by_metric in lines.values() for m in by_metric},
                     key=lambda m: (context_length(m) is None, context_length(m) or 0, m))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False, sharey=True)
    for ax, metric in zip(axes[0], metrics):
        for label, by_metric in lines.items():
            points = by_metric.get(metric)
            if points:
                seeds = max(p[3] for p in points)
                ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                            marker="o", capsize=3, label=f"{label} ({seeds} seed{'s' if seeds > 1 else ''})")
        ax.set_xlabel("training tokens")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy on the curve's test samples (%)")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle("BABILong learning curve")
    return [_save(fig, out / "babilong_learning_curve.png")]


def needle_lines(rows: list[dict], records: list[tuple[Path, dict]]) -> dict[str, dict[str, list[tuple]]]:
    """{configuration label: {"acc": [(tokens, mean, stderr, length name)], "peak_memory_mb": [(tokens, mean over
    seeds, seed-to-seed stderr, length name)]}} of the needle task."""
    lines = defaultdict(lambda: defaultdict(list))
    keys = set()
    for r in rows:
        m = _NEEDLE_LEN.match(r["metric"])
        if r["task"] == "needle" and m:
            key = (r["model"], r["preset"], r["config_id"])
            keys.add(key)
            lines[key]["acc"].append((length_tokens(m.group(1)), r["value"],
                                      r["stderr"] if isinstance(r["stderr"], float) else 0.0, m.group(1)))
    groups = defaultdict(list)
    for path, rec in records:
        if rec.get("task") == "needle":
            groups[(rec["model"], rec["preset"], identity.from_record(rec))].append((path, rec))
    for key, members in groups.items():
        by_length = defaultdict(list)
        for _, rec in newest_per_seed(members):
            for name, mb in (((rec.get("task_info") or {}).get("evaluation") or {}).get("peak_memory_mb") or {}).items():
                by_length[name].append(mb)
        for name, values in by_length.items():
            lines[key]["peak_memory_mb"].append((length_tokens(name), *_mean_and_stderr(values), name))
        if by_length:
            keys.add(key)
    names = _config_labels(keys)
    return {names[key]: {metric: sorted(points) for metric, points in lines[key].items()} for key in sorted(keys)}


def needle_vs_length(rows: list[dict], records: list[tuple[Path, dict]], out: Path) -> list[Path]:
    """needle_lines drawn: accuracy and peak scoring memory against context length, one line per configuration."""
    lines = needle_lines(rows, records)
    if not lines:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    panels = (("acc", "accuracy (%)"), ("peak_memory_mb", "peak memory while scoring (MB)"))
    for ax, (metric, ylabel) in zip(axes[0], panels):
        ticks = {}
        for label, by_metric in lines.items():
            points = by_metric.get(metric)
            if points:
                ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                            marker="o", capsize=3, label=label)
                ticks.update({p[0]: p[3] for p in points})
        ax.set_xscale("log", base=2)
        if ticks:
            ax.set_xticks(sorted(ticks), [ticks[x] for x in sorted(ticks)])
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("needle: accuracy and memory by context length")
    return [_save(fig, out / "needle_acc_vs_length.png")]


def recall_grid(rows: list[dict], out: Path) -> list[Path]:
    """Accuracy against kv pairs per architecture, one panel per sequence length (Zoology, figure 2)."""
    by_task = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))  # task -> T -> line -> [(kv, row)]
    for r in rows:
        m = _CELL.match(r["metric"])
        if m:
            line = (r["model"], r["preset"], r["optimizer"], r["settings"])
            by_task[r["task"]][int(m.group(2))][line].append((int(m.group(1)), r))
    paths = []
    for task, panels in sorted(by_task.items()):
        lengths = sorted(panels)
        fig, axes = plt.subplots(1, len(lengths), figsize=(4 * len(lengths), 3.6), squeeze=False, sharey=True)
        for ax, length in zip(axes[0], lengths):
            for (model, preset, optimizer, settings), pts in sorted(panels[length].items()):
                pts.sort(key=lambda p: p[0])
                err = [p[1]["stderr"] if isinstance(p[1]["stderr"], float) else 0.0 for p in pts]
                label = f"{model} {preset}" + (f" ({optimizer})" if optimizer not in ("", "adamw") else "")
                ax.errorbar([p[0] for p in pts], [p[1]["value"] for p in pts], yerr=err, marker="o", capsize=3,
                            label=label)
            kvs = sorted({kv for pts in panels[length].values() for kv, _ in pts})
            ax.plot(kvs, [100 / kv for kv in kvs], "k:", lw=1, label="no recall (1/kv pairs)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(kvs, [str(k) for k in kvs])
            ax.set_xlabel("key-value pairs")
            ax.set_title(f"sequence length {length}")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("recall accuracy (%)")
        axes[0][-1].legend(fontsize=6)
        fig.suptitle(f"{task}: accuracy by key-value pairs")
        paths.append(_save(fig, out / f"recall_{_safe(task)}.png"))
    return paths


def loss_curves(records: list[tuple[Path, dict]], out: Path) -> list[Path]:
    by_task = defaultdict(list)
    for _, rec in records:
        curve = (rec.get("training") or {}).get("curve") or []
        if curve:
            by_task[rec["task"]].append(rec)
    paths = []
    for task, recs in sorted(by_task.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for rec in sorted(recs, key=lambda r: (r["model"], r["preset"], r["seed"])):
            curve = rec["training"]["curve"]
            ax.plot([c[0] for c in curve], [c[1] for c in curve], lw=1,
                    label=f"{rec['model']} {rec['preset']} s{rec['seed']}")
        ax.set_xlabel("step")
        ax.set_ylabel("training cross-entropy (nats)")
        ax.set_title(f"{task}: training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        paths.append(_save(fig, out / f"loss_{_safe(task)}.png"))
    return paths


def write_plots(root: str | Path, model=None, task=None, preset=None) -> list[Path]:
    """Draw every plot for the records under <root>/runs (with the leaderboard's filters); returns the files."""
    root = Path(root)
    records = [(p, r) for p, r in load_records(root)
               if (not model or r.get("model") == model) and (not task or r.get("task") == task)
               and (not preset or r.get("preset") == preset)]
    rows = aggregate(records)
    out = root / "plots"
    return (score_vs_params(rows, out) + babilong_vs_length(rows, out) + babilong_learning_curves(records, out)
            + needle_vs_length(rows, records, out) + recall_grid(rows, out) + loss_curves(records, out))
