"""Data-parallel training with torchrun on the CPU (gloo, 2 processes): the loss curve, the weights and the score
equal a single-process run over the same global batch, for DDP and FSDP2; rank 0 alone writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.distributed import DistContext, shard_batch
from harness.errors import HarnessError
from harness.runner import RunConfig, run

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
ARGS = ["--model", "tpp", "--task", "bytes", "--steps", "5", "--batch-size", "4", "--seq-len", "16", "--limit", "256",
        "--eval-every", "0", "--checkpoint-every", "0", "--model-arg", "depth=2", "--model-arg", "dim=32",
        "--model-arg", "heads=2", "--device", "cpu", "--no-progress", "--no-leaderboard"]


def torchrun(out, data, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "harness", "train", *ARGS,
           "--data-file", str(data), "--output-path", str(out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = list((out / "runs").glob("*.json"))
    assert len(records) == 1, "rank 0 alone writes one record"
    return json.loads(records[0].read_text())


@pytest.mark.slow
def test_ddp_and_fsdp_equal_a_single_process(tmp_path, small_text):
    if not TORCHRUN.exists():
        pytest.skip(f"{TORCHRUN} not found")
    single, _ = run(RunConfig(model="tpp", task="bytes", steps=5, batch_size=4, seq_len=16, limit=256, eval_every=0,
                              checkpoint_every=0, model_args={"depth": "2", "dim": "32", "heads": "2"},
                              device="cpu", data_file=str(small_text), output_path=str(tmp_path / "single"),
                              progress=False, update_leaderboard=False))
    want = torch.load(single["checkpoint"], weights_only=True)["model"]
    for strategy, extra in (("ddp", ()), ("fsdp2", ("--fsdp",))):
        rec = torchrun(tmp_path / strategy, small_text, *extra)
        assert rec["distributed"]["strategy"] == strategy and rec["distributed"]["world_size"] == 2
        assert rec["training"]["tokens_seen"] == single["training"]["tokens_seen"]
        for (s1, ce1, _), (s2, ce2, _) in zip(single["training"]["curve"], rec["training"]["curve"], strict=True):
            assert s1 == s2 and ce1 == pytest.approx(ce2, abs=1e-5), strategy
        assert rec["metrics"]["bpb"]["value"] == pytest.approx(single["metrics"]["bpb"]["value"], abs=1e-5)
        got = torch.load(rec["checkpoint"], weights_only=True)["model"]  # a full, unsharded state dict
        assert set(got) == set(want)
        assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want), strategy


def test_batch_split_and_bad_batch_size():
    x = torch.arange(12).view(6, 2)
    parts = [shard_batch(DistContext(rank=r, world_size=3, backend="gloo"), x, x)[0] for r in range(3)]
    assert torch.equal(torch.cat(parts), x)
    with pytest.raises(HarnessError, match="not divisible by the 4 processes"):
        shard_batch(DistContext(rank=0, world_size=4, backend="gloo"), x, x)
