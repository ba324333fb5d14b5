"""`harness` command line: list what is registered, train + score a model on a task, rebuild the leaderboard."""

from __future__ import annotations

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


def _run_options(f):
    options = [
        click.option("--model", required=True, help="registered model name (harness ls models)"),
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
        click.option("--no-progress", is_flag=True, help="no progress bars"),
        click.option("--no-leaderboard", is_flag=True, help="do not rebuild the leaderboard"),
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
        update_leaderboard=not opts["no_leaderboard"], progress=not opts["no_progress"], compile=opts["compile"])


@cli.command("eval")
@_run_options
def eval_command(**opts):
    """Train MODEL on TASK with the preset's budget (or load --checkpoint), score it on the test split, write a
    run record and update the leaderboard."""
    from harness.report import print_run
    from harness.runner import run

    record, path = run(config_from_options(opts))
    print_run(record, path)


@cli.command("leaderboard")
@click.option("--output_path", "--output-path", "output_path", type=click.Path(), help="results folder")
@click.option("--model", help="only this model")
@click.option("--task", help="only this task")
@click.option("--preset", help="only this preset")
def leaderboard_command(output_path, model, task, preset):
    """Rebuild results/leaderboard.csv (long) and leaderboard.md (wide) from the run records."""
    from harness.leaderboard import rebuild
    from harness.registry import MODELS, TASKS
    from harness.results import results_root

    model = MODELS.resolve(model).name if model else None
    task = TASKS.resolve(task).name if task else None
    csv_path, md_path, n = rebuild(results_root(output_path), model=model, task=task, preset=preset)
    click.echo(md_path.read_text())
    click.echo(f"{n} rows -> {csv_path}\nwide table -> {md_path}")


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="harness", standalone_mode=False)
    except HarnessError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted: checkpoints and records already written are kept; rerun with --resume", err=True)
        sys.exit(130)
