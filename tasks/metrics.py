"""Scoring arithmetic shared by the tasks.

Bits per byte: BPB = total NLL (nats) / (ln 2 * bytes scored). For byte-level models tokens are bytes; for
tokenised text the NLL is summed over tokens and divided by the UTF-8 bytes of the text they cover.

Standard errors: tokens of one window or document are correlated, so the stderr of a ratio sum(nll)/sum(units)
is computed over clusters (windows, documents), with the ratio-estimator (delta-method) formula
    se = sqrt( n/(n-1) * sum_i (x_i - R u_i)^2 ) / sum_i u_i,   R = sum x_i / sum u_i,
where x_i is the cluster's NLL sum and u_i its unit count. With equal-size clusters this is the ordinary standard
error of the cluster means.
"""

from __future__ import annotations

import math
from typing import Sequence

LN2 = math.log(2.0)


def ratio_with_stderr(sums: Sequence[float], counts: Sequence[float]) -> tuple[float, float | None]:
    """Ratio sum(sums)/sum(counts) and its clustered standard error (None with fewer than 2 clusters)."""
    if len(sums) != len(counts):
        raise ValueError("sums and counts must have the same length")
    total_units = float(sum(counts))
    if total_units <= 0:
        raise ValueError("nothing was scored (zero units)")
    ratio = float(sum(sums)) / total_units
    n = len(sums)
    if n < 2:
        return ratio, None
    sq = sum((x - ratio * u) ** 2 for x, u in zip(sums, counts))
    return ratio, math.sqrt(n / (n - 1) * sq) / total_units


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    return nll_nats / (LN2 * n_bytes)


def mean_with_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n))."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
