"""The accuracy heatmap (tasks x lengths), like the benchmark's figures: green is high accuracy, red is low."""

from __future__ import annotations

from pathlib import Path

from tasks.babilong.common import parse_length


def plot_heatmap(table: dict[str, dict[str, float]], path, title: str = "BABILong accuracy (%)") -> Path:
    """Write a heatmap PNG of {row (task or 'mean'): {length name: accuracy %}} to `path`; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = sorted((r for r in table if r != "mean"), key=lambda r: (len(r), r)) + (["mean"] if "mean" in table else [])
    lengths = sorted({l for r in rows for l in table[r]}, key=lambda name: parse_length(name)[1])
    grid = np.full((len(rows), len(lengths)), np.nan)
    for i, r in enumerate(rows):
        for j, l in enumerate(lengths):
            if l in table[r]:
                grid[i, j] = table[r][l]
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(lengths), 0.8 + 0.5 * len(rows)))
    ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(lengths)):
            text = "-" if np.isnan(grid[i, j]) else f"{grid[i, j]:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(lengths)), lengths)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("context length (GPT-2 tokens)")
    ax.set_title(title, fontsize=10)
    return _save_figure(fig, path)


def plot_learning_curve(task_curve: list, path, title: str = "BABILong learning curve",
                        chance: float | None = None) -> Path:
    """Write accuracy (%) against training tokens, one line per metric of the runner's `training.task_curve`
    ([step, tokens seen, {metric: value}] points); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({name for _, _, point in task_curve for name in point})
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name in names:
        points = [(tokens, point[name]) for _, tokens, point in task_curve if name in point]
        ax.plot([t / 1e6 for t, _ in points], [v for _, v in points], marker="o", label=name.split("/")[-1])
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def _save_figure(fig, path) -> Path:
    """Lay out, write (creating the folder) and close a figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
