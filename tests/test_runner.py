"""The runner end to end on a tiny configuration: CLI run, record contents, resume == uninterrupted, NaN stop,
checkpoint scoring, and bad input."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from harness import runner as runner_mod
from harness.cli import cli, main
from harness.errors import HarnessError, TrainingDiverged
from harness.runner import RunConfig, run
from tasks.bytelevel import BytesTask, Enwik8Task

FAST = dict(model="transformer-pp", task="bytes", preset="tiny", batch_size=4, seq_len=32, limit=2048,
            eval_every=0, model_args={"depth": "1", "dim": "32", "heads": "2"}, progress=False)


def config(tmp_path, data_file, **kw):
    return RunConfig(**{**FAST, "data_file": str(data_file), "output_path": str(tmp_path / "results"), **kw})


def test_cli_tiny_run_writes_record_and_leaderboard(tmp_path, small_text):
    result = CliRunner().invoke(cli, [
        "eval", "--model", "transformer-pp", "--task", "bytes", "--data-file", str(small_text), "--steps", "30",
        "--batch-size", "8", "--seq-len", "64", "--limit", "1024", "--model-arg", "depth=2",
        "--output_path", str(tmp_path / "res"), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = list((tmp_path / "res" / "runs").glob("*.json"))
    assert len(records) == 1 and str(records[0]) in result.output
    rec = json.loads(records[0].read_text())
    for field in ("model", "preset", "params", "task", "metrics", "optimizer", "training", "seed", "device", "dtype",
                  "wall_time_s", "peak_memory_mb", "versions", "git", "task_info"):
        assert field in rec, field
    assert rec["training"]["tokens_seen"] == 30 * 8 * 64
    assert rec["task_info"]["sha256"] and rec["task_info"]["split"] == "90/5/5 by bytes"
    bpb = rec["metrics"]["bpb"]
    assert 0 < bpb["value"] < 8 and bpb["stderr"] > 0 and bpb["n"] == 1024  # learned something in 30 steps
    assert (tmp_path / "res" / "leaderboard.csv").read_text().count("transformer-pp") >= 2


def test_resume_is_bit_identical(tmp_path, small_text, interrupt_loss_at):
    full, _ = run(config(tmp_path / "a", small_text, steps=12, checkpoint_every=5))

    restore = interrupt_loss_at(8)  # dies during step 8, after the step-5 checkpoint
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path / "b", small_text, steps=12, checkpoint_every=5))
    restore()
    resumed, _ = run(config(tmp_path / "b", small_text, steps=12, checkpoint_every=5, resume=True))
    assert resumed["training"]["resumed_from_step"] == 5
    assert resumed["training"]["curve"] == full["training"]["curve"]
    assert resumed["metrics"]["bpb"]["value"] == full["metrics"]["bpb"]["value"]
    a = torch.load(full["checkpoint"], weights_only=True)["model"]
    b = torch.load(resumed["checkpoint"], weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, small_text, monkeypatch):
    original = runner_mod.lm_loss
    calls = {"n": 0}

    def poisoned(*args, **kw):
        calls["n"] += 1
        total, ce, aux = original(*args, **kw)
        return (total * math.nan, ce, aux) if calls["n"] == 7 else (total, ce, aux)

    monkeypatch.setattr(runner_mod, "lm_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="at step 6.*last good checkpoint") as err:
        run(config(tmp_path, small_text, steps=10, checkpoint_every=3))
    ckpt = str(err.value).split("checkpoint is ")[1].split(" (")[0]
    # step 6's weights gave the NaN: its checkpoint is never written (only once step 7's loss is finite)
    assert torch.load(ckpt, weights_only=True)["step"] == 3
    assert not list((tmp_path / "results" / "runs").glob("*.json"))  # no record for a failed run


def test_scoring_a_checkpoint_reproduces_the_score(tmp_path, small_text):
    trained, _ = run(config(tmp_path, small_text, steps=6))
    scored, _ = run(config(tmp_path, small_text, checkpoint=trained["checkpoint"]))
    assert scored["training"]["steps"] == 0
    assert scored["metrics"]["bpb"]["value"] == pytest.approx(trained["metrics"]["bpb"]["value"], rel=1e-6)


def test_bad_inputs_fail_with_one_line(tmp_path, small_text, capsys):
    cases = [
        (["eval", "--model", "transfomer-pp", "--task", "bytes"], "did you mean transformer-pp"),
        (["eval", "--model", "tpp", "--task", "bytes", "--data-file", str(tmp_path / "missing.txt")], "does not exist"),
        (["eval", "--model", "tpp", "--task", "bytes", "--data-file", str(small_text), "--preset", "huge"],
         "unknown preset 'huge'"),
        (["eval", "--model", "tpp", "--task", "bytes", "--data-file", str(small_text), "--model-arg", "dept=2"],
         "unknown model setting(s) dept"),
        (["eval", "--model", "tpp", "--task", "bytes", "--data-file", str(small_text), "--device", "cuda:0"],
         "no CUDA device"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv + ["--output_path", str(tmp_path / "r"), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2, argv
        assert expected in err and len(err.splitlines()) == 1, err


def test_corrupt_checkpoint_is_reported(tmp_path, small_text):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(HarnessError, match="cannot read checkpoint"):
        run(config(tmp_path, small_text, checkpoint=str(bad)))


def test_nan_stop_names_a_checkpoint_whose_weights_give_a_finite_loss(tmp_path, small_text, monkeypatch):
    """Issue 16: the checkpoint named after a NaN held the diverged weights (saved before the next loss was
    checked). A learning rate that explodes at step 3 makes step 4's weights diverge."""
    monkeypatch.setattr(runner_mod, "cosine_schedule", lambda *a: (lambda step: 1.0 if step < 3 else 1e30))
    with pytest.raises(TrainingDiverged, match="at step 4.*last good checkpoint") as err:
        run(config(tmp_path, small_text, steps=10, checkpoint_every=2))
    payload = torch.load(str(err.value).split("checkpoint is ")[1].split(" (")[0], weights_only=True)
    model = runner_mod.build_model("transformer-pp", "tiny", 256, FAST["model_args"])
    model.load_state_dict(payload["model"])
    batch = BytesTask(data_file=str(small_text)).train_batch(payload["step"], 4, 32, 0)
    with torch.no_grad():
        loss = runner_mod.lm_loss(model, *batch)[0]
    assert torch.isfinite(loss), loss
    assert payload["step"] == 2


