"""Optional live logging of a run's curves to TensorBoard (`--tensorboard DIR`) and Weights & Biases
(`--wandb-project NAME`).

The contract is small: a `MetricLogger` takes `log(step, {tag: value})` and `close()`, and says in `location()`
where its logs went (kept in the run record as `record["logging"]`). The runner logs through one logger built
by `build`; with neither option it is a `NullLogger`, so a run without logging behaves exactly as before.

Tags (the same for both backends):
  train/loss, train/lr (and train/aux when a model has an auxiliary loss)  every training step
  val/loss, val/accuracy                                                    every validation
  task/<metric>                                                             the task's progress_metrics, if any
  test/<metric>                                                             the final test metrics, at the last step

Both backends are optional extras (pip install -e ".[tensorboard]" / ".[wandb]"), imported only when asked
for; `require` checks them before any data is read, so a missing package fails in one line, not after training.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Protocol

from harness.errors import HarnessError

_EXTRAS = {"tensorboard": ("--tensorboard", "tensorboard"), "wandb": ("--wandb-project", "wandb")}


class MetricLogger(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...

    def location(self) -> dict: ...


class NullLogger:
    """Logs nothing (no logging option, or a rank other than 0)."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass

    def location(self) -> dict:
        return {}


def _finite(metrics: dict) -> dict[str, float]:
    """The numeric entries (None, i.e. not measured, and non-numbers are left out rather than logged as 0)."""
    out = {}
    for tag, value in metrics.items():
        if isinstance(value, bool) or value is None:
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[tag] = value
    return out


class TensorBoardLogger:
    """Scalars into TensorBoard event files under `log_dir` (one folder per run)."""

    def __init__(self, log_dir: str | Path, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        try:
            # purge_step: a rerun or resume of the same run hides the earlier file's points from this step on,
            # so the folder shows one curve rather than two overlapping ones.
            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=start_step + 1)
        except OSError as exc:
            raise HarnessError(f"cannot write TensorBoard logs under {self.log_dir}: {exc.strerror or exc}") from exc

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for tag, value in _finite(metrics).items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()

    def location(self) -> dict:
        return {"tensorboard": str(self.log_dir)}


class WandbLogger:
    """Scalars into a Weights & Biases run (WANDB_MODE=offline keeps it on disk; `wandb sync` uploads it)."""

    def __init__(self, project: str, name: str, config: dict, init_args: dict | None = None,
                 default_dir: str | Path | None = None):
        import wandb

        args = dict(init_args or {})
        if default_dir is not None and "dir" not in args:
            Path(default_dir).mkdir(parents=True, exist_ok=True)
            args["dir"] = str(default_dir)
        args.setdefault("name", name)
        try:
            self.run = wandb.init(project=project, config=config, **args)
        except Exception as exc:  # no API key, no network, a bad --wandb-args key: one line, before training
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise HarnessError(f"wandb.init failed: {first} (log in with `wandb login`, or set WANDB_MODE=offline)"
                               ) from exc
        self.project = project

    def log(self, step: int, metrics: dict[str, float]) -> None:
        values = _finite(metrics)
        if values:
            self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()

    def location(self) -> dict:
        run = self.run
        return {"wandb": {"project": self.project, "name": getattr(run, "name", None), "id": getattr(run, "id", None),
                          "url": getattr(run, "url", None),
                          "dir": str(Path(run.dir).parent) if getattr(run, "dir", None) else None}}


class MultiLogger:
    """Every log call to each of several loggers."""

    def __init__(self, loggers: list):
        self.loggers = list(loggers)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.log(step, metrics)

    def close(self) -> None:
        errors = []
        for logger in self.loggers:  # every logger is closed even when one fails
            try:
                logger.close()
            except Exception as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)
        if errors:
            raise errors[0]

    def location(self) -> dict:
        out = {}
        for logger in self.loggers:
            out.update(logger.location())
        return out


def wandb_project(cfg) -> str | None:
    """--wandb-project, else a project=... in --wandb-args; None: no W&B logging."""
    return getattr(cfg, "wandb_project", None) or (getattr(cfg, "wandb_args", None) or {}).get("project")


def require(cfg) -> None:
    """Fail in one line, before any data is read, when a logging option's package is not installed."""
    wanted = []
    if getattr(cfg, "tensorboard", None):
        wanted.append("tensorboard")
    if wandb_project(cfg):
        wanted.append("wandb")
    for package in wanted:
        flag, extra = _EXTRAS[package]
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise HarnessError(f"{flag} needs the {package} package, which is not installed: "
                               f"pip install -e \".[{extra}]\" (or pip install {package})") from exc


def build(cfg, run_name: str, config: dict, *, start_step: int = 0, default_dir: str | Path | None = None):
    """The logger for one run from its options: a TensorBoard folder <--tensorboard>/<run_name>, a W&B run named
    run_name in --wandb-project (extra wandb.init keywords from --wandb-args), both, or a NullLogger."""
    require(cfg)
    loggers = []
    if getattr(cfg, "tensorboard", None):
        loggers.append(TensorBoardLogger(Path(cfg.tensorboard) / run_name, start_step=start_step))
    project = wandb_project(cfg)
    if project:
        init_args = {k: v for k, v in (cfg.wandb_args or {}).items() if k != "project"}
        try:
            loggers.append(WandbLogger(project, run_name, config, init_args, default_dir=default_dir))
        except BaseException:
            for logger in loggers:
                logger.close()
            raise
    if not loggers:
        return NullLogger()
    return loggers[0] if len(loggers) == 1 else MultiLogger(loggers)
