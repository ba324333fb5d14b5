"""Checkpoints are data, never code: a crafted pickle is refused before it runs anything, the runner's own
checkpoints load with weights_only=True for --checkpoint and --resume; a killed write leaves no temp file
behind for good; Ctrl-C prints the command that resumes the run."""

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import x_transformers  # noqa: F401  (loaded here, not under a test's capsys: its logger keeps the stderr it finds)

from harness.checkpoint import load_checkpoint
from harness.cli import interrupted_message, main
from harness.data import atomic_write_bytes
from harness.errors import HarnessError
from harness.runner import RunConfig, run

REPO = Path(__file__).resolve().parents[1]
TINY = {"model": "transformer-pp", "task": "bytes", "preset": "tiny", "batch_size": 2, "seq_len": 32,
        "limit": 256, "eval_every": 0, "model_args": {"depth": "1", "dim": "32", "heads": "2"},
        "progress": False, "update_leaderboard": False}


def config(tmp_path, data_file, **kw):
    return RunConfig(**{**TINY, "data_file": str(data_file), "output_path": str(tmp_path / "results"), **kw})


class Crafted:
    """Unpickling this creates `marker`: what a malicious checkpoint would do with a shell command instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"model": Crafted(marker), "model_name": "transformer-pp", "step": 1}, path)
    return path


def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path, small_text, capsys):
    marker = tmp_path / "pwned"
    evil = crafted_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(HarnessError, match="cannot read checkpoint") as err:
        load_checkpoint(evil)
    assert len(str(err.value).splitlines()) == 1 and "weights_only" in str(err.value)
    with pytest.raises(SystemExit) as code:  # --checkpoint from the command line
        main(["eval", "--model", "tpp", "--task", "bytes", "--data-file", str(small_text),
              "--checkpoint", str(evil), "--output_path", str(tmp_path / "r"), "--no-progress",
              "--no-leaderboard"])
    assert code.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    # --resume meets a crafted file where the run's own checkpoint was
    trained, _ = run(config(tmp_path, small_text, steps=2))
    crafted_checkpoint(Path(trained["checkpoint"]), marker)
    with pytest.raises(HarnessError, match="cannot read checkpoint"):
        run(config(tmp_path, small_text, steps=2, resume=True))
    assert not marker.exists()


def test_runner_checkpoints_load_weights_only_and_resume_bit_identically(tmp_path, small_text, interrupt_loss_at):
    full, _ = run(config(tmp_path / "a", small_text, steps=4, checkpoint_every=2))
    payload = torch.load(full["checkpoint"], weights_only=True)  # RNG states, history, run_config: plain data
    assert payload["seq_len"] == 32 and payload["tokenizer"] == "bytes"
    assert payload["rng"]["numpy"]["keys"].dtype == torch.int64

    restore = interrupt_loss_at(4)  # dies in step 4, after the step-2 checkpoint
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path / "b", small_text, steps=4, checkpoint_every=2))
    restore()
    resumed, _ = run(config(tmp_path / "b", small_text, steps=4, checkpoint_every=2, resume=True))
    assert resumed["training"]["resumed_from_step"] == 2
    assert resumed["training"]["curve"] == full["training"]["curve"]
    a, b = (load_checkpoint(r["checkpoint"])["model"] for r in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    scored, _ = run(config(tmp_path / "c", small_text, checkpoint=full["checkpoint"]))
    assert scored["metrics"]["bpb"]["value"] == pytest.approx(full["metrics"]["bpb"]["value"], rel=1e-6)


# -- a killed write ------------------------------------------------------------------------------------------

def test_a_killed_write_leaves_temp_files_that_the_next_write_removes(tmp_path):
    target = tmp_path / "run.pt"
    target.write_bytes(b"old")
    kill_mid_write = ("import os, signal; from harness import data; "
                      "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL); "
                      f"data.atomic_write_bytes({str(target)!r}, b'x' * 4096)")
    child = subprocess.run([sys.executable, "-c", kill_mid_write], cwd=REPO, timeout=60, check=False)
    assert child.returncode == -signal.SIGKILL
    leftovers = list(tmp_path.glob(".run.pt.*"))
    assert len(leftovers) == 1 and target.read_bytes() == b"old"

    host = socket.gethostname()
    live = tmp_path / f".run.pt.tmp-{host}-{os.getppid()}-abcd1234"  # a live writer's file in progress
    other_host = tmp_path / ".run.pt.tmp-elsewhere-1-abcd1234"  # cannot be checked, recent: kept
    old_style = tmp_path / ".run.pt.k3j_x9q2"  # the previous naming, an hour and more old: removed
    unrelated = tmp_path / ".other.pt.tmp-x-1-abcd1234"
    for path in (live, other_host, old_style, unrelated):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 7200
    os.utime(old_style, (hours_ago, hours_ago))

    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert not leftovers[0].exists() and not old_style.exists()
    assert live.exists() and other_host.exists() and unrelated.exists()
    assert sorted(p.name for p in tmp_path.glob(".run.pt.*")) == sorted([live.name, other_host.name])


# -- Ctrl-C --------------------------------------------------------------------------------------------------

def test_interrupted_message_names_the_resume_command():
    argv = ["eval", "--model", "tpp", "--task", "bytes", "--data-file", "my text.txt"]
    message = interrupted_message(argv, "results/checkpoints/x.pt")
    assert message.splitlines()[-1] == "resume with: harness eval --model tpp --task bytes --data-file " \
                                       "'my text.txt' --resume"
    assert "results/checkpoints/x.pt" in message
    assert interrupted_message([*argv, "--resume"], "x.pt").count("--resume") == 1
    assert "resume with" not in interrupted_message(argv, None)  # nothing to resume from
    assert "resume with" not in interrupted_message(["sweep", "--models", "tpp"], "x.pt")  # takes no --resume


def test_ctrl_c_prints_a_resume_command_that_resumes(tmp_path, small_text, interrupt_loss_at, capsys):
    argv = ["eval", "--model", "tpp", "--task", "bytes", "--data-file", str(small_text), "--steps", "4",
            "--batch-size", "2", "--seq-len", "32", "--limit", "256", "--checkpoint-every", "2",
            "--model-arg", "depth=1", "--model-arg", "dim=32", "--model-arg", "heads=2",
            "--output_path", str(tmp_path / "r"), "--no-progress", "--no-leaderboard"]
    restore = interrupt_loss_at(4)
    with pytest.raises(SystemExit) as code:
        main(argv)
    assert code.value.code == 130
    err = capsys.readouterr().err
    command = err.strip().splitlines()[-1]
    assert command.startswith("resume with: harness eval ") and command.endswith(" --resume"), err
    restore()
    main(shlex.split(command.removeprefix("resume with: harness ")))
    assert "resuming from step 2" in capsys.readouterr().out
