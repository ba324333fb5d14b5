"""One configuration identity: every setting that changes a run's result (model, task and data, optimizer,
the effective training budget, what is scored), but not the seed and not where results go.

Records store it as `config_id`; the leaderboard groups seeds by it, sweeps and `regress` recognise runs by
it. It is computed from one canonical dict, built either from what the runner has (`from_run`) or from a
record (`from_record`, for records written before `config_id` existed), so both routes agree.
"""

from __future__ import annotations

import hashlib
import json

# Budget fields that change the weights or the recorded validation numbers. Not checkpoint_every (where
# checkpoints go), not the preset's name/params labels, not eval_limit (the effective test limit is kept
# instead).
BUDGET_KEYS = ("batch_size", "seq_len", "lr", "warmup_steps", "min_lr_ratio", "weight_decay", "grad_clip",
               "aux_loss_weight", "eval_every", "eval_batches")


def _digest(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data(task_info: dict | None) -> str:
    info = task_info or {}
    return str(info.get("sha256") or info.get("source") or "")


def canonical(*, model, preset, model_args, task, task_args, data, optimizer, optimizer_args, budget: dict,
              steps, limit, weights, dtype) -> dict:
    return {"model": model, "preset": preset, "model_args": dict(model_args or {}), "task": task,
            "task_args": dict(task_args or {}), "data": data, "optimizer": optimizer,
            "optimizer_args": dict(optimizer_args or {}),
            "budget": {k: (budget or {}).get(k) for k in BUDGET_KEYS}, "steps": steps, "limit": limit,
            "weights": weights, "dtype": dtype}


def from_run(cfg, budget, task_info: dict, *, steps: int, limit, dtype: str) -> str:
    """The identity of a run as the runner has it: names resolved, `budget` the effective one (after
    the task's widening), `steps` 0 when a checkpoint is scored, `limit` the test limit actually used."""
    from harness.registry import MODELS, OPTIMIZERS, TASKS

    return _digest(canonical(
        model=MODELS.resolve(cfg.model).name, preset=cfg.preset, model_args=cfg.model_args,
        task=TASKS.resolve(cfg.task).name, task_args=cfg.task_args, data=_data(task_info),
        optimizer=OPTIMIZERS.resolve(cfg.optimizer).name, optimizer_args=cfg.optimizer_args,
        budget=budget.to_dict(), steps=steps, limit=limit,
        weights=str(cfg.checkpoint) if cfg.checkpoint else None, dtype=dtype))


def from_record(record: dict) -> str:
    """A record's identity: its stored `config_id`, else derived from its fields (older records)."""
    if record.get("config_id"):
        return str(record["config_id"])
    training = record.get("training") or {}
    budget = dict(training.get("budget") or {})
    for key in ("batch_size", "seq_len", "lr"):  # records without the budget dict still tell these apart
        budget.setdefault(key, training.get(key))
    steps = training.get("steps")
    return _digest(canonical(
        model=record.get("model"), preset=record.get("preset"), model_args=record.get("model_args"),
        task=record.get("task"), task_args=record.get("task_args"), data=_data(record.get("task_info")),
        optimizer=record.get("optimizer", ""), optimizer_args=record.get("optimizer_args"), budget=budget,
        steps=steps, limit=(record.get("eval") or {}).get("limit"),
        weights=record.get("checkpoint") if steps == 0 else None, dtype=record.get("dtype")))