def test_eval_steps_zero_records_no_validation(tmp_path, small_text):
    rec, _ = run(config(tmp_path, small_text, steps=2, eval_batches=0))
    assert rec["training"]["final_val_loss"] is None and rec["training"]["final_val_accuracy"] is None
    assert rec["training"]["val_curve"] == [] and any("not measured" in n for n in rec["notes"])


def test_record_carries_its_configuration_identity(tmp_path, small_text):
    from harness import identity

    rec, _ = run(config(tmp_path, small_text, steps=1))
    assert rec["config_id"] and identity.from_record({**rec, "config_id": None}) == rec["config_id"]
    again, _ = run(config(tmp_path, small_text, steps=1, seed=1, output_path=str(tmp_path / "elsewhere")))
    assert again["config_id"] == rec["config_id"]  # not the seed, not where results go
    other, _ = run(config(tmp_path, small_text, steps=1, lr=1e-5))
    assert other["config_id"] != rec["config_id"]


def no_training(*args, **kw):
    raise AssertionError("training started")


def test_unwritable_output_path_fails_before_training(tmp_path, small_text, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(runner_mod, "lm_loss", no_training)
    with pytest.raises(HarnessError, match="not writable"):
        run(config(tmp_path, small_text, steps=5, output_path=str(blocker)))


def test_options_are_validated_with_one_line(tmp_path, small_text, capsys):
    base = ["eval", "--model", "tpp", "--task", "bytes", "--data-file", str(small_text), "--steps", "1",
            "--output_path", str(tmp_path / "r"), "--no-progress"]
    cases = [(["--seed", "-1"], "--seed must be >= 0"), (["--limit", "-5"], "--limit must be >= 1"),
             (["--model-arg", "dim=-8"], "cannot be built with --model-arg dim=-8"),
             (["--task-arg", "colour=red"], "unknown option(s) colour for task bytes; accepted: data_file"),
             (["--eval-steps", "-1"], "--eval-steps must be >= 0"), (["--lr", "0"], "--lr must be")]
    for extra, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(base + extra)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and expected in err and len(err.splitlines()) == 1, (extra, err)
    assert not (tmp_path / "r" / "runs").exists() or not list((tmp_path / "r" / "runs").glob("*.json"))
    with pytest.raises(HarnessError, match="unknown option.*colour for task enwik8"):
        Enwik8Task(colour="red")  # rejected before any data is looked for


def test_too_little_data_for_a_validation_batch_fails_before_training(tmp_path, monkeypatch):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("x" * 2000)  # valid split: 100 bytes, fewer than one window of 129
    monkeypatch.setattr(runner_mod, "lm_loss", no_training)
    with pytest.raises(HarnessError, match="valid split"):
        run(config(tmp_path, tiny, steps=5, seq_len=128))
