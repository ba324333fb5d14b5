"""Optimizer names. Targets are imported only when an optimizer is built."""

from harness.registry import OPTIMIZERS

OPTIMIZERS.register("adamw", "optimizers.adamw:build", aliases=("adam",),
                    summary="AdamW, decoupled weight decay on matrices (default)")
