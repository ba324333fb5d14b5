"""Statistics and reporting for A/B experiments (`harness ab arch|optimizer`): pure functions over run records.

A run record is a dict {"seed": s, "metrics": {name: value, ...}, "curve": [(step, train_loss), ...]}; a metric
value may be a number, a dict with "value", or an object with `.value` (tasks' Metric). Runs of A and B are paired
by seed (same data order, same init seed), and the comparison is made on the per-seed differences B - A:
  - each side: mean +- the 95% t-interval half-width over seeds,
  - the paired difference: mean of (B - A) with its 95% t-interval and a two-sided paired t-test p-value,
  - a verdict that names a winner only when the interval of the difference excludes zero, in the direction that
    is better for that metric (lower loss / perplexity / time / memory, higher accuracy); the aux loss means
    different things for different architectures, so it gets no winner.
The Student t distribution is computed here (regularised incomplete beta function by continued fractions,
Numerical Recipes 3rd ed. section 6.4), so nothing beyond the standard library is needed; tests check it against
tabulated quantiles (and scipy when it is installed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness.errors import HarnessError


# -- Student t -------------------------------------------------------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * t_two_sided_p(t, df)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on the cdf to ~1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# -- estimates -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    mean: float
    half_width: float  # of the confidence interval; nan with fewer than 2 values
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and t-interval half-width over independent values (seeds)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n < 2:
        return Estimate(mean, math.nan, n)
    if min(values) == max(values):  # no spread (avoid a rounding-noise interval like 1e-17)
        return Estimate(float(values[0]), 0.0, n)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n), n)


@dataclass(frozen=True)
class PairedDiff:
    estimate: Estimate  # of B - A
    p_value: float  # two-sided paired t-test; nan with fewer than 2 pairs

    @property
    def excludes_zero(self) -> bool:
        e = self.estimate
        return e.n >= 2 and not math.isnan(e.half_width) and (e.low > 0 or e.high < 0)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDiff:
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    diffs = [y - x for x, y in zip(a, b)]
    est = mean_ci(diffs, confidence)
    n = est.n
    if n < 2:
        return PairedDiff(est, math.nan)
    sd = math.sqrt(math.fsum((d - est.mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0.0:  # every pair differs by exactly the same amount
        return PairedDiff(Estimate(est.mean, 0.0, n), 1.0 if est.mean == 0.0 else 0.0)
    return PairedDiff(est, t_two_sided_p(est.mean / (sd / math.sqrt(n)), n - 1))


# -- records ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSpec:
    key: str  # name in record["metrics"]
    label: str  # row label
    better: str | None  # "lower" | "higher" | None (no winner is declared on this metric)


DEFAULT_METRICS = (
    MetricSpec("val_loss", "validation loss", "lower"),
    MetricSpec("val_accuracy", "validation accuracy", "higher"),
    MetricSpec("perplexity", "perplexity", "lower"),
    MetricSpec("aux_loss", "aux loss", None),
    MetricSpec("train_time_s", "training time (s)", "lower"),
    MetricSpec("peak_memory_mb", "peak memory (MB)", "lower"),
)


def metric_value(record: dict, key: str) -> float | None:
    value = (record.get("metrics") or {}).get(key)
    if isinstance(value, dict):
        value = value.get("value")
    elif value is not None and not isinstance(value, (int, float)):
        value = getattr(value, "value", None)
    return None if value is None else float(value)


def from_run_record(record: dict) -> dict:
    """The runner's run record (harness/runner.py) -> an A/B record: validation loss = the last periodic
    validation loss, validation accuracy = next-token accuracy on the same batches, perplexity = exp(validation
    loss) per token, aux loss = the last training step's, training
    time, peak memory, and every task metric under its own name (e.g. bpb, accuracy); curve = training CE."""
    training = record.get("training") or {}
    metrics: dict = {}
    val_curve = training.get("val_curve") or []
    if val_curve:
        metrics["val_loss"] = float(val_curve[-1][1])
        metrics["perplexity"] = math.exp(min(metrics["val_loss"], 700.0))
    curve = training.get("curve") or []
    if curve and len(curve[-1]) > 2:
        metrics["aux_loss"] = float(curve[-1][2])
    if training.get("train_time_s") is not None:
        metrics["train_time_s"] = float(training["train_time_s"])
    if record.get("peak_memory_mb") is not None:
        metrics["peak_memory_mb"] = float(record["peak_memory_mb"])
    task_metrics = record.get("metrics") or {}
    if training.get("final_val_accuracy") is not None:  # next-token accuracy on the fixed validation batches
        metrics["val_accuracy"] = float(training["final_val_accuracy"])
    for name in task_metrics:
        metrics.setdefault(f"task:{name}", metric_value(record, name))
    return {"seed": record.get("seed"), "metrics": metrics, "curve": [(int(r[0]), float(r[1])) for r in curve]}


def task_metric_specs(run_records: Sequence[dict]) -> tuple[MetricSpec, ...]:
    """DEFAULT_METRICS plus one row per task metric found in the runner's records, in its own direction."""
    specs, seen = list(DEFAULT_METRICS), set()
    for record in run_records:
        for name, value in (record.get("metrics") or {}).items():
            if name in seen:
                continue
            seen.add(name)
            higher = value.get("higher_is_better") if isinstance(value, dict) else getattr(value, "higher_is_better",
                                                                                           None)
            specs.append(MetricSpec(f"task:{name}", f"{name} (task)", None if higher is None else
                                    ("higher" if higher else "lower")))
    return tuple(specs)


