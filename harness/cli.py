"""`harness` command line: list what is registered, train + score a model on a task, rebuild the leaderboard."""

from __future__ import annotations

import shlex
import sys

import click

from harness.errors import HarnessError


class UsageFailure(click.ClickException):
    exit_code = 2

    def show(self, file=None):
        click.echo(f"error: {self.message}", err=True)


def _key_values(pairs: tuple[str, ...], flag: str) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageFailure(f"{flag} takes KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Benchmark harness for long-context memory architectures."""


@cli.command("ls")
@click.argument("what", type=click.Choice(["models", "tasks", "optimizers", "presets"]), default="models")
def ls_command(what):
    """List registered models (with parameter counts per preset), tasks, optimizers or presets."""
    from harness.registry import MODELS, OPTIMIZERS, PRESETS, TASKS

    registry = {"models": MODELS, "tasks": TASKS, "optimizers": OPTIMIZERS, "presets": PRESETS}[what]
    if what == "models":
        from harness.inspect import parameter_table
        click.echo(parameter_table())
        return
    for entry in registry:
        aliases = f"  (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
        click.echo(f"{entry.name:<16} {entry.summary}{aliases}")


@cli.group("data")
def data_group():
    """Datasets: the catalog (ls), download + check into the data folder (fetch), check what is there (verify).
    Data is looked for in --data-dir, then $HARNESS_DATA_DIR, then the cache (~/.cache/memory-harness)."""


@data_group.command("ls")
@click.option("--data-dir", type=click.Path(), help="a data folder looked in first")
def data_ls_command(data_dir):
    """The dataset catalog: each dataset, whether it is cached and where, its size and source."""
    from harness import data_catalog

    click.echo(data_catalog.format_listing(data_catalog.listing(data_dir), data_dir))


@data_group.command("fetch")
@click.argument("names", nargs=-1, required=True)
@click.option("--data-dir", type=click.Path(), help="write here [default $HARNESS_DATA_DIR, else the cache]")
@click.option("--force", is_flag=True, help="download again files that are there and pass their check")
def data_fetch_command(names, data_dir, force):
    """Download the named datasets (the only command that goes online), check sizes and sha256 where known, write
    each file atomically and print where they went."""
    from harness import data_catalog

    for name in [data_catalog.get(n).name for n in names]:  # every name checked before anything is downloaded
        data_catalog.fetch(name, data_dir, force=force, log=click.echo)


@data_group.command("verify")
@click.argument("names", nargs=-1)
@click.option("--data-dir", type=click.Path(), help="a data folder looked in first")
def data_verify_command(names, data_dir):
    """Check the datasets present (every file's size and sha256 where known): name, status (ok / missing /
    mismatch), path. Exits 1 on a mismatch, or when a dataset named here is not ok."""
    from harness import data_catalog

    checks = [c for name in names for c in data_catalog.verify(name, data_dir)] if names else \
        data_catalog.verify(None, data_dir)
    click.echo(data_catalog.format_checks(checks))
    if any(c.status == "mismatch" for c in checks) or (names and any(c.status != "ok" for c in checks)):
        sys.exit(1)


def _run_options(f=None, *, model_required: bool = True):
    if f is None:
        return lambda g: _run_options(g, model_required=model_required)
    options = [
        click.option("--model", required=model_required, help="registered model name (harness ls models)"),
        click.option("--task", required=True, help="registered task name (harness ls tasks)"),
        click.option("--preset", default="tiny", show_default=True, help="scale: model flavor + training budget"),
        click.option("--optimizer", default="adamw", show_default=True),
        click.option("--steps", type=int, help="training steps (overrides the preset; 0 scores without training)"),
        click.option("--batch-size", type=int), click.option("--seq-len", type=int), click.option("--lr", type=float),
        click.option("--eval-every", type=int, help="validation every N steps (0: only at the end)"),
        click.option("--eval-steps", "eval_batches", type=int, help="validation batches per evaluation"),
        click.option("--checkpoint-every", type=int),
        click.option("--limit", type=int, help="cap what the test evaluation scores (bytes/tokens/samples)"),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--data-dir", type=click.Path(), help="folder with the task's data files"),
        click.option("--data-file", type=click.Path(), help="a text file or folder of .txt files (task bytes)"),
        click.option("--model-arg", multiple=True, help="KEY=VALUE model setting override (repeatable)"),
        click.option("--task-arg", multiple=True, help="KEY=VALUE task option (repeatable)"),
        click.option("--optimizer-arg", multiple=True, help="KEY=VALUE optimizer option (repeatable)"),
        click.option("--checkpoint", type=click.Path(), help="score these weights instead of training"),
        click.option("--resume", is_flag=True, help="continue this configuration's last checkpoint"),
        click.option("--output_path", "--output-path", "output_path", type=click.Path(),
                     help="results folder (default ./results or $HARNESS_RESULTS_DIR)"),
        click.option("--compile", is_flag=True, help="torch.compile the model"),
        click.option("--prefetch", type=int, default=None, show_default="2 on CUDA, 0 on the CPU",
                     help="batches built ahead in a background thread (0: off); results are identical"),
        click.option("--no-amp", is_flag=True, help="CUDA: no bf16 autocast / TF32 (float32 throughout)"),
        click.option("--no-progress", is_flag=True, help="no progress bars"),
        click.option("--no-leaderboard", is_flag=True, help="do not rebuild the leaderboard"),
        click.option("--tensorboard", type=click.Path(), metavar="DIR",
                     help="log train/val/test curves as TensorBoard event files under DIR/<run name> "
                     "(pip install -e \".[tensorboard]\")"),
        click.option("--wandb-project", metavar="NAME",
                     help="log the same curves to this Weights & Biases project (pip install -e \".[wandb]\"; "
                     "WANDB_MODE=offline keeps them on disk)"),
        click.option("--wandb-args", multiple=True, metavar="KEY=VALUE",
                     help="wandb.init keyword, e.g. entity=me or group=g (repeatable, or comma-separated like "
                     "lm-eval's --wandb_args)"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def config_from_options(opts: dict):
    from harness.runner import RunConfig

    return RunConfig(
        model=opts["model"], task=opts["task"], preset=opts["preset"], optimizer=opts["optimizer"],
        seed=opts["seed"], steps=opts["steps"], batch_size=opts["batch_size"], seq_len=opts["seq_len"],
        lr=opts["lr"], eval_every=opts["eval_every"], eval_batches=opts["eval_batches"],
        checkpoint_every=opts["checkpoint_every"], limit=opts["limit"], device=opts["device"],
        data_dir=opts["data_dir"], data_file=opts["data_file"],
        model_args=_key_values(opts["model_arg"], "--model-arg"),
        task_args=_key_values(opts["task_arg"], "--task-arg"),
        optimizer_args=_key_values(opts["optimizer_arg"], "--optimizer-arg"),
        checkpoint=opts["checkpoint"], resume=opts["resume"], output_path=opts["output_path"],
        update_leaderboard=not opts["no_leaderboard"], progress=not opts["no_progress"], compile=opts["compile"],
        prefetch=opts.get("prefetch"), amp=not opts.get("no_amp", False), test=not opts.get("no_test", False),
        fsdp=opts.get("fsdp"), tensorboard=opts.get("tensorboard"), wandb_project=opts.get("wandb_project"),
        wandb_args=_key_values(tuple(x for arg in opts.get("wandb_args") or () for x in arg.split(",") if x),
                               "--wandb-args"))


@cli.command("eval")
@_run_options
def eval_command(**opts):
    """Train MODEL on TASK with the preset's budget (or load --checkpoint), score it on the test split, write a
    run record and update the leaderboard."""
    from harness.report import print_run
    from harness.runner import run

    record, path = run(config_from_options(opts))
    print_run(record, path)


def _ab_command(kind: str):
    side = "model" if kind == "arch" else "optimizer"

    @click.option("--a", "name_a", required=True, help=f"the A {side}")
    @click.option("--b", "name_b", required=True, help=f"the B {side}")
    @click.option("--seeds", default=3, show_default=True, type=int, help="paired seeds 0..N-1")
    @click.option("--a-arg", multiple=True, help=f"KEY=VALUE {side} setting for A only")
    @click.option("--b-arg", multiple=True, help=f"KEY=VALUE {side} setting for B only")
    @_run_options(model_required=kind != "arch")
    def command(name_a, name_b, seeds, a_arg, b_arg, **opts):
        if kind == "arch" and opts["model"]:
            raise UsageFailure("harness ab arch takes the two models as --a and --b, not --model")
        from harness.experiments import run_ab
        from harness.results import atomic_write_bytes_text

        base = config_from_options({**opts, side: name_a})
        report, table, verdict, plot, paths = run_ab(
            kind, name_a, name_b, base, list(range(seeds)), _key_values(a_arg, "--a-arg"),
            _key_values(b_arg, "--b-arg"))
        click.echo("\n" + table + "\n\n" + verdict)
        out = atomic_write_bytes_text(plot.with_suffix(".md"), table + "\n\n" + verdict + "\n")
        click.echo(f"loss curves -> {plot}\nreport -> {out}\nrun records -> {paths[0].parent} ({len(paths)} runs)")

    return command


@cli.group("ab")
def ab_group():
    """A/B experiments: everything held constant but the architecture (arch) or the optimizer (optimizer)."""


_arch = _ab_command("arch")
_arch.__doc__ = "A/B of two architectures (--a, --b) with the same task, optimizer, data order and budget."
ab_group.command("arch")(_arch)
_opt = _ab_command("optimizer")
_opt.__doc__ = "A/B of two optimizers (--a, --b) on the same model (--model), task, data order and budget."
ab_group.command("optimizer")(_opt)


@cli.command("train")
@_run_options
@click.option("--no-test", is_flag=True, help="train and checkpoint only; do not score the test split")
@click.option("--fsdp/--ddp", "fsdp", default=None,
              help="under torchrun: FSDP2 sharding or DDP (default: FSDP2 for medium/large presets)")
def train_command(**opts):
    """Train MODEL on TASK, checkpoint, score (unless --no-test) and write a record. Runs data-parallel on
    several processes when launched with `torchrun --nproc_per_node N -m harness train ...` (rank 0 writes)."""
    from harness import distributed
    from harness.report import print_run
    from harness.runner import run

    try:
        record, path = run(config_from_options(opts))
        if path is not None:
            print_run(record, path)
    finally:
        distributed.teardown()


@cli.command("leaderboard")
@click.option("--output_path", "--output-path", "output_path", type=click.Path(), help="results folder")
@click.option("--model", help="only this model")
@click.option("--task", help="only this task")
@click.option("--preset", help="only this preset")
@click.option("--no-plots", is_flag=True, help="skip the plots in <results>/plots")
def leaderboard_command(output_path, model, task, preset, no_plots):
    """Rebuild results/leaderboard.csv (long) and leaderboard.md (wide) from the run records."""
    from harness.leaderboard import rebuild
    from harness.registry import MODELS, TASKS
    from harness.results import results_root

    model = MODELS.resolve(model).name if model else None
    task = TASKS.resolve(task).name if task else None
    csv_path, md_path, n = rebuild(results_root(output_path), model=model, task=task, preset=preset)
    click.echo(md_path.read_text())
    click.echo(f"{n} rows -> {csv_path}\nwide table -> {md_path}")
    if not no_plots:
        from harness.plots import write_plots

        for plot in write_plots(results_root(output_path), model=model, task=task, preset=preset):
            click.echo(f"plot -> {plot}")


def _csv_list(text: str | None, flag: str) -> list[str]:
    items = [x.strip() for x in (text or "").split(",") if x.strip()]
    if not items:
        raise UsageFailure(f"{flag} takes a comma-separated list, got {text!r}")
    return items


@cli.command("regress")
@click.option("--suite", default="ci", show_default=True, help="the fixed regression suite to run")
@click.option("--update", is_flag=True, help="rerun with several seeds and rewrite the reference")
@click.option("--seeds", help="with --update: seed count N (seeds 0..N-1) or a list 0,1,2 [default 3]")
@click.option("--reference", type=click.Path(), help="reference CSV [default results/reference/<suite>.csv]")
@click.option("--models", help="only these models (comma-separated; default every registered model)")
@click.option("--data-file", type=click.Path(), help="byte-level text for the LM cases [default: pg19 from "
              "$HARNESS_DATA_DIR or the cache; harness data fetch pg19]")
@click.option("--device", default="cpu", show_default=True)
@click.option("--output_path", "--output-path", "output_path", type=click.Path(),
              help="where the suite's run records go [default a temporary folder]")
@click.option("--tasks", help="only these tasks' cases (comma-separated, e.g. mqar)")
def regress_command(suite, update, seeds, reference, models, data_file, device, output_path, tasks):
    """Run the regression suite and compare every score with the reference (exit 1 naming each metric that
    moved beyond its tolerance, and when the reference is missing, empty or lacks a case); --update --seeds 3
    measures the seed spread and rewrites the reference."""
    from harness.regress import main as regress_main

    code = regress_main(suite=suite, update=update, seeds=seeds, reference=reference,
                        models=_csv_list(models, "--models") if models else None, data_file=data_file,
                        device=device, output_path=output_path,
                        tasks=_csv_list(tasks, "--tasks") if tasks else None)
    if code:
        sys.exit(code)


@cli.command("bench")
@click.option("--models", default="all", show_default=True, help="comma-separated model names, or all")
@click.option("--preset", default="tiny", show_default=True)
@click.option("--seq-lens", default="256,1024,4096", show_default=True, help="comma-separated sequence lengths")
@click.option("--batch-size", type=int, default=1, show_default=True, help="sequences per measured step")
@click.option("--warmup", type=int, default=2, show_default=True, help="untimed steps before measuring")
@click.option("--repeats", type=int, default=5, show_default=True, help="timed steps (median and spread)")
@click.option("--device", default="auto", show_default=True)
@click.option("--compile", "compile_mode", type=click.Choice(["off", "on", "both"]), default="off",
              show_default=True, help="torch.compile the measured model; both: each row eager and compiled, "
              "with the on/off ratios in compile.csv")
@click.option("--switches", default="", help="performance switches to measure on and off: "
              "prefetch,eval,amp (amp on CUDA only)")
@click.option("--switch-steps", type=int, default=20, show_default=True, help="training steps per switch run")
@click.option("--data-file", type=click.Path(), help="text for the switch runs [default: pg19 from "
              "$HARNESS_DATA_DIR or the cache; harness data fetch pg19]")
@click.option("--output-dir", type=click.Path(), default="results/bench", show_default=True)
@click.option("--model-arg", multiple=True, help="KEY=VALUE model setting override for every model (throughput rows; repeatable)")
@click.option("--in-process", is_flag=True, help="CPU: measure in this process instead of a fresh child process "
              "per model and length (faster, but memory left by earlier models inflates later rows)")
def bench_command(models, preset, seq_lens, batch_size, warmup, repeats, device, compile_mode, switches,
                  switch_steps, data_file, output_dir, model_arg, in_process):
    """Training and inference tokens/s, peak memory and MFU per model and sequence length; CSV + plot."""
    from harness.bench import main as bench_main

    try:
        lens = [int(x) for x in _csv_list(seq_lens, "--seq-lens")]
    except ValueError as exc:
        raise UsageFailure(f"--seq-lens takes integers like 256,1024, got {seq_lens!r}") from exc
    bench_main(models=_csv_list(models, "--models"), preset=preset, seq_lens=lens, batch_size=batch_size,
               warmup=warmup, repeats=repeats, device=device,
               switches=[x for x in switches.split(",") if x.strip()], switch_steps=switch_steps,
               data_file=data_file, output_dir=output_dir, model_args=_key_values(model_arg, "--model-arg"),
               in_process=in_process, compile_mode=compile_mode)


def _sweep_options(f):
    """The run options of `eval`, less the ones a sweep sets per job (model, task, seed, checkpoint, resume)."""
    def template():
        pass
    skip = {"model", "task", "seed", "checkpoint", "resume"}
    params = [p for p in _run_options(template).__click_params__ if p.name not in skip]
    f.__click_params__ = getattr(f, "__click_params__", []) + params
    return f


@cli.command("sweep")
@click.option("--models", required=True, help="comma-separated model names")
@click.option("--tasks", required=True, help="comma-separated task names")
@click.option("--seeds", default="0", show_default=True, help="comma-separated seeds")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True)
@click.option("--jobs", type=int, default=1, show_default=True, help="local: parallel processes")
@click.option("--dry-run", is_flag=True, help="print the jobs (and for slurm the job spec) without running")
@click.option("--slurm-partition", help="slurm partition")
@click.option("--slurm-time", type=int, default=240, show_default=True, help="slurm: minutes per job")
@click.option("--slurm-gpus", type=int, default=1, show_default=True, help="slurm: GPUs per job")
@click.option("--slurm-cpus", type=int, default=8, show_default=True, help="slurm: CPUs per job")
@click.option("--slurm-mem-gb", type=int, default=64, show_default=True)
@click.option("--slurm-array-parallelism", type=int, default=16, show_default=True)
@click.option("--slurm-folder", type=click.Path(), help="submitit logs [default <results>/slurm]")
@_sweep_options
def sweep_command(**opts):
    """Run every model x task x seed (each job writes its own record); finished runs are skipped on resume."""
    from harness.sweep import SlurmSpec, main as sweep_main

    seeds = []
    for x in _csv_list(opts["seeds"], "--seeds"):
        try:
            seeds.append(int(x))
        except ValueError as exc:
            raise UsageFailure(f"--seeds takes integers like 0,1,2, got {opts['seeds']!r}") from exc
    slurm = SlurmSpec(partition=opts["slurm_partition"], time_min=opts["slurm_time"], gpus=opts["slurm_gpus"],
                      cpus=opts["slurm_cpus"], mem_gb=opts["slurm_mem_gb"],
                      array_parallelism=opts["slurm_array_parallelism"], folder=opts["slurm_folder"])
    base = dict(opts, model="?", task="?", seed=0, checkpoint=None, resume=False)
    code = sweep_main(models=_csv_list(opts["models"], "--models"), tasks=_csv_list(opts["tasks"], "--tasks"),
                      seeds=seeds, base=config_from_options(base), executor=opts["executor"], jobs=opts["jobs"],
                      dry_run=opts["dry_run"], slurm=slurm)
    if code:
        sys.exit(code)


@cli.command("lm-eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                          "help_option_names": []})
@click.pass_context
def lm_eval_command(ctx):
    """Run lm-evaluation-harness with every registered model available as `--model harness` and the offline tasks
    wikitext2_local / wikitext103_local reading --data-dir, e.g.
    harness lm-eval --model harness --model_args checkpoint=PATH --data-dir ../shared/data --tasks wikitext2_local"""
    from harness.lm_eval_bridge import main as lm_eval_main

    lm_eval_main(list(ctx.args))


RESUMABLE = ("eval", "train", "ab")  # the commands that take --resume


def interrupted_message(argv: list[str], checkpoint: str | None) -> str:
    """What to tell a person who pressed Ctrl-C: what is kept and, when a checkpoint exists, the command that
    continues from it (the same command line with --resume)."""
    head = "interrupted: checkpoints and records already written are kept"
    if not checkpoint or not argv or argv[0] not in RESUMABLE:
        return head
    args = list(argv) if "--resume" in argv else [*argv, "--resume"]
    return f"{head}; the last checkpoint is {checkpoint}\nresume with: harness {shlex.join(args)}"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=argv, prog_name="harness", standalone_mode=False)
    except HarnessError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort as exc:  # click turns Ctrl-C into Abort, the KeyboardInterrupt as its cause
        cause = exc.__cause__
        if isinstance(cause, KeyboardInterrupt):
            click.echo(interrupted_message(argv, getattr(cause, "checkpoint", None)), err=True)
        else:
            click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted: checkpoints and records already written are kept; rerun with --resume", err=True)
        sys.exit(130)
