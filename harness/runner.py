"""The task runner: build a model for a task, train it with the preset's budget, score it on the test split and
write the run record.

Determinism: the model is initialised from `seed`, batches are a pure function of (seed, step), and a checkpoint
holds the model, optimizer, scheduler and RNG states, so on the CPU a resumed run is bit-identical to an
uninterrupted one. A NaN/inf loss stops the run with a clear error; the last good checkpoint is left in place.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness import distributed, identity, leaderboard, metric_logger
from harness.adapter import build_model
from harness.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from harness.data import sha256_file
from harness.errors import HarnessError, TrainingDiverged
from harness.memory import PeakMemory
from harness.prefetch import BatchPrefetcher
from harness.registry import MODELS, OPTIMIZERS, PRESETS, TASKS
from harness.results import (
    ensure_writable,
    environment,
    git_info,
    package_versions,
    results_root,
    safe_filename,
    utc_now,
    write_record,
)


@dataclass
class RunConfig:
    model: str  # registry name or alias
    task: str  # registry name or alias
    preset: str = "tiny"  # scale: model flavor + training budget
    optimizer: str = "adamw"
    seed: int = 0
    steps: int | None = None  # overrides the preset's training steps (0: score without training)
    batch_size: int | None = None
    seq_len: int | None = None
    lr: float | None = None
    eval_every: int | None = None  # validation cadence in steps (0: only at the end)
    eval_batches: int | None = None  # validation batches per periodic evaluation
    checkpoint_every: int | None = None
    limit: int | None = None  # caps what the test evaluation scores (task-defined units)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data_dir: str | None = None
    data_file: str | None = None
    model_args: dict = field(default_factory=dict)  # flavor overrides, e.g. {"depth": 2}
    task_args: dict = field(default_factory=dict)
    optimizer_args: dict = field(default_factory=dict)
    checkpoint: str | None = None  # score these weights instead of training
    resume: bool = False  # continue from this configuration's last checkpoint if one exists
    output_path: str | None = None  # results root (runs/, checkpoints/, plots/, leaderboard.*)
    update_leaderboard: bool = True
    progress: bool = True
    compile: bool = False  # torch.compile the model
    # batches built ahead in a background thread (0: build in the loop); never changes results. None: 2 on CUDA,
    # 0 on the CPU, where the thread competes with training for the cores and the GIL (titans-mac on BABILong,
    # 2 cores: 5,272 tokens/s without it, 4,826 with it)
    prefetch: int | None = None
    amp: bool = True  # bf16 autocast + TF32 on CUDA (no effect on the CPU)
    test: bool = True  # score on the test split after training (harness train --no-test skips it)
    fsdp: bool | None = None  # under torchrun: FSDP2 sharding (None: for the medium/large presets, else DDP)
    tensorboard: str | None = None  # TensorBoard event files under <tensorboard>/<run name> (harness/metric_logger.py)
    wandb_project: str | None = None  # Weights & Biases project to log the same curves to
    wandb_args: dict = field(default_factory=dict)  # extra wandb.init keywords, e.g. {"entity": "me"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise HarnessError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"device {name!r} asked for, but no CUDA device is available; use --device cpu")
    return device


def lm_loss(model, inputs, targets, aux_weight: float = 1.0):
    """(total, cross-entropy, aux). Models with a loss of their own (e.g. deep supervision) define training_loss."""
    if hasattr(model, "training_loss"):
        ce, aux = model.training_loss(inputs, targets)
    else:
        logits, aux = model(inputs)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    return ce + aux_weight * aux, ce, aux


def cosine_schedule(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def run_key(cfg: RunConfig, budget, task_info: dict) -> str:
    """Identity of a training run: what determines its weights (not where results go)."""
    ident = {"model": MODELS.resolve(cfg.model).name, "task": TASKS.resolve(cfg.task).name, "preset": cfg.preset,
             "optimizer": OPTIMIZERS.resolve(cfg.optimizer).name, "seed": cfg.seed, "budget": budget.to_dict(),
             "model_args": cfg.model_args, "task_args": cfg.task_args, "optimizer_args": cfg.optimizer_args,
             "data": task_info.get("sha256") or task_info.get("source")}
    if not cfg.amp:  # only when off, so that existing run ids (and their checkpoints) keep their keys
        ident["amp"] = False
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_budget(cfg: RunConfig):
    """The preset's budget with the command line's overrides; every numeric option is checked here, so the
    same values fail the same way for every model and task (and for a sweep before any job runs)."""
    budget = PRESETS.load(cfg.preset).with_overrides(
        steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr, eval_every=cfg.eval_every,
        eval_batches=cfg.eval_batches, checkpoint_every=cfg.checkpoint_every)
    if budget.steps < 0 or budget.batch_size < 1 or budget.seq_len < 2:
        raise HarnessError("--steps must be >= 0, --batch-size >= 1 and --seq-len >= 2")
    if not (budget.lr > 0 and math.isfinite(budget.lr)):
        raise HarnessError(f"--lr must be a finite number > 0, got {budget.lr}")
    for flag, value in (("--eval-every", budget.eval_every), ("--eval-steps", budget.eval_batches),
                        ("--checkpoint-every", budget.checkpoint_every), ("--prefetch", cfg.prefetch or 0)):
        if value < 0:
            raise HarnessError(f"{flag} must be >= 0, got {value}")
    if cfg.seed < 0:
        raise HarnessError(f"--seed must be >= 0, got {cfg.seed}")
    if cfg.limit is not None and cfg.limit < 1:
        raise HarnessError(f"--limit must be >= 1, got {cfg.limit}")
    return budget


# Tasks that can read text with a pretrained model's own tokenizer (their `tokenizer=hf:<source>` option).
TOKENIZER_TASKS = ("babilong",)


def load_task(cfg: RunConfig):
    """The task with its options; tasks may size themselves by preset (e.g. a BPE vocabulary). A pretrained model
    (hf:<source>) gives the task its own tokenizer unless --task-arg tokenizer=... says otherwise."""
    task_options = {"preset": cfg.preset, **cfg.task_args}
    task_name = TASKS.resolve(cfg.task).name
    source = MODELS.resolve(cfg.model).meta.get("source")
    if source is not None:
        if task_name not in TOKENIZER_TASKS:
            raise HarnessError(f"--model {cfg.model} reads text with its own tokenizer, which task {task_name} does "
                               f"not take; tasks for hf: models: {', '.join(TOKENIZER_TASKS)}")
        task_options.setdefault("tokenizer", f"hf:{source}")
    build = TASKS.load(task_name)
    return build(data_dir=cfg.data_dir, data_file=cfg.data_file, **task_options)


def fit_budget(cfg: RunConfig, budget, task):
    """(effective budget, notes): the task's own budget defaults for this preset (e.g. the recall tasks' CPU
    budget) where the command line did not set a field, and the training context widened to what the task needs
    (or set to exactly its length, for tasks whose sequences have one), unless --seq-len set it."""
    notes = []
    name = TASKS.resolve(cfg.task).name
    defaults = task.budget_defaults(cfg.preset) if hasattr(task, "budget_defaults") else {}
    explicit = {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "eval_every": cfg.eval_every,
                "eval_batches": cfg.eval_batches, "checkpoint_every": cfg.checkpoint_every}
    taken = {k: v for k, v in defaults.items() if explicit.get(k) is None}
    if taken:
        budget = budget.with_overrides(**taken)
        notes.append(f"task {name}'s budget for preset {cfg.preset}: "
                     + ", ".join(f"{k}={v}" for k, v in sorted(taken.items())))
    preferred = getattr(task, "preferred_seq_len", None)
    exact = getattr(task, "exact_seq_len", False)
    if cfg.seq_len is None and preferred and (preferred > budget.seq_len or (exact and preferred != budget.seq_len)):
        notes.append(f"training context {'set' if exact else 'widened'} from the preset's {budget.seq_len} to the "
                     f"{preferred} tokens task {name} needs")
        budget = budget.with_overrides(seq_len=preferred)
    return budget, notes


def fit_model_args(cfg: RunConfig, task) -> tuple[RunConfig, list[str]]:
    """(cfg with the task's model settings, notes): settings a task gives this architecture (e.g. a BABILong
    protocol's memory settings, `model_defaults`) where --model-arg did not set them; the record's model_args
    are then the settings the model was built with."""
    model_name = MODELS.resolve(cfg.model).name
    defaults = task.model_defaults(model_name) if hasattr(task, "model_defaults") else {}
    taken = {k: v for k, v in defaults.items() if k not in cfg.model_args}
    if not taken:
        return cfg, []
    note = (f"task {TASKS.resolve(cfg.task).name}'s settings for {model_name}: "
            + ", ".join(f"{k}={v}" for k, v in sorted(taken.items())))
    return replace(cfg, model_args={**cfg.model_args, **taken}), [note]


def resolve_run(cfg: RunConfig):
    """(cfg, budget, task, notes): the run as it will be trained, resolved in one place for the runner and for
    the sweep's job identity (which must agree with the record the run writes): the preset's budget, the task
    with its options, the task's model settings (`fit_model_args`), then its budget and training context
    (`fit_budget`). The notes say what the task set."""
    budget = resolve_budget(cfg)
    task = load_task(cfg)
    cfg, model_notes = fit_model_args(cfg, task)
    budget, budget_notes = fit_budget(cfg, budget, task)
    return cfg, budget, task, model_notes + budget_notes


def device_type(name: str) -> str:
    """cpu or cuda for a --device value, without failing where CUDA is absent (a sweep may plan elsewhere)."""
    return "cuda" if name.startswith("cuda") or (name == "auto" and torch.cuda.is_available()) else "cpu"


def precision(device_kind: str, amp: bool) -> str:
    return "bfloat16-autocast" if device_kind == "cuda" and amp else "float32"


def config_identity(cfg: RunConfig, budget, task_info: dict, device_kind: str) -> str:
    """The configuration identity (harness/identity.py) of this run as recorded: seed excluded."""
    return identity.from_run(cfg, budget, task_info, steps=0 if cfg.checkpoint else budget.steps,
                             limit=cfg.limit if cfg.limit is not None else budget.eval_limit,
                             dtype=precision(device_kind, cfg.amp))


def write_checkpoint(path: Path, payload: dict) -> None:
    try:
        save_checkpoint(path, payload)
    except OSError as exc:
        raise HarnessError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc


@torch.no_grad()
def validation_metrics(model, task, budget, device, autocast) -> tuple[float | None, float | None]:
    """(cross-entropy per target token, next-token accuracy) of the model's own predictions on the fixed
    validation batches (deep-supervision or aux terms are not part of it, so models compare like for like);
    (None, None) when nothing was measured (--eval-steps 0), never a made-up 0."""
    model.eval()
    nll, correct, count = 0.0, 0, 0
    for i in range(budget.eval_batches):
        inputs, targets = (t.to(device) for t in task.val_batch(i, budget.batch_size, budget.seq_len))
        with autocast():
            logits, _ = model(inputs)
        mask = targets != -100
        nll += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=-100, reduction="sum").item()
        correct += ((logits.argmax(-1) == targets) & mask).sum().item()
        count += mask.sum().item()
    model.train()
    if not count:
        return None, None
    return nll / count, correct / count


def task_curve_point(task, model, history, step, tokens_seen, budget, device, autocast, write) -> dict | None:
    """A point of the task's own learning curve (e.g. BABILong accuracy at 0k and 1k on a few test samples) at a
    validation step, for tasks that define `progress_metrics`; kept in the history (and so in checkpoints and
    the record's training.task_curve) as [step, tokens seen, {metric: value}]; returns the point (None: none)."""
    if not hasattr(task, "progress_metrics"):
        return None
    with autocast():
        point = task.progress_metrics(model, device=device, seq_len=budget.seq_len)
    model.train()
    if point:
        history.setdefault("task_curve", []).append([step, tokens_seen, point])
        write(f"step {step}: " + ", ".join(f"{k} {v:.1f}" for k, v in point.items()))
    return point or None


def tokenizer_identity(task) -> dict:
    """The checkpoint's tokenizer: a spec load_tokenizer reads ('bytes' or a path; None when neither) and the
    file's sha256, so the lm-eval bridge can refuse a different tokenizer of the same vocabulary size."""
    path = getattr(task, "tokenizer_path", None)
    if path:
        return {"tokenizer": str(Path(path).resolve()),
                "tokenizer_sha256": sha256_file(path) if Path(path).is_file() else None}
    return {"tokenizer": "bytes" if task.vocab_size == 256 else None, "tokenizer_sha256": None}



def prefetch_depth(requested: int | None, device: torch.device) -> int:
    """The batch prefetch depth: as requested, or by default 2 on CUDA and 0 on the CPU."""
    if requested is not None:
        return requested
    return 2 if device.type == "cuda" else 0

def run(cfg: RunConfig) -> tuple[dict, Path]:
    """Train (or load) and score one model on one task; returns the record and where it was written."""
    progress: dict = {}  # filled in as the run goes: where its checkpoint is
    with PeakMemory(resolve_device(cfg.device)) as peak:
        try:
            record, main_rank = _train_and_score(cfg, progress)
        except KeyboardInterrupt as exc:  # the CLI prints the resume command when a checkpoint exists
            ckpt = progress.get("checkpoint")
            exc.checkpoint = str(ckpt) if ckpt is not None and Path(ckpt).is_file() else None
            raise
        finally:  # TensorBoard / W&B logs are flushed and closed however the run ended
            progress.get("logger", metric_logger.NullLogger()).close()
    record["peak_memory_mb"] = round(peak.megabytes, 1)
    record["peak_memory_kind"] = "cuda max allocated" if peak.device.type == "cuda" else "sampled process RSS"
    if not main_rank:  # rank 0 alone writes the record and the leaderboard
        return record, None
    root = results_root(cfg.output_path)
    path = write_record(record, root)
    if cfg.update_leaderboard:
        leaderboard.rebuild(root)
    return record, path


def _train_and_score(cfg: RunConfig, progress: dict | None = None) -> tuple[dict, bool]:
    wall_start = time.perf_counter()
    # Resolve every name first, so a typo fails before any data is read.
    model_name, task_name = MODELS.resolve(cfg.model).name, TASKS.resolve(cfg.task).name
    optimizer_name = OPTIMIZERS.resolve(cfg.optimizer).name
    resolve_budget(cfg)  # bad budget flags fail now, before any data is read
    metric_logger.require(cfg)  # a missing tensorboard / wandb package fails now, not after training
    device = resolve_device(cfg.device)
    dctx, device = distributed.setup(device, cfg.preset, cfg.fsdp)
    main_rank = dctx.is_main
    root = results_root(cfg.output_path)
    notes: list[str] = []

    if main_rank:
        ensure_writable(root)  # before training: an unwritable results folder must not cost trained weights
    cfg, budget, task, run_notes = resolve_run(cfg)
    notes += run_notes
    task_info = task.describe()
    if budget.steps and not cfg.checkpoint:  # a split too small for a batch fails now, not after training
        counters = copy.deepcopy(getattr(task, "train_stats", None))  # the trial rows are not trained on
        task.train_batch(0, 1, budget.seq_len, cfg.seed)
        if budget.eval_batches:
            task.val_batch(0, 1, budget.seq_len)
        if counters is not None:
            task.train_stats = counters
    torch.manual_seed(cfg.seed)
    model = build_model(model_name, cfg.preset, task.vocab_size, cfg.model_args).to(device)
    n_params = model.num_parameters()

    if device.type == "cuda" and cfg.amp:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        dtype = "bfloat16-autocast"
        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        dtype = "float32"
        autocast = contextlib.nullcontext
    train_model = distributed.wrap(dctx, model, device)  # DDP wrapper, or FSDP2 sharding in place
    train_model = torch.compile(train_model) if cfg.compile else train_model

    key = run_key(cfg, budget, task_info)
    config_id = config_identity(cfg, budget, task_info, device.type)
    ckpt_name = safe_filename(f"{model_name}_{cfg.preset}_{task_name}_s{cfg.seed}_{key}")  # hf:org/x -> hf-org-x
    ckpt_path = root / "checkpoints" / f"{ckpt_name}.pt"
    if progress is not None and budget.steps and not cfg.checkpoint:  # a run that trains can be resumed
        progress["checkpoint"] = ckpt_path
    history: dict = {"train": [], "val": []}
    start_step, resumed_from = 0, None
    steps = budget.steps

    if cfg.checkpoint:
        payload = load_checkpoint(cfg.checkpoint)
        if payload.get("model_name") not in (None, model_name):
            raise HarnessError(f"checkpoint {cfg.checkpoint} holds a {payload['model_name']!r} model, not {model_name!r}")
        try:
            distributed.load_model_state(dctx, model, payload["model"])
        except RuntimeError as exc:
            raise HarnessError(f"checkpoint {cfg.checkpoint} does not fit {model_name} at preset {cfg.preset}: "
                               f"{str(exc).splitlines()[0]}") from exc
        steps, history = 0, payload.get("history", history)
        notes.append(f"weights loaded from {cfg.checkpoint}; not trained in this run")

    def loss_fn(m, inputs, targets):
        return lm_loss(m, inputs, targets, budget.aux_loss_weight)[0]

    optimizer = OPTIMIZERS.load(optimizer_name)(model, budget, loss_fn=loss_fn, **cfg.optimizer_args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(budget.warmup_steps, max(steps, 1), budget.min_lr_ratio))

    if steps and cfg.resume and ckpt_path.exists():
        payload = load_checkpoint(ckpt_path)
        distributed.load_model_state(dctx, model, payload["model"])
        distributed.load_optimizer_state(dctx, model, optimizer, payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        set_rng_state(payload["rng"])
        start_step = resumed_from = payload["step"]
        history = payload["history"]
        if main_rank:
            print(f"resuming from step {start_step} of {ckpt_path}")

    # Live curves (--tensorboard / --wandb-project), named like the checkpoint: model, preset, task, seed, run id.
    logger = metric_logger.NullLogger()
    if main_rank and (steps or cfg.test):
        logger = metric_logger.build(
            cfg, ckpt_path.stem, {**asdict(cfg), "run_id": key, "config_id": config_id, "budget": budget.to_dict()},
            start_step=start_step, default_dir=root)
    if progress is not None:
        progress["logger"] = logger  # run() closes it

    def checkpoint_payload(step: int, final: bool = False, rng: dict | None = None) -> dict:
        payload = {"model": distributed.model_state(dctx, model), "model_name": model_name, "preset": cfg.preset,
                   "vocab_size": task.vocab_size, "overrides": cfg.model_args,
                   **tokenizer_identity(task), "seq_len": budget.seq_len, "step": step, "history": history,
                   "run_config": asdict(cfg)}  # seq_len: the effective context; run_config has the flag
        if not final:
            payload.update(optimizer=distributed.optimizer_state(dctx, model, optimizer),
                           scheduler=scheduler.state_dict(), rng=rng or rng_state())
        return payload

    # ---------------------------------------------------------------- training
    recent = deque(maxlen=4)  # recent batches, for optimizers that meta-learn on them
    train_time, tokens_seen = 0.0, start_step * budget.batch_size * budget.seq_len
    tokens_this_run = 0  # for tokens/s: a resumed run times only the steps it ran
    model.train()
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc=f"train {model_name}",
               disable=not cfg.progress or steps == 0 or not main_rank, dynamic_ncols=True)
    batches = BatchPrefetcher(lambda i: task.train_batch(i, budget.batch_size, budget.seq_len, cfg.seed),
                              start_step, steps, depth=prefetch_depth(cfg.prefetch, device), device=device)
    # A periodic checkpoint of step N is written only once step N+1's loss proved its weights finite (until
    # then the model, optimizer and scheduler still hold step N's state; the RNG state is kept aside), so the
    # "last good checkpoint" named after a NaN never holds the diverged weights.
    pending = None  # (step, rng state) of the checkpoint waiting for that proof
    t0 = time.perf_counter()  # a step's time includes waiting for its batch
    for step, inputs, targets in batches:
        bar.update()
        global_tokens = inputs.numel()
        inputs, targets = distributed.shard_batch(dctx, inputs.to(device), targets.to(device))
        weight, share = distributed.loss_weight(dctx, targets)
        with autocast():
            loss, ce, aux = lm_loss(train_model, inputs, targets, budget.aux_loss_weight)
        if dctx.active:  # the global batch's mean loss, see harness/distributed.py
            loss = loss + ce * (weight - 1.0)
        ce_value, aux_value, finite = distributed.global_mean(dctx, ce, aux, share)
        if not finite or not torch.isfinite(loss):
            last = f"the last good checkpoint is {ckpt_path}" if ckpt_path.exists() else "no checkpoint was saved yet"
            raise TrainingDiverged(f"loss became {loss.item()} at step {step}; {last} (try a lower --lr)")
        if pending is not None:
            saving = time.perf_counter()
            payload = checkpoint_payload(pending[0], rng=pending[1])  # under FSDP a collective: all ranks
            if main_rank:
                write_checkpoint(ckpt_path, payload)
            t0 += time.perf_counter() - saving  # checkpoints are not training time
            pending = None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if budget.grad_clip:
            distributed.clip_grad_norm(dctx, model, budget.grad_clip)
        if hasattr(optimizer, "observe_loss"):
            optimizer.observe_loss(loss.item())
        step_lr = optimizer.param_groups[0]["lr"]  # the rate this step used (the scheduler moves it next)
        optimizer.step()
        scheduler.step()
        recent.append((inputs, targets))
        now = time.perf_counter()
        train_time += now - t0
        tokens_seen += global_tokens
        tokens_this_run += global_tokens
        history["train"].append([step + 1, round(ce_value, 6), round(aux_value, 6)])
        logged = {"train/loss": ce_value, "train/lr": step_lr}
        if aux_value:  # models with an auxiliary loss (e.g. MoE load balancing)
            logged["train/aux"] = aux_value
        logger.log(step + 1, logged)
        bar.set_postfix(loss=f"{ce_value:.3f}", tok_s=f"{tokens_this_run / max(train_time, 1e-9):,.0f}",
                        refresh=False)
        done = step + 1
        if budget.eval_every and done % budget.eval_every == 0 and done < steps:
            val, acc = validation_metrics(model, task, budget, device, autocast)
            if val is not None:
                history["val"].append([done, round(val, 6), round(acc, 6)])
                logger.log(done, {"val/loss": val, "val/accuracy": acc})
                if main_rank:
                    bar.write(f"step {done}: val loss {val:.4f}, val accuracy {acc:.4f}")
            if main_rank:
                point = task_curve_point(task, model, history, done, tokens_seen, budget, device, autocast, bar.write)
                logger.log(done, {f"task/{k}": v for k, v in (point or {}).items()})
            if hasattr(optimizer, "meta_update") and getattr(optimizer, "mode", None) == "explicit":
                optimizer.meta_update(val_batch=task.val_batch(0, budget.batch_size, budget.seq_len),
                                      train_batches=list(recent), use_unrolled=True)
        if budget.checkpoint_every and done % budget.checkpoint_every == 0 and done < steps:
            pending = (done, rng_state())
        t0 = time.perf_counter()  # evaluation and checkpoints are not training time
    bar.close()

    if steps and start_step < steps:
        val, acc = validation_metrics(model, task, budget, device, autocast)
        if main_rank:
            point = task_curve_point(task, model, history, steps, tokens_seen, budget, device, autocast, print)
            logger.log(steps, {f"task/{k}": v for k, v in (point or {}).items()})
        if val is not None:
            history["val"].append([steps, round(val, 6), round(acc, 6)])
            logger.log(steps, {"val/loss": val, "val/accuracy": acc})
        else:
            notes.append("validation not measured (--eval-steps 0): no validation loss or accuracy recorded")
        payload = checkpoint_payload(steps, final=False)
        if main_rank:
            write_checkpoint(ckpt_path, payload)

    # ---------------------------------------------------------------- scoring
    eval_start = time.perf_counter()
    limit = cfg.limit if cfg.limit is not None else budget.eval_limit
    metrics = {}
    if cfg.test:
        with autocast():
            metrics = task.evaluate(model, device=device, seq_len=budget.seq_len, batch_size=budget.batch_size,
                                    limit=limit, progress=cfg.progress and main_rank)
    else:
        notes.append("not scored on the test split (--no-test)")
    eval_time = time.perf_counter() - eval_start
    logger.log(steps, {f"test/{name}": m.value for name, m in metrics.items()})
    task_info = {**task_info, **task.describe()}  # what evaluate() found (the early copy keyed the run)

    record = {
        "run_id": key, "config_id": config_id,
        "created": utc_now(), "model": model_name, "preset": cfg.preset, "params": n_params,
        "task": task_name, "primary_metric": task.primary_metric,
        "metrics": {name: m.to_dict() for name, m in metrics.items()},
        "optimizer": optimizer_name, "optimizer_args": cfg.optimizer_args, "seed": cfg.seed,
        "device": str(device), "dtype": dtype,
        "training": {"steps": steps, "batch_size": budget.batch_size, "seq_len": budget.seq_len, "lr": budget.lr,
                     "tokens_seen": tokens_seen, "train_time_s": round(train_time, 3),
                     "tokens_per_s": round(tokens_this_run / train_time, 1) if train_time else None,
                     "prefetch": prefetch_depth(cfg.prefetch, device),
                     "resumed_from_step": resumed_from, "budget": budget.to_dict(),
                     "final_train_loss": history["train"][-1][1] if history["train"] else None,
                     "final_val_loss": history["val"][-1][1] if history["val"] else None,
                     "final_val_accuracy": history["val"][-1][2] if history["val"] else None,
                     "curve": history["train"], "val_curve": history["val"],
                     **({"task_curve": history["task_curve"]} if history.get("task_curve") else {})},
        "eval": {"limit": limit, "seq_len": budget.seq_len, "time_s": round(eval_time, 3)},
        "wall_time_s": round(time.perf_counter() - wall_start, 3),
        "model_info": model.describe(), "model_args": cfg.model_args, "task_args": cfg.task_args,
        "task_info": task_info, "checkpoint": str(cfg.checkpoint or ckpt_path) if (steps or cfg.checkpoint) else None,
        "versions": package_versions(), "git": git_info(), "environment": environment(device), "notes": notes,
    }
    if dctx.active:
        record["distributed"] = dctx.describe()
    if logger.location():  # where --tensorboard / --wandb-project put this run's curves
        record["logging"] = logger.location()
    if hasattr(model, "memory_stats"):  # e.g. how often a Titans/MIRAS inner-gradient cap bit in training
        record["model_stats"] = model.memory_stats()
    if not main_rank:
        return record, False
    if hasattr(optimizer, "report"):
        record["optimizer_report"] = optimizer.report()
    if hasattr(task, "artifacts"):
        try:
            record["artifacts"] = [str(p) for p in task.artifacts(record, root)]
        except OSError as exc:
            raise HarnessError(f"cannot write the task's plots under {root}: {exc.strerror or exc}") from exc
    return record, True
