"""Presets: a named scale. Each architecture has a flavor (its own config) per preset name, sized so that every
architecture has about the same parameter count at the same preset; the preset itself fixes the training budget
that the runner uses, so that architectures compared at one preset see the same data, schedule and tokens."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from harness.registry import PRESETS


@dataclass(frozen=True)
class TrainingPreset:
    name: str
    params: str  # target parameter count of the model flavors at this preset (for `harness ls presets`)
    steps: int  # optimizer steps
    batch_size: int  # sequences per step
    seq_len: int  # training context length in tokens
    lr: float  # peak learning rate (AdamW default optimizer)
    warmup_steps: int  # linear warm-up steps before cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_every: int = 0  # evaluate on validation batches every N steps (0: only at the end)
    eval_batches: int = 8  # validation batches per periodic evaluation
    eval_limit: int | None = None  # tokens of the test split scored at the end (None: the whole split)
    checkpoint_every: int = 0  # save a resumable checkpoint every N steps (0: only at the end)
    aux_loss_weight: float = 1.0  # weight of the model's aux_loss in the training loss

    def with_overrides(self, **overrides) -> "TrainingPreset":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)


TINY = TrainingPreset("tiny", "~1M", steps=600, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=60,
                      eval_every=200, eval_batches=4, eval_limit=131072, checkpoint_every=200)
SMALL = TrainingPreset("small", "~50M", steps=20000, batch_size=32, seq_len=512, lr=1e-3, warmup_steps=1000,
                       eval_every=1000, eval_batches=32, checkpoint_every=1000)
MEDIUM = TrainingPreset("medium", "~360M", steps=50000, batch_size=64, seq_len=1024, lr=6e-4, warmup_steps=2000,
                        eval_every=2000, eval_batches=64, checkpoint_every=2000)
LARGE = TrainingPreset("large", "~760M", steps=100000, batch_size=64, seq_len=2048, lr=4e-4, warmup_steps=2000,
                       eval_every=2000, eval_batches=64, checkpoint_every=2000)
# The 5-dollar-llm MoE baseline's GPU24GB budget (seed 000): batch 16, seq 1024, 800 steps.
GPU24GB = TrainingPreset("gpu24gb", "~210M MoE total (8 SwiGLU experts, top-2)", steps=800, batch_size=16, seq_len=1024, lr=6e-3,
                         warmup_steps=40, eval_every=100, eval_batches=16, checkpoint_every=200)
# The TitanMAC GPU24GB configuration of seed 000/001 (~52M parameters with neural memory), same budget.
TITANMAC_24GB = TrainingPreset("titanmac-24gb", "~52M", steps=800, batch_size=16, seq_len=1024, lr=6e-3,
                               warmup_steps=40, eval_every=100, eval_batches=16, checkpoint_every=200)

for _p in (TINY, SMALL, MEDIUM, LARGE, GPU24GB, TITANMAC_24GB):
    PRESETS.register(_p.name, f"harness.presets:{_p.name.upper().replace('-', '_')}",
                     summary=f"{_p.params} params, {_p.steps} steps x {_p.batch_size} x {_p.seq_len} tokens")
