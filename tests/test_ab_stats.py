"""A/B statistics: the t distribution against tables (and scipy when present), paired comparisons that only
claim a winner when the interval excludes zero, the report, the plot, and a real A/B on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.ab import (compare, default_plot_path, markdown_table, mean_ci, paired_difference, plot_curves,
                        t_cdf, t_quantile, t_two_sided_p, verdict_line)
from harness.errors import HarnessError

# Two-sided 95% critical values t_{0.975, df} and 99% t_{0.995, df} (standard tables, 6 decimals).
T975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 9: 2.262157, 10: 2.228139,
        30: 2.042272, 120: 1.979930}
T995 = {1: 63.656741, 2: 9.924843, 5: 4.032143, 10: 3.169273}


@pytest.mark.parametrize("df,value", sorted(T975.items()))
def test_t_quantile_matches_tables(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=2e-6)
    assert t_quantile(0.025, df) == pytest.approx(-value, abs=2e-6)


@pytest.mark.parametrize("df,value", sorted(T995.items()))
def test_t_quantile_99(df, value):
    assert t_quantile(0.995, df) == pytest.approx(value, abs=2e-6)


def test_t_distribution_basics():
    assert t_cdf(0.0, 3) == pytest.approx(0.5, abs=1e-15)
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)  # Cauchy: 1/2 + atan(1)/pi
    assert t_two_sided_p(2.0, 2) == pytest.approx(1 - 2 / math.sqrt(6), abs=1e-12)  # closed form for df=2
    assert t_two_sided_p(T975[4], 4) == pytest.approx(0.05, abs=1e-7)


def test_against_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 19, 60):
        for p in (0.6, 0.9, 0.975, 0.999):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-9)
        for t in (-3.0, -0.5, 0.1, 1.7, 6.0):
            assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-9, abs=1e-12)
    a, b = [1.0, 2.0, 3.5, 2.2], [1.4, 2.1, 4.4, 2.9]
    assert paired_difference(a, b).p_value == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-9)


def test_mean_ci_by_hand():
    est = mean_ci([1.0, 2.0, 3.0])
    assert est.mean == 2.0 and est.half_width == pytest.approx(T975[2] * 1.0 / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci([5.0]).half_width)


def record(seed, val_loss, acc=None, curve=None, **extra):
    metrics = {"val_loss": val_loss, "perplexity": math.exp(val_loss), **extra}
    if acc is not None:
        metrics["val_accuracy"] = {"value": acc}  # Metric.to_dict()-style values are accepted
    return {"seed": seed, "metrics": metrics, "curve": curve or [(0, 5.0), (10, val_loss)]}


def test_identical_a_and_b_find_no_difference():
    runs = [record(s, 2.0 + 0.1 * s, acc=0.3 + 0.01 * s, aux_loss=0.01 * s) for s in range(3)]
    report = compare(runs, [dict(r) for r in runs], "titans-mac", "titans-mac")
    assert all(row.winner is None for row in report.rows)
    assert all(row.diff.p_value == 1.0 for row in report.rows)
    assert "no significant difference" in verdict_line(report)


def test_noise_without_a_shift_is_not_a_winner():
    a = [record(s, v) for s, v in enumerate([2.00, 2.10, 1.95, 2.05])]
    b = [record(s, v) for s, v in enumerate([2.03, 2.06, 1.97, 2.04])]  # differences +.03 -.04 +.02 -.01
    report = compare(a, b)
    row = report.rows[0]
    assert row.spec.key == "val_loss" and row.diff.estimate.low < 0 < row.diff.estimate.high
    assert row.winner is None and verdict_line(report).startswith("Verdict: no significant difference")


def test_clearly_worse_b_makes_a_the_winner_in_the_right_direction():
    a = [record(s, 2.0 + 0.05 * s, acc=0.40 + 0.01 * s, train_time_s=100.0 + s) for s in range(3)]
    b = [record(s, 3.1 + 0.04 * s, acc=0.20 + 0.012 * s, train_time_s=50.0 + s) for s in range(3)]
    report = compare(a, b, "muon", "deep-nested")
    winners = {row.spec.key: row.winner for row in report.rows}
    assert winners == {"val_loss": "A", "val_accuracy": "A", "perplexity": "A", "train_time_s": "B"}
    line = verdict_line(report)
    assert line.startswith("Verdict: A (muon) is better on validation loss") and "p = " in line
    table = markdown_table(report)
    assert "A (muon) better" in table and "B (deep-nested) better" in table and "3 paired seeds" in table


def test_aux_loss_never_has_a_winner():
    a = [record(s, 2.0, aux_loss=0.1) for s in range(3)]
    b = [record(s, 2.0, aux_loss=0.5 + 0.01 * s) for s in range(3)]
    row = next(r for r in compare(a, b).rows if r.spec.key == "aux_loss")
    assert row.diff.excludes_zero and row.winner is None and "no better direction" in row.verdict


def test_one_seed_claims_nothing():
    report = compare([record(0, 2.0)], [record(0, 9.0)])
    assert report.rows[0].winner is None and "at least 2 seeds" in verdict_line(report)


def test_unpaired_seeds_are_an_error():
    with pytest.raises(HarnessError, match="not paired"):
        compare([record(0, 2.0), record(1, 2.0)], [record(0, 2.0), record(2, 2.0)])
    with pytest.raises(HarnessError, match="twice"):
        compare([record(0, 2.0), record(0, 2.1)], [record(0, 2.0), record(1, 2.0)])


def test_plot_is_written(tmp_path):
    a = [record(s, 2.0, curve=[(0, 5.0), (5, 3.0), (10, 2.0)]) for s in range(2)]
    b = [record(s, 2.5, curve=[(0, 5.0), (5, 3.5), (10, 2.5)]) for s in range(2)]
    path = plot_curves(a, b, default_plot_path("optimizer", "deep-nested", "muon", tmp_path / "results" / "plots"),
                       "deep-nested", "muon")
    assert path.name == "ab_optimizer_deep-nested_vs_muon.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def _tiny_run(seed, lr, steps=8):
    """A miniature of what the runner does: same seed -> same init and data for A and B."""
    from harness.adapter import build_model
    from harness.presets import TINY
    from harness.registry import OPTIMIZERS

    torch.manual_seed(seed)
    model = build_model("transformer-pp", "tiny", 256, overrides=dict(dim=32, depth=1, heads=2))
    opt = OPTIMIZERS.load("adamw")(model, TINY, lr=str(lr))
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 64, (steps + 1, 4, 17), generator=g)  # 64 of 256 symbols: learnable fast
    curve = []
    for step in range(steps):
        logits, _ = model(data[step, :, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), data[step, :, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append((step, loss.item()))
    with torch.no_grad():
        logits, _ = model(data[steps, :, :-1])
        val = F.cross_entropy(logits.reshape(-1, 256), data[steps, :, 1:].reshape(-1)).item()
        acc = (logits.argmax(-1) == data[steps, :, 1:]).float().mean().item()
    return {"seed": seed, "metrics": {"val_loss": val, "val_accuracy": acc, "perplexity": math.exp(val)},
            "curve": curve}


def test_real_ab_handicapped_b_loses_and_self_comparison_ties():
    a = [_tiny_run(s, lr=1e-2) for s in range(3)]
    b = [_tiny_run(s, lr=0.0) for s in range(3)]
    again = [_tiny_run(s, lr=1e-2) for s in range(3)]
    assert verdict_line(compare(a, b, "adamw", "adamw-lr0")).startswith("Verdict: A (adamw) is better")
    assert "no significant difference" in verdict_line(compare(a, again, "adamw", "adamw"))


def test_runner_records_are_translated():
    from harness.ab import from_run_record, task_metric_specs

    def run_record(seed, bpb, val):
        return {"seed": seed, "peak_memory_mb": 120.0, "metrics": {"bpb": {"value": bpb, "stderr": 0.01, "n": 100,
                                                                           "higher_is_better": False}},
                "training": {"train_time_s": 10.0 + seed, "curve": [[1, 5.0, 0.0], [2, 4.0, 0.02]],
                             "val_curve": [[1, val + 1.0], [2, val]]}}

    a = [run_record(s, 1.2 + 0.01 * s, 2.0 + 0.01 * s) for s in range(3)]
    b = [run_record(s, 1.5 + 0.01 * s, 2.4 + 0.02 * s) for s in range(3)]
    flat = from_run_record(a[0])
    assert flat["metrics"]["val_loss"] == 2.0 and flat["metrics"]["perplexity"] == pytest.approx(math.exp(2.0))
    assert flat["metrics"]["aux_loss"] == 0.02 and flat["curve"] == [(1, 5.0), (2, 4.0)]
    report = compare([from_run_record(r) for r in a], [from_run_record(r) for r in b],
                     metrics=task_metric_specs(a + b))
    winners = {row.spec.key: row.winner for row in report.rows}
    assert winners["task:bpb"] == "A" and winners["val_loss"] == "A"
