"""The leaderboard, rebuilt from run records.

`results/leaderboard.csv` is long: one row per model x preset x task x metric (x optimizer, steps, settings),
with the value, its standard error, the number of seeds, parameters, tokens seen, git hash, date and the record
files it came from. Several seeds of one configuration aggregate to the mean over seeds with the seed-to-seed
standard error (std / sqrt(n)); a single seed keeps the standard error its own evaluation reported.
`results/leaderboard.md` is wide: one row per model (and preset, optimizer), one column per task headline metric
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

from harness.data import atomic_write_bytes
from harness.results import load_records

COLUMNS = ["model", "preset", "task", "metric", "value", "stderr", "n_seeds", "seeds", "higher_is_better", "params",
           "tokens_seen", "optimizer", "steps", "settings", "data", "git_hash", "date", "records"]


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


def aggregate(records: list[tuple[Path, dict]], model=None, task=None, preset=None) -> list[dict]:
    groups: dict[tuple, list[tuple[Path, dict]]] = defaultdict(list)
    for path, rec in records:
        if (model and rec.get("model") != model) or (task and rec.get("task") != task) or \
                (preset and rec.get("preset") != preset):
            continue
        data = (rec.get("task_info") or {}).get("sha256") or (rec.get("task_info") or {}).get("source") or ""
        key = (rec["model"], rec["preset"], rec["task"], rec.get("optimizer", ""),
               rec.get("training", {}).get("steps"), _settings(rec), str(data)[:12])
        groups[key].append((path, rec))
    rows = []
    for (model_name, preset_name, task_name, optimizer, steps, settings, data), members in sorted(
            groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
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
                "model": model_name, "preset": preset_name, "task": task_name, "metric": metric,
                "value": mean, "stderr": stderr, "n_seeds": n,
                "seeds": " ".join(str(r["seed"]) for _, r in runs),
                "higher_is_better": runs[0][1]["metrics"][metric].get("higher_is_better", False),
                "params": runs[0][1].get("params"),
                "tokens_seen": runs[0][1].get("training", {}).get("tokens_seen"),
                "optimizer": optimizer, "steps": steps, "settings": settings, "data": data,
                "git_hash": ((max(runs, key=lambda pr: pr[1]["created"])[1].get("git") or {}).get("hash") or "")[:12],
                "date": newest, "records": " ".join(p.name for p, _ in runs),
                "primary": metric == runs[0][1].get("primary_metric") or metric.startswith("acc/mean/"),
            })
    return rows


def _fmt(value, stderr) -> str:
    if value is None:
        return ""
    text = f"{value:.4g}"
    return f"{text} ± {stderr:.2g}" if stderr not in (None, "") and not math.isnan(stderr) else text


def to_markdown(rows: list[dict]) -> str:
    headline = [r for r in rows if r["primary"]]
    columns = sorted({(r["task"], r["metric"]) for r in headline})
    keyed = {}
    for r in headline:
        row_key = (r["model"], r["preset"], r["optimizer"], r["settings"])
        keyed.setdefault(row_key, {})[(r["task"], r["metric"])] = r
    best = {}
    for col in columns:
        cells = [cells[col] for cells in keyed.values() if col in cells]
        pick = max if cells[0]["higher_is_better"] else min
        best[col] = pick(c["value"] for c in cells)
    lines = ["| model | preset | params | optimizer | " + " | ".join(f"{t} {m}" for t, m in columns) + " |",
             "|---|---|---:|---|" + "---:|" * len(columns)]
    for (model, preset, optimizer, settings), cells in sorted(keyed.items()):
        params = next(iter(cells.values()))["params"]
        label = model + (f" {settings}" if settings else "")
        out = []
        for col in columns:
            c = cells.get(col)
            if c is None:
                out.append("")
                continue
            text = _fmt(c["value"], c["stderr"]) + (f" (n={c['n_seeds']})" if c["n_seeds"] > 1 else "")
            out.append(f"**{text}**" if c["value"] == best[col] and len(keyed) > 1 else text)
        lines.append(f"| {label} | {preset} | {params:,} | {optimizer} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def rebuild(root: str | Path = "results", model=None, task=None, preset=None) -> tuple[Path, Path, int]:
    """Rewrite <root>/leaderboard.csv and .md from every record in <root>/runs; returns the paths and row count."""
    root = Path(root)
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
