"""Live curves (harness/metric_logger.py): a real short `harness eval --tensorboard` whose event files, read back
with TensorBoard's own reader, hold exactly the curves the run record holds; the one-line error, before any data
is read, when the extra is not installed; a sweep passes the option on (one folder per run); and an offline W&B
run when wandb is installed."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import metric_logger
from harness import runner as runner_mod
from harness.cli import cli, main
from harness.runner import RunConfig
from harness.sweep import cli_args, expand
from tasks.bytelevel import BytesTask

TINY = ["--model", "transformer-pp", "--task", "bytes", "--preset", "tiny", "--batch-size", "4", "--seq-len", "32",
        "--limit", "512", "--model-arg", "depth=1", "--model-arg", "dim=32", "--model-arg", "heads=2",
        "--no-progress", "--no-leaderboard"]


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in a TensorBoard folder as [(step, value)], read with TensorBoard's own reader."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def only_record(results: Path) -> dict:
    records = list((results / "runs").glob("*.json"))
    assert len(records) == 1
    return json.loads(records[0].read_text())


def test_tensorboard_curves_match_the_record(tmp_path, small_text, monkeypatch):
    pytest.importorskip("tensorboard")
    # bytes has no progress metrics of its own: give it one, to check that task/... follows the record's task_curve
    monkeypatch.setattr(BytesTask, "progress_metrics", lambda self, model, *, device, seq_len: {"acc": 12.5},
                        raising=False)
    results, tb = tmp_path / "res", tmp_path / "tb"
    out = CliRunner().invoke(cli, ["eval", *TINY, "--data-file", str(small_text), "--steps", "6", "--eval-every", "3",
                                   "--output-path", str(results), "--tensorboard", str(tb)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    rec = only_record(results)
    tr = rec["training"]

    log_dir = Path(rec["logging"]["tensorboard"])
    assert log_dir.parent == tb and f"tensorboard -> {log_dir}" in out.output
    assert log_dir.name == f"transformer-pp_tiny_bytes_s0_{rec['run_id']}"  # identifies the run like its checkpoint
    assert Path(rec["checkpoint"]).stem == log_dir.name

    curves = scalars(log_dir)
    assert {"train/loss", "train/lr", "val/loss", "val/accuracy", "task/acc", "test/bpb", "test/nll"} <= set(curves)
    assert [s for s, _ in curves["train/loss"]] == [step for step, _, _ in tr["curve"]] == list(range(1, 7))
    assert [v for _, v in curves["train/loss"]] == pytest.approx([loss for _, loss, _ in tr["curve"]], abs=1e-5)
    assert len(curves["train/lr"]) == tr["steps"] and all(0 < v <= tr["lr"] for _, v in curves["train/lr"])
    assert [s for s, _ in curves["val/loss"]] == [step for step, _, _ in tr["val_curve"]] == [3, 6]
    assert [v for _, v in curves["val/loss"]] == pytest.approx([loss for _, loss, _ in tr["val_curve"]], abs=1e-5)
    assert [v for _, v in curves["val/accuracy"]] == pytest.approx([a for _, _, a in tr["val_curve"]], abs=1e-5)
    assert curves["task/acc"] == [(step, point["acc"]) for step, _, point in tr["task_curve"]] == [(3, 12.5), (6, 12.5)]
    for name, metric in rec["metrics"].items():
        assert curves[f"test/{name}"] == [(6, pytest.approx(metric["value"], rel=1e-6))]


def test_a_resumed_run_continues_its_curve(tmp_path, small_text, interrupt_loss_at):
    pytest.importorskip("tensorboard")
    cfg = RunConfig(model="transformer-pp", task="bytes", batch_size=4, seq_len=32, limit=256, eval_every=0,
                    model_args={"depth": "1", "dim": "32", "heads": "2"}, progress=False, steps=6,
                    checkpoint_every=3, data_file=str(small_text), output_path=str(tmp_path / "res"),
                    tensorboard=str(tmp_path / "tb"))
    restore = interrupt_loss_at(5)  # dies in step 5, after logging steps 1-4 and writing the step-3 checkpoint
    with pytest.raises(KeyboardInterrupt):
        runner_mod.run(cfg)
    restore()
    record, _ = runner_mod.run(replace(cfg, resume=True))
    assert record["training"]["resumed_from_step"] == 3
    curve = scalars(Path(record["logging"]["tensorboard"]))["train/loss"]  # step 4 of the first try is purged
    assert [s for s, _ in curve] == list(range(1, 7))
    assert [v for _, v in curve] == pytest.approx([loss for _, loss, _ in record["training"]["curve"]], abs=1e-5)


@pytest.mark.parametrize("flag,package", [(["--tensorboard", "tb"], "tensorboard"),
                                          (["--wandb-project", "p"], "wandb")])
def test_missing_extra_fails_in_one_line_before_training(tmp_path, small_text, monkeypatch, capsys, flag, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError

    def no_data(cfg):
        raise AssertionError("the task's data was read before the missing package was reported")

    monkeypatch.setattr(runner_mod, "load_task", no_data)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *TINY, "--data-file", str(small_text), "--steps", "2", "--output-path", str(tmp_path / "r"),
              *flag])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and f'pip install -e ".[{package}]"' in err and flag[0] in err, err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_sweep_gives_each_run_its_own_folder(tmp_path, small_text):
    pytest.importorskip("tensorboard")
    base = RunConfig(model="?", task="?", tensorboard=str(tmp_path / "tb"), wandb_args={"group": "g"})
    job = expand(["tpp"], ["bytes"], [0], base)[0]
    args = cli_args(job)
    assert args[args.index("--tensorboard") + 1] == str(tmp_path / "tb") and "group=g" in args

    results = tmp_path / "res"
    out = CliRunner().invoke(cli, ["sweep", "--models", "tpp", "--tasks", "bytes", "--seeds", "0,1", "--data-file",
                                   str(small_text), "--steps", "2", "--eval-every", "0", "--output-path", str(results),
                                   "--tensorboard", str(tmp_path / "tb"), *TINY[4:]], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    folders = sorted(Path(r["logging"]["tensorboard"]) for r in records)
    assert sorted(p.name for p in folders) == sorted(
        f"transformer-pp_tiny_bytes_s{r['seed']}_{r['run_id']}" for r in records)
    assert len(set(folders)) == 2 and all(p.parent == tmp_path / "tb" for p in folders)
    for folder in folders:
        assert [s for s, _ in scalars(folder)["train/loss"]] == [1, 2]


def test_wandb_offline_run(tmp_path, small_text, monkeypatch):
    pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "wb-config",
                        "WANDB_CACHE_DIR": tmp_path / "wb-cache", "WANDB_DATA_DIR": tmp_path / "wb-data"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("WANDB_DIR", raising=False)
    sent: list[tuple[int, dict]] = []
    original = metric_logger.WandbLogger.log

    def spy(self, step, metrics):
        sent.append((step, dict(metrics)))
        original(self, step, metrics)

    monkeypatch.setattr(metric_logger.WandbLogger, "log", spy)
    results = tmp_path / "res"
    out = CliRunner().invoke(cli, ["eval", *TINY, "--data-file", str(small_text), "--steps", "3", "--eval-every", "0",
                                   "--output-path", str(results), "--wandb-project", "harness-test",
                                   "--wandb-args", "group=unit,job_type=test"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    rec = only_record(results)
    wb = rec["logging"]["wandb"]
    assert wb["project"] == "harness-test" and wb["name"] == Path(rec["checkpoint"]).stem and wb["url"] is None
    run_dir = Path(wb["dir"])
    assert run_dir.parent == results / "wandb" and list(run_dir.glob("run-*.wandb"))  # offline: kept on disk
    assert f"wandb -> {run_dir}" in out.output
    assert [s for s, m in sent if "train/loss" in m] == [1, 2, 3]
    assert sent[-1] == (3, {f"test/{k}": m["value"] for k, m in rec["metrics"].items()})
