"""Benchmark harness for long-context memory architectures.

One uniform model adapter (`harness.adapter.LMAdapter`), one task interface (`tasks.base.Task`), one runner
(`harness.runner`) and one results format (`harness.results`). Models, tasks, optimizers and presets are looked
up by name in `harness.registry`.
"""

__version__ = "0.1.0"