def pair_by_seed(records_a: Sequence[dict], records_b: Sequence[dict]) -> list[tuple[int, dict, dict]]:
    """[(seed, record_a, record_b)] sorted by seed; unpaired or duplicated seeds are an error."""
    def by_seed(records, side):
        out = {}
        for r in records:
            if "seed" not in r:
                raise HarnessError(f"A/B: a run record of {side} has no seed")
            if r["seed"] in out:
                raise HarnessError(f"A/B: seed {r['seed']} appears twice in {side}")
            out[r["seed"]] = r
        return out

    a, b = by_seed(records_a, "A"), by_seed(records_b, "B")
    if set(a) != set(b):
        raise HarnessError(f"A/B runs are not paired: seeds of A {sorted(a)} vs seeds of B {sorted(b)}")
    return [(s, a[s], b[s]) for s in sorted(a)]


@dataclass(frozen=True)
class MetricComparison:
    spec: MetricSpec
    a: Estimate
    b: Estimate
    diff: PairedDiff  # B - A
    winner: str | None  # "A" | "B" | None

    @property
    def verdict(self) -> str:
        if self.diff.estimate.n < 2:
            return "n/a (1 seed)"
        if not self.diff.excludes_zero:
            return "no significant difference"
        if self.spec.better is None:
            return "differs (no better direction)"
        return f"{self.winner} better"


@dataclass(frozen=True)
class ABReport:
    label_a: str
    label_b: str
    seeds: list
    rows: list  # [MetricComparison] for metrics present in every run
    confidence: float


def compare(records_a: Sequence[dict], records_b: Sequence[dict], label_a: str = "A", label_b: str = "B",
            metrics: Sequence[MetricSpec] = DEFAULT_METRICS, confidence: float = 0.95) -> ABReport:
    pairs = pair_by_seed(records_a, records_b)
    rows = []
    for spec in metrics:
        a = [metric_value(ra, spec.key) for _, ra, _ in pairs]
        b = [metric_value(rb, spec.key) for _, _, rb in pairs]
        if any(v is None for v in a + b):
            continue  # not measured for every run: no row rather than a partial one
        diff = paired_difference(a, b, confidence)
        winner = None
        if diff.excludes_zero and spec.better is not None:
            b_is_higher = diff.estimate.mean > 0
            winner = "B" if b_is_higher == (spec.better == "higher") else "A"
        rows.append(MetricComparison(spec, mean_ci(a, confidence), mean_ci(b, confidence), diff, winner))
    return ABReport(label_a, label_b, [s for s, _, _ in pairs], rows, confidence)


