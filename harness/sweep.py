"""Sweeps: every model x task x seed as its own job, locally in a process pool or on Slurm through submitit.

Each job is one `runner.run` and writes its own record. A job is finished when a record with its
configuration identity (harness/identity.py, as the runner records it) and seed exists under <results>/runs,
so rerunning a sweep skips finished jobs and runs only the rest (interrupted jobs also pick up their last
checkpoint: jobs run with resume=True).
"""

from __future__ import annotations

import shlex
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

from harness import identity, metric_logger
from harness.errors import HarnessError
from harness.registry import MODELS, PRESETS, TASKS
from harness.results import load_records, results_root


@dataclass
class SlurmSpec:
    partition: str | None = None
    time_min: int = 240
    gpus: int = 1
    cpus: int = 8
    mem_gb: int = 64
    array_parallelism: int = 16
    folder: str | None = None

    def submitit_parameters(self, name: str = "harness-sweep") -> dict:
        """Keyword arguments for submitit.AutoExecutor.update_parameters."""
        params = {"name": name, "timeout_min": self.time_min, "slurm_gpus_per_node": self.gpus,
                  "cpus_per_task": self.cpus, "mem_gb": self.mem_gb, "nodes": 1, "tasks_per_node": 1,
                  "slurm_array_parallelism": self.array_parallelism}
        if self.partition:
            params["slurm_partition"] = self.partition
        return params


def expand(models, tasks, seeds, base):
    """RunConfigs for every model x task x seed (names resolved now, so a typo fails before anything runs)."""
    PRESETS.resolve(base.preset)
    configs = []
    for model in models:
        for task in tasks:
            for seed in seeds:
                configs.append(replace(base, model=MODELS.resolve(model).name, task=TASKS.resolve(task).name,
                                       seed=seed, resume=True, checkpoint=None, update_leaderboard=False,
                                       progress=False))
    return configs


def job_identity(cfg) -> str:
    """The configuration identity the job's record will carry (harness/identity.py), computed from the run as the
    runner resolves it (runner.resolve_run: budget, task options, the task's model settings and training context;
    reads the task's data for its checksum)."""
    from harness.runner import config_identity, device_type, resolve_run

    cfg, budget, task, _ = resolve_run(cfg)
    return config_identity(cfg, budget, task.describe(), device_type(cfg.device))


def pending(configs) -> tuple[list, list]:
    """(jobs still to run, jobs already finished): a job is finished when a record of its configuration
    identity and seed exists under its output root."""
    done_ids: dict[Path, set] = {}
    todo, done = [], []
    for cfg in configs:
        root = results_root(cfg.output_path)
        if root not in done_ids:
            done_ids[root] = {(identity.from_record(rec), rec["seed"]) for _, rec in load_records(root)}
        (done if (job_identity(cfg), cfg.seed) in done_ids[root] else todo).append(cfg)
    return todo, done


def run_job(cfg) -> str:
    """One sweep job (top level so that process pools and submitit can pickle it)."""
    from harness.runner import run

    _, path = run(cfg)
    return str(path)


def cli_args(cfg) -> list[str]:
    """`harness eval` arguments that reproduce one job (for the sbatch script and the log)."""
    flags = {"steps": "--steps", "batch_size": "--batch-size", "seq_len": "--seq-len", "lr": "--lr",
             "eval_every": "--eval-every", "eval_batches": "--eval-steps", "checkpoint_every": "--checkpoint-every",
             "limit": "--limit", "data_dir": "--data-dir", "data_file": "--data-file",
             "output_path": "--output-path", "tensorboard": "--tensorboard", "wandb_project": "--wandb-project"}
    args = ["eval", "--model", cfg.model, "--task", cfg.task, "--preset", cfg.preset, "--optimizer", cfg.optimizer,
            "--seed", str(cfg.seed), "--device", cfg.device]
    if cfg.prefetch is not None:
        args += ["--prefetch", str(cfg.prefetch)]
    for name, flag in flags.items():
        value = getattr(cfg, name)
        if value is not None:
            args += [flag, str(value)]
    for kind, values in (("--model-arg", cfg.model_args), ("--task-arg", cfg.task_args),
                         ("--optimizer-arg", cfg.optimizer_args), ("--wandb-args", cfg.wandb_args)):
        for k, v in values.items():
            args += [kind, f"{k}={v}"]
    args += ["--resume", "--no-progress", "--no-leaderboard"] + (["--compile"] if cfg.compile else [])
    return args


