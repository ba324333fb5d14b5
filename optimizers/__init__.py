"""Optimizers, by registry name. A builder has the signature
    build(model, preset: TrainingPreset, **options) -> torch.optim.Optimizer
and every param group's "lr" is its peak learning rate: the runner's warm-up + cosine schedule scales each group's
initial lr by the same factor (LambdaLR)."""