# -- reporting -------------------------------------------------------------------------------------------------
def _num(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _pm(e: Estimate) -> str:
    return _num(e.mean) if math.isnan(e.half_width) else f"{_num(e.mean)} ± {_num(e.half_width)}"


def markdown_table(report: ABReport) -> str:
    pct = f"{report.confidence:.0%}"
    head = (f"| metric | A: {report.label_a} (mean ± {pct} CI) | B: {report.label_b} (mean ± {pct} CI) "
            f"| B − A [{pct} CI] | p | verdict |")
    lines = [head, "|---|---|---|---|---|---|"]
    for row in report.rows:
        d = row.diff.estimate
        interval = "n/a" if math.isnan(d.half_width) else f"[{_num(d.low)}, {_num(d.high)}]"
        better = f" ({row.spec.better} is better)" if row.spec.better else ""
        verdict = row.verdict.replace("A better", f"A ({report.label_a}) better").replace(
            "B better", f"B ({report.label_b}) better")
        lines.append(f"| {row.spec.label}{better} | {_pm(row.a)} | {_pm(row.b)} | {_num(d.mean)} {interval} "
                     f"| {_num(row.diff.p_value)} | {verdict} |")
    lines.append(f"\n{len(report.seeds)} paired seeds: {', '.join(map(str, report.seeds))}")
    return "\n".join(lines)


def verdict_line(report: ABReport, primary: str = "val_loss") -> str:
    """One line on the primary metric; a winner only when the CI of B - A excludes zero."""
    row = next((r for r in report.rows if r.spec.key == primary), None) or \
        next((r for r in report.rows if r.spec.better is not None), None)
    if row is None:
        return "Verdict: no comparable metric was measured in every run."
    d, n, pct = row.diff.estimate, row.diff.estimate.n, f"{report.confidence:.0%}"
    where = f"on {row.spec.label} ({row.spec.better} is better, {n} paired seed{'s' * (n != 1)})"
    if n < 2:
        return f"Verdict: no claim {where}: a confidence interval needs at least 2 seeds."
    stats = f"B − A = {_num(d.mean)}, {pct} CI [{_num(d.low)}, {_num(d.high)}], p = {_num(row.diff.p_value)}"
    if row.winner is None:
        return f"Verdict: no significant difference between {report.label_a} and {report.label_b} {where}: {stats}."
    name = report.label_a if row.winner == "A" else report.label_b
    return f"Verdict: {row.winner} ({name}) is better {where}: {stats}."


def plot_curves(records_a: Sequence[dict], records_b: Sequence[dict], path: str | Path, label_a: str = "A",
                label_b: str = "B", ylabel: str = "training loss") -> Path:
    """Loss curves of both variants in one PNG: each seed faint, the mean over seeds (at steps every seed logged)
    bold. Uses the Agg canvas directly, so no global matplotlib backend is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for records, label, color in ((records_a, f"A: {label_a}", "tab:blue"), (records_b, f"B: {label_b}", "tab:red")):
        curves = [dict((int(s), float(v)) for s, v in r.get("curve") or []) for r in records]
        for c in curves:
            if c:
                steps = sorted(c)
                ax.plot(steps, [c[s] for s in steps], color=color, alpha=0.25, linewidth=0.8)
        common = sorted(set.intersection(*(set(c) for c in curves))) if curves and all(curves) else []
        if common:
            ax.plot(common, [sum(c[s] for c in curves) / len(curves) for s in common], color=color, linewidth=2,
                    label=f"{label} (mean of {len(curves)} seeds)")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def default_plot_path(kind: str, label_a: str, label_b: str, root: str | Path = "results/plots") -> Path:
    safe = lambda s: "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)  # noqa: E731
    return Path(root) / f"ab_{safe(kind)}_{safe(label_a)}_vs_{safe(label_b)}.png"
