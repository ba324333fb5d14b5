"""Data-parallel training across processes with PyTorch's own engine: DDP, or FSDP2 (`fully_shard`) for the
large presets or on request.

    torchrun --nproc_per_node 2 -m harness train --model transformer-pp --task bytes --data-file ... --device cpu

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; the runner then joins the process group (NCCL on CUDA,
gloo on the CPU), every rank builds the same model from the same seed, and each optimizer step works on one global
batch of --batch-size rows: the batch is built exactly as a single process would build it and rank r keeps rows
[r*B/W, (r+1)*B/W). Each rank's mean loss is re-weighted by its share of the loss-bearing targets, so after DDP's
gradient average the update is the gradient of the global batch's mean loss: the loss curve equals a
single-process run over the same global batch, up to float summation order (a test checks 1e-5 on the CPU).
Exceptions: a model whose loss couples rows of a batch (e.g. batch-level MoE balancing terms) sees each rank's
rows only; its aux loss is the mean over ranks.

Only rank 0 shows progress and writes checkpoints, records and the leaderboard; every rank takes part in
validation and test scoring (FSDP's forward needs all ranks), so the scores are rank 0's on the full test data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from harness.errors import HarnessError

FSDP_PRESETS = ("medium", "large")  # presets sharded with FSDP2 by default (DDP replicates the model per rank)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, nothing distributed
    fsdp: bool = False  # FSDP2 sharding (else DDP)

    @property
    def active(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend,
                "strategy": "fsdp2" if self.fsdp else "ddp",
                "batch_split": "rank r takes rows [r*B/W, (r+1)*B/W) of each global batch"}


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device, preset: str, fsdp: bool | None) -> tuple[DistContext, torch.device]:
    """Join the process group when launched by torchrun (else a single-process context); returns the context and
    this rank's device (cuda:LOCAL_RANK on CUDA)."""
    if not launched_by_torchrun():
        if fsdp:
            raise HarnessError("--fsdp needs several processes: launch with torchrun --nproc_per_node N -m harness train")
        return DistContext(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    use_fsdp = preset in FSDP_PRESETS if fsdp is None else fsdp
    return DistContext(rank, world, local_rank, backend, use_fsdp), device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(ctx: DistContext, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module the training step calls. DDP wraps (the plain model keeps its parameters); FSDP2 shards the
    model in place (each repeated block, then the root), so build the optimizer after this."""
    if not ctx.active:
        return model
    if ctx.fsdp:
        from torch.distributed.fsdp import fully_shard

        containers = (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Sequential)
        blocks = [child for module in model.modules() if isinstance(module, containers) for child in module
                  if child is not None and not isinstance(child, containers)
                  and any(p.requires_grad for p in child.parameters())]
        inner = {id(m) for b in blocks for m in b.modules() if m is not b}
        for block in blocks:  # the outermost blocks inside repeated containers (the layers), then the root
            if id(block) not in inner:
                fully_shard(block)
        fully_shard(model)
        return model
    if hasattr(model, "training_loss"):  # it would bypass DDP's forward, and gradients would not be averaged
        raise HarnessError(f"{type(model).__name__} defines its own training loss, which DDP cannot wrap; "
                           "train it with --fsdp")
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_batch(ctx: DistContext, inputs: torch.Tensor, targets: torch.Tensor):
    """This rank's contiguous slice of the global batch."""
    if not ctx.active:
        return inputs, targets
    rows = inputs.shape[0]
    if rows % ctx.world_size:
        raise HarnessError(f"--batch-size {rows} is not divisible by the {ctx.world_size} processes; "
                           f"use a multiple of {ctx.world_size}")
    per = rows // ctx.world_size
    part = slice(ctx.rank * per, (ctx.rank + 1) * per)
    return inputs[part], targets[part]


def _all_sum(values: torch.Tensor) -> torch.Tensor:
    values = values.detach().clone().double()
    dist.all_reduce(values)
    return values


def loss_weight(ctx: DistContext, targets: torch.Tensor) -> tuple[float, float]:
    """(weight for this rank's mean loss, this rank's fraction of the valid targets). DDP/FSDP average gradients
    over ranks, so weighting rank r's mean loss by n_r * W / N makes the update the global mean's gradient."""
    if not ctx.active:
        return 1.0, 1.0
    local = float((targets != -100).sum())
    total = float(_all_sum(torch.tensor([local]))[0])
    if total == 0:
        return 1.0, 1.0 / ctx.world_size
    return local * ctx.world_size / total, local / total


def global_mean(ctx: DistContext, ce: torch.Tensor, aux: torch.Tensor, share: float) -> tuple[float, float, bool]:
    """(global mean cross-entropy, mean aux over ranks, finite on every rank) for logging and the NaN check;
    one all-reduce, so every rank takes the same branch."""
    ce_v, aux_v = float(ce.detach()), float(aux.detach()) if torch.is_tensor(aux) else float(aux)
    if not ctx.active:
        return ce_v, aux_v, bool(torch.isfinite(torch.tensor([ce_v, aux_v])).all())
    finite = 1.0 if torch.isfinite(torch.tensor([ce_v, aux_v])).all() else 0.0
    summed = _all_sum(torch.tensor([ce_v * share if finite else 0.0, aux_v if finite else 0.0, finite]))
    ok = int(summed[2]) == ctx.world_size
    return (float(summed[0]) if ok else float("nan")), float(summed[1]) / ctx.world_size, ok


def clip_grad_norm(ctx: DistContext, model: torch.nn.Module, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)


# ---------------------------------------------------------------- checkpoints (full, unsharded state dicts)
def model_state(ctx: DistContext, model: torch.nn.Module) -> dict:
    """The full state dict (a collective under FSDP: call on every rank; rank 0 gets the tensors)."""
    if not ctx.fsdp:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(ctx: DistContext, model, optimizer) -> dict:
    if not ctx.fsdp:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_model_state(ctx: DistContext, model, state: dict) -> None:
    if not ctx.fsdp:
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def load_optimizer_state(ctx: DistContext, model, optimizer, state: dict) -> None:
    if not ctx.fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
