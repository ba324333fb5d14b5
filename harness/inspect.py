"""Model facts for `harness ls models`: parameter counts per preset, counted on the meta device (no memory)."""

from __future__ import annotations

import torch

from harness.adapter import build_model
from harness.registry import MODELS

STANDARD_PRESETS = ("tiny", "small", "medium", "large")


def count_parameters(name: str, preset: str, vocab_size: int = 256) -> int | None:
    """Parameters of `name` at `preset` for a vocabulary (None if the model has no such preset)."""
    from harness.errors import HarnessError

    try:
        with torch.device("meta"):
            return build_model(name, preset, vocab_size).num_parameters()
    except HarnessError:
        return None


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def parameter_table(vocab_size: int = 256) -> str:
    header = f"{'model':<18}{''.join(f'{p:>9}' for p in STANDARD_PRESETS)}   streaming  summary (params at vocab {vocab_size})"
    lines = [header]
    for entry in MODELS:
        counts = [count_parameters(entry.name, p, vocab_size) for p in STANDARD_PRESETS]
        with torch.device("meta"):
            streaming = type(build_model(entry.name, "tiny", vocab_size)).streaming
        aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
        lines.append(f"{entry.name:<18}{''.join(f'{_human(c):>9}' for c in counts)}   {streaming:<10} "
                     f"{entry.summary}{aliases}")
    for entry in MODELS.prefixes():  # e.g. hf:<source>: sized by its weights, not by a preset
        lines.append(f"{entry.name:<18}{'(its own size)':>36}   {'by model':<10} {entry.summary}")
    return "\n".join(lines)
