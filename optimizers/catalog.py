"""Optimizer names. Targets are imported only when an optimizer is built."""

from harness.registry import OPTIMIZERS

OPTIMIZERS.register("adamw", "optimizers.adamw:build", aliases=("adam",),
                    summary="AdamW, decoupled weight decay on matrices (default)")
OPTIMIZERS.register("muon", "optimizers.muon:build",
                    summary="torch.optim.Muon on hidden 2-D matrices + AdamW on embeddings/head/norms/biases")
OPTIMIZERS.register("mugrokfast", "optimizers.mugrokfast:build", aliases=("muon-grokfast",),
                    summary="Grokfast EMA gradient filter + Newton-Schulz orthogonalised momentum (2-D) + AdamW")
OPTIMIZERS.register("adopt-atan2", "optimizers.adopt_atan2:build", aliases=("adopt",),
                    summary="ADOPT (Taniguchi et al. 2024) with the atan2 update (Everett et al. 2024)")
OPTIMIZERS.register("deep-nested", "optimizers.deep_nested:build", aliases=("nested", "deep-nested-optimizer"),
                    summary="DeepNestedOptimizer: learned momentum + LR controller + multi-frequency memory, "
                            "meta-learned (simple | explicit)")
