"""Names of the architectures under study (Titans family, MIRAS). Targets are imported only when built."""

from harness.registry import MODELS  # noqa: F401  (entries are added as the architectures land)
