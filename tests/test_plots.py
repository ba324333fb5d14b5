"""Leaderboard plots: every kind is drawn from records, and `harness leaderboard` says where they went."""

import pytest
from click.testing import CliRunner

from harness.cli import cli
from harness.plots import context_length, write_plots
from harness.results import write_record


def record(model, task, metrics, params=1000, seed=0, preset="tiny", primary="bpb"):
    return {"run_id": f"{model}{task}{seed}{preset}", "created": "2026-11-23T00:00:00Z", "model": model,
            "preset": preset, "params": params, "task": task, "primary_metric": primary, "seed": seed,
            "optimizer": "adamw", "metrics": metrics, "task_info": {"sha256": "abc"}, "git": {"hash": "f" * 40},
            "training": {"steps": 3, "tokens_seen": 96, "curve": [[1, 5.5, 0.0], [2, 5.0, 0.0], [3, 4.2, 0.0]]}}


def metric(value, hib=False):
    return {"value": value, "stderr": 0.01, "n": 100, "higher_is_better": hib}


def test_context_length_labels():
    assert context_length("acc/mean/0k") == 0 and context_length("acc/mean/4k") == 4096
    assert context_length("acc/mean/1M") == 1024 ** 2 and context_length("acc/qa1/4k") is None
    assert context_length("acc/mean") is None


def test_leaderboard_writes_all_plots(tmp_path):
    for model, params in (("a", 1000), ("b", 3000)):
        for preset, scale in (("tiny", 1), ("small", 10)):
            write_record(record(model, "bytes", {"bpb": metric(2.0 / scale)}, params * scale, preset=preset), tmp_path)
        write_record(record(model, "babilong", {"acc/mean": metric(50, True), "acc/mean/0k": metric(80, True),
                                                "acc/mean/4k": metric(20, True)}, params, primary="acc/mean"),
                     tmp_path)
    paths = write_plots(tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["babilong_acc_vs_length.png", "loss_babilong.png", "loss_bytes.png",
                     "score_vs_params_bytes_bpb.png"]
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    result = CliRunner().invoke(cli, ["leaderboard", "--output-path", str(tmp_path), "--task", "bytes"])
    assert result.exit_code == 0, result.output
    assert f"plot -> {tmp_path / 'plots' / 'score_vs_params_bytes_bpb.png'}" in result.output
    assert "babilong_acc_vs_length" not in result.output  # the filter applies to the plots too


def test_babilong_learning_curves_average_seeds_and_keep_configurations_apart(tmp_path):
    """From records the runner writes: two seeds of one configuration average point by point, a second protocol
    of the same model is its own line in both BABILong plots."""
    import json

    from harness.plots import learning_curve_lines
    from harness.results import load_records
    from harness.runner import RunConfig, run

    base = {"tasks": "qa1", "lengths": "0k", "samples": "2", "curve_samples": "2"}
    for seed, extra in ((0, {}), (1, {}), (0, {"protocol": "curriculum"})):
        run(RunConfig(model="transformer-pp", task="babilong", preset="tiny", steps=4, batch_size=2, eval_every=2,
                      eval_batches=1, seed=seed, output_path=str(tmp_path), progress=False,
                      update_leaderboard=False, task_args={**base, **extra}))
    records = load_records(tmp_path)
    lines = learning_curve_lines(records)
    assert len(lines) == 2 and all(label.startswith("transformer-pp tiny [") for label in lines)
    standard = [r for _, r in records if "protocol" not in r["task_args"]]
    label = next(label for label, by_metric in lines.items() if max(p[3] for p in by_metric["acc/mean/0k"]) == 2)
    for i, (tokens, mean, err, n) in enumerate(lines[label]["acc/mean/0k"]):
        values = [r["training"]["task_curve"][i][2]["acc/mean/0k"] for r in standard]
        assert tokens == standard[0]["training"]["task_curve"][i][1] and n == 2
        assert mean == sum(values) / 2 and err == abs(values[0] - values[1]) / 2
    names = sorted(p.name for p in write_plots(tmp_path))
    assert "babilong_learning_curve.png" in names and "babilong_acc_vs_length.png" in names
    assert json.dumps(lines)  # plain numbers, nothing a plot could not draw


def test_needle_plot_averages_seeds_for_accuracy_and_peak_memory(tmp_path):
    """From records the runner writes: each length's accuracy is the leaderboard's mean over seeds, its peak memory
    the mean of the records' per-length peaks, and both land in needle_acc_vs_length.png."""
    from harness.leaderboard import aggregate
    from harness.plots import needle_lines
    from harness.results import load_records
    from harness.runner import RunConfig, run

    for seed in (0, 1):
        run(RunConfig(model="titans-lmm", task="needle", preset="tiny", steps=2, batch_size=2, eval_every=0,
                      seed=seed, model_args={"depth": "1"}, output_path=str(tmp_path), progress=False,
                      update_leaderboard=False, task_args={"lengths": "256,1k", "samples": "2", "train_length": "64"}))
    records = load_records(tmp_path)
    (label, line), = needle_lines(aggregate(records), records).items()
    assert label == "titans-lmm tiny"
    assert [(p[0], p[3]) for p in line["acc"]] == [(256, "256"), (1024, "1k")]
    peaks = [r["task_info"]["evaluation"]["peak_memory_mb"] for _, r in records]
    for tokens, mean, err, name in line["peak_memory_mb"]:
        assert mean == pytest.approx(sum(p[name] for p in peaks) / 2)
        assert err == pytest.approx(abs(peaks[0][name] - peaks[1][name]) / 2)
    assert "needle_acc_vs_length.png" in [p.name for p in write_plots(tmp_path)]