def sbatch_script(configs, spec: SlurmSpec, log_dir: str) -> str:
    """An equivalent plain sbatch array script (what submitit submits, written out for review / manual use)."""
    lines = ["#!/bin/bash", "#SBATCH --job-name=harness-sweep", f"#SBATCH --array=0-{len(configs) - 1}%{spec.array_parallelism}", f"#SBATCH --time={spec.time_min}", f"#SBATCH --cpus-per-task={spec.cpus}",
             f"#SBATCH --mem={spec.mem_gb}G", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --output={log_dir}/%A_%a.out"]
    if spec.gpus:
        lines.append(f"#SBATCH --gpus-per-node={spec.gpus}")
    if spec.partition:
        lines.append(f"#SBATCH --partition={spec.partition}")
    lines += ["", "JOBS=("] + [f"  {shlex.quote(shlex.join(cli_args(c)))}" for c in configs] + [")",
              'eval "python -m harness ${JOBS[$SLURM_ARRAY_TASK_ID]}"', ""]
    return "\n".join(lines)


def submit_slurm(configs, spec: SlurmSpec, folder: str):
    try:
        import submitit
    except ImportError as exc:
        raise HarnessError("--executor slurm needs submitit: pip install 'memory-harness[slurm]'") from exc
    executor = submitit.AutoExecutor(folder=folder)
    executor.update_parameters(**spec.submitit_parameters())
    return executor.map_array(run_job, configs)


def main(models, tasks, seeds, base, executor="local", jobs=1, dry_run=False, slurm: SlurmSpec | None = None,
         log=print) -> int:
    if jobs < 1:
        raise HarnessError(f"--jobs must be >= 1, got {jobs}")
    metric_logger.require(base)  # --tensorboard / --wandb-project without the package: fail before any job
    configs = expand(models, tasks, seeds, base)
    todo, done = pending(configs)
    log(f"sweep: {len(configs)} jobs, {len(done)} finished already (skipped), {len(todo)} to run")
    for cfg in todo:
        log(f"  job: harness {shlex.join(cli_args(cfg))}")
    root = results_root(base.output_path)
    if executor == "slurm":
        spec = slurm or SlurmSpec()
        folder = spec.folder or str(root / "slurm")
        log(f"submitit parameters: {spec.submitit_parameters()}")
        if dry_run or not todo:
            log("sbatch equivalent:\n" + sbatch_script(todo, spec, folder) if todo else "nothing to submit")
            return 0
        submitted = submit_slurm(todo, spec, folder)
        log(f"submitted {len(submitted)} slurm jobs: {', '.join(j.job_id for j in submitted)}; logs in {folder}")
        return 0
    if dry_run or not todo:
        return 0
    failures = 0
    if jobs == 1:
        for cfg in todo:
            try:
                log(f"  record -> {run_job(cfg)}")
            except HarnessError as exc:
                failures += 1
                log(f"  FAILED {cfg.model} {cfg.task} seed {cfg.seed}: {exc}")
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_job, cfg): cfg for cfg in todo}
            for fut in as_completed(futures):
                cfg = futures[fut]
                try:
                    log(f"  record -> {fut.result()}")
                except Exception as exc:  # a failed job must not stop the others
                    failures += 1
                    log(f"  FAILED {cfg.model} {cfg.task} seed {cfg.seed}: {exc}")
    from harness.leaderboard import rebuild

    rebuild(root)
    log(f"sweep done: {len(todo) - failures} ran, {failures} failed, {len(done)} skipped")
    if failures:
        print(f"{failures} sweep jobs failed", file=sys.stderr)
    return 1 if failures else 0
