"""Printing a finished run for a person: the metrics table and where everything went."""

from __future__ import annotations

from pathlib import Path

import click


def metrics_table(record: dict) -> str:
    rows = [("metric", "value", "stderr", "n")]
    for name, m in record["metrics"].items():
        se = "" if m.get("stderr") is None else f"{m['stderr']:.4f}"
        rows.append((name, f"{m['value']:.4f}", se, f"{m['n']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def print_run(record: dict, path: Path) -> None:
    tr = record["training"]
    click.echo(f"\n{record['model']} ({record['preset']}, {record['params']:,} params) on {record['task']} "
               f"- {tr['steps']} steps, {tr['tokens_seen']:,} tokens, {record['device']}, {record['dtype']}")
    if tr.get("tokens_per_s"):
        click.echo(f"training: {tr['train_time_s']:.1f} s, {tr['tokens_per_s']:,.0f} tokens/s, "
                   f"final train loss {tr['final_train_loss']:.4f}")
    if tr.get("final_val_loss") is not None:
        click.echo(f"validation: loss {tr['final_val_loss']:.4f}, next-token accuracy {tr['final_val_accuracy']:.4f}")
    click.echo(metrics_table(record))
    click.echo(f"wall time {record['wall_time_s']:.1f} s, peak memory {record['peak_memory_mb']:,.0f} MB")
    for note in record.get("notes", []):
        click.echo(f"note: {note}")
    click.echo(f"run record -> {path}")
    if record.get("checkpoint"):
        click.echo(f"checkpoint -> {record['checkpoint']}")
    for artifact in record.get("artifacts", []):
        click.echo(f"artifact -> {artifact}")
    logging = record.get("logging") or {}
    if logging.get("tensorboard"):
        click.echo(f"tensorboard -> {logging['tensorboard']}")
    if logging.get("wandb"):
        click.echo(f"wandb -> {logging['wandb'].get('url') or logging['wandb'].get('dir')}")
    if Path(path).parent.parent.joinpath("leaderboard.csv").exists():
        click.echo(f"leaderboard -> {Path(path).parent.parent / 'leaderboard.csv'}")
