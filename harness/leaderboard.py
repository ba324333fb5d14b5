"""The leaderboard, rebuilt from run records.

`results/leaderboard.csv` is long: one row per configuration (harness/identity.py: model, task, data,
optimizer, budget, settings; not the seed) x metric, with the value, its standard error, the number of seeds,
parameters, tokens seen, git hash, date and the record files it came from. Several seeds of one configuration
aggregate to the mean over seeds with the seed-to-seed standard error (std / sqrt(n)); a seed counts once (its
newest record); a single seed keeps the standard error its own evaluation reported.
`results/leaderboard.md` is wide: one row per configuration less its task, one column per task headline metric
(the task's primary metric, and BABILong mean accuracy per length), the best value in each column in bold.

Rebuilds hold an exclusive lock and replace the files atomically, and every rebuild reads every record, so two
processes finishing at once lose no rows.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from harness import identity
from harness.data import atomic_write_bytes
from harness.errors import HarnessError
from harness.results import load_records

COLUMNS = ["model", "preset", "task", "metric", "value", "stderr", "n_seeds", "seeds", "higher_is_better",
           "params", "tokens_seen", "optimizer", "steps", "batch_size", "seq_len", "lr", "settings", "data",
           "config_id", "git_hash", "date", "records"]


@contextmanager
def _locked(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".leaderboard.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _settings(record: dict) -> str:
    extra = {k: record.get(k) for k in ("model_args", "task_args", "optimizer_args") if record.get(k)}
    return json.dumps(extra, sort_keys=True) if extra else ""


def newest_per_seed(members: list[tuple[Path, dict]]) -> list[tuple[Path, dict]]:
    """One record per seed (the newest): a rerun or `--resume` of a finished run is not another seed."""
    by_seed: dict = {}
    for path, rec in members:
        seen = by_seed.get(rec["seed"])
        if seen is None or (rec["created"], path.name) > (seen[1]["created"], seen[0].name):
            by_seed[rec["seed"]] = (path, rec)
    return [by_seed[seed] for seed in sorted(by_seed, key=str)]


def aggregate(records: list[tuple[Path, dict]], model=None, task=None, preset=None) -> list[dict]:
    """Rows grouped by configuration identity (harness/identity.py): only seeds of one configuration
    average."""
    groups: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
    for path, rec in records:
        if (model and rec.get("model") != model) or (task and rec.get("task") != task) or \
                (preset and rec.get("preset") != preset):
            continue
        groups[identity.from_record(rec)].append((path, rec))
    rows = []
    for config_id, members in groups.items():
        members = newest_per_seed(members)
        first = members[0][1]
        training = first.get("training") or {}
        budget = training.get("budget") or {}
        info = first.get("task_info") or {}
        data = info.get("sha256") or info.get("source") or ""
        metric_names = sorted(set().union(*(m["metrics"] for _, m in members)))
        for metric in metric_names:
            runs = [(p, r) for p, r in members if metric in r["metrics"]]
            values = [r["metrics"][metric]["value"] for _, r in runs]
            n = len(values)
            mean = sum(values) / n
            if n >= 2:
                stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
            else:
                stderr = runs[0][1]["metrics"][metric].get("stderr")
            newest = max(r["created"] for _, r in runs)
            rows.append({
                "model": first["model"], "preset": first["preset"], "task": first["task"], "metric": metric,
                "value": mean, "stderr": stderr, "n_seeds": n,
                "seeds": " ".join(str(r["seed"]) for _, r in runs),
                "higher_is_better": runs[0][1]["metrics"][metric].get("higher_is_better", False),
                "params": runs[0][1].get("params"),
                "tokens_seen": training.get("tokens_seen"),
                "optimizer": first.get("optimizer", ""), "steps": training.get("steps"),
                "batch_size": budget.get("batch_size", training.get("batch_size")),
                "seq_len": budget.get("seq_len", training.get("seq_len")),
                "lr": budget.get("lr", training.get("lr")), "settings": _settings(first),
                "data": str(data)[:12], "config_id": config_id,
                "git_hash": ((max(runs, key=lambda pr: pr[1]["created"])[1].get("git") or {}).get("hash") or "")[:12],
                "date": newest, "records": " ".join(p.name for p, _ in runs),
                "primary": metric == runs[0][1].get("primary_metric") or metric.startswith("acc/mean/"),
            })
    order = ("model", "preset", "task", "optimizer", "steps", "lr", "batch_size", "seq_len", "settings",
             "data", "config_id", "metric")
    rows.sort(key=lambda r: tuple(str(r[k]) for k in order))
    return rows


def _fmt(value, stderr) -> str:
    if value is None:
        return ""
    text = f"{value:.4g}"
    return f"{text} ± {stderr:.2g}" if stderr not in (None, "") and not math.isnan(stderr) else text


def _training_label(row: dict) -> str:
    lr = row.get("lr")
    return f"{row.get('steps')} × {row.get('batch_size')} × {row.get('seq_len')}" + \
        (f", lr {lr:g}" if isinstance(lr, (int, float)) else "")


def to_markdown(rows: list[dict]) -> str:
    """One row per configuration less its task (tasks are the columns); configurations that the shown labels
    do not tell apart but that report the same column get a row each, tagged with their config_id."""
    headline = [r for r in rows if r["primary"]]
    columns = sorted({(r["task"], r["metric"]) for r in headline})
    by_base: dict[tuple, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for r in headline:
        base = (r["model"], r["preset"], r["optimizer"], r["settings"], _training_label(r))
        by_base[base][r["config_id"]].add((r["task"], r["metric"]))
    keyed = {}
    for r in headline:
        base = (r["model"], r["preset"], r["optimizer"], r["settings"], _training_label(r))
        configs = by_base[base]
        mine = configs[r["config_id"]]
        clash = any(other != r["config_id"] and cols & mine for other, cols in configs.items())
        keyed.setdefault(base + (r["config_id"][:8] if clash else "",), {})[(r["task"], r["metric"])] = r
    best = {}
    for col in columns:
        cells = [cells[col] for cells in keyed.values() if col in cells]
        pick = max if cells[0]["higher_is_better"] else min
        best[col] = pick(c["value"] for c in cells)
    header = " | ".join(f"{t} {m}" for t, m in columns)
    lines = ["| model | preset | params | optimizer | training | " + header + " |",
             "|---|---|---:|---|---|" + "---:|" * len(columns)]
    for (model, preset, optimizer, settings, training, tag), cells in sorted(keyed.items()):
        params = next(iter(cells.values()))["params"]
        label = model + (f" {settings}" if settings else "") + (f" [{tag}]" if tag else "")
        out = []
        for col in columns:
            c = cells.get(col)
            if c is None:
                out.append("")
                continue
            text = _fmt(c["value"], c["stderr"]) + (f" (n={c['n_seeds']})" if c["n_seeds"] > 1 else "")
            out.append(f"**{text}**" if c["value"] == best[col] and len(keyed) > 1 else text)
        params_text = f"{params:,}" if isinstance(params, int) else str(params or "")
        lines.append(f"| {label} | {preset} | {params_text} | {optimizer} | {training} | "
                     + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def rebuild(root: str | Path = "results", model=None, task=None, preset=None) -> tuple[Path, Path, int]:
    """Rewrite <root>/leaderboard.csv and .md from every record in <root>/runs; returns the paths and row count."""
    root = Path(root)
    try:
        return _rebuild(root, model, task, preset)
    except OSError as exc:
        raise HarnessError(f"cannot write the leaderboard under {root}: {exc.strerror or exc}") from exc


def _rebuild(root: Path, model, task, preset) -> tuple[Path, Path, int]:
    with _locked(root):
        rows = aggregate(load_records(root), model=model, task=task, preset=preset)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        csv_path, md_path = root / "leaderboard.csv", root / "leaderboard.md"
        atomic_write_bytes(csv_path, buf.getvalue().encode())
        atomic_write_bytes(md_path, ("# Leaderboard\n\nRebuilt from run records by `harness leaderboard`; "
                                     "values are mean ± standard error.\n\n" + to_markdown(rows)).encode()
                           if rows else b"# Leaderboard\n\nNo run records yet.\n")
    return csv_path, md_path, len(rows)
