"""`harness sweep`: the local executor runs each job into its own record and a rerun skips finished jobs; the
Slurm path produces the submitit parameters and an sbatch array script without submitting anything."""

import json

from click.testing import CliRunner

from harness.cli import cli
from harness.runner import RunConfig
from harness.sweep import SlurmSpec, cli_args, expand, sbatch_script

TINY = ["--preset", "tiny", "--steps", "3", "--batch-size", "4", "--seq-len", "16", "--limit", "256",
        "--eval-every", "0", "--checkpoint-every", "0", "--model-arg", "depth=1", "--model-arg", "dim=32",
        "--model-arg", "heads=2"]


def test_local_sweep_runs_then_skips(tmp_path, small_text):
    out = tmp_path / "res"
    argv = ["sweep", "--models", "tpp", "--tasks", "bytes", "--seeds", "0,1", "--jobs", "2", "--data-file",
            str(small_text), "--output-path", str(out), *TINY]
    first = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "2 to run" in first.output and "2 ran, 0 failed" in first.output
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert sorted(r["seed"] for r in records) == [0, 1] and len({r["run_id"] for r in records}) == 2
    assert (out / "leaderboard.csv").exists()

    again = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert again.exit_code == 0 and "2 finished already (skipped), 0 to run" in again.output
    assert len(list((out / "runs").glob("*.json"))) == 2


def test_slurm_job_spec(tmp_path, small_text):
    base = RunConfig(model="?", task="?", steps=3, data_file=str(small_text), output_path=str(tmp_path / "r"),
                     model_args={"depth": "1"})
    configs = expand(["transformer-pp"], ["bytes"], [0, 1, 2], base)
    spec = SlurmSpec(partition="gpu", time_min=30, gpus=2, cpus=4, mem_gb=16, array_parallelism=2)
    params = spec.submitit_parameters()
    assert params["slurm_partition"] == "gpu" and params["timeout_min"] == 30
    assert params["slurm_gpus_per_node"] == 2 and params["cpus_per_task"] == 4 and params["mem_gb"] == 16
    script = sbatch_script(configs, spec, "logs")
    assert "#SBATCH --array=0-2%2" in script and "#SBATCH --partition=gpu" in script
    assert "#SBATCH --gpus-per-node=2" in script and script.count("--seed") == 3
    assert cli_args(configs[1])[:8] == ["eval", "--model", "transformer-pp", "--task", "bytes", "--preset", "tiny",
                                        "--optimizer"]
    assert "--resume" in cli_args(configs[1]) and "depth=1" in cli_args(configs[1])

    result = CliRunner().invoke(cli, ["sweep", "--models", "tpp", "--tasks", "bytes", "--seeds", "0,1",
                                      "--executor", "slurm", "--dry-run", "--slurm-partition", "gpu",
                                      "--data-file", str(small_text), "--output-path", str(tmp_path / "r"), *TINY])
    assert result.exit_code == 0, result.output
    assert "submitit parameters" in result.output and "#SBATCH --array=0-1" in result.output
    assert not (tmp_path / "r" / "runs").exists()  # nothing ran


def test_sweep_recognises_a_finished_babilong_run(tmp_path):
    """Issue 16: the sweep's job id left out the task's preset option and the runner's widening of the
    training context (babilong: 128 -> 256 tokens), so finished BABILong jobs were rerun and duplicated."""
    from harness.runner import run
    from harness.sweep import pending

    base = RunConfig(model="?", task="?", steps=1, batch_size=2, limit=1, eval_every=0, eval_batches=1,
                     checkpoint_every=0, output_path=str(tmp_path / "res"), progress=False,
                     model_args={"depth": "1", "dim": "32", "heads": "2"},
                     task_args={"source": "generator", "tasks": "qa1", "lengths": "0k", "samples": "1",
                                "curve_samples": "0", "tokenizer": "bytes"})  # bytes: the run widens 128 -> 256
    (job,) = expand(["transformer-pp"], ["babilong"], [0], base)
    record, _ = run(job)
    assert any("widened" in note for note in record["notes"])
    assert any("budget for preset tiny" in note for note in record["notes"])  # the task's own budget, recorded
    todo, done = pending([job])
    assert (len(todo), len(done)) == (0, 1)
    (other_seed,) = expand(["transformer-pp"], ["babilong"], [1], base)
    assert pending([other_seed])[0] == [other_seed]


def test_sweep_recognises_a_finished_run_whose_task_set_model_settings(tmp_path):
    """A BABILong protocol gives titans-mac model settings the command line did not; the sweep's job identity
    must include them as the runner's record does, or the finished job would run again."""
    from harness.runner import run
    from harness.sweep import pending

    base = RunConfig(model="?", task="?", steps=1, batch_size=2, limit=1, eval_every=0, eval_batches=1,
                     checkpoint_every=0, output_path=str(tmp_path / "res"), progress=False,
                     task_args={"source": "generator", "tasks": "qa1", "lengths": "0k", "samples": "1",
                                "curve_samples": "0", "protocol": "curriculum"})
    (job,) = expand(["titans-mac"], ["babilong"], [0], base)
    record, _ = run(job)
    assert record["model_args"]["chunk_size"] == "2" and job.model_args == {}
    assert pending([job]) == ([], [job])
