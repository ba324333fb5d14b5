"""Names of the architectures under study (Titans family, MIRAS). Targets are imported only when built."""

from harness.registry import MODELS

_T = "models.titans.presets"
MODELS.register("titans-lmm", f"{_T}:build_lmm", aliases=("lmm", "titans"),
                summary="Titans neural long-term memory layers only (LMM)", family="titans",
                paper="2501.00663")
MODELS.register("titans-mac", f"{_T}:build_mac", aliases=("mac",),
                summary="Titans memory as a context (segments, eqs. 21-25)", family="titans",
                paper="2501.00663")
MODELS.register("titans-mag", f"{_T}:build_mag", aliases=("mag", "titanmac"),
                summary="Titans memory as a gate over sliding-window attention (eqs. 26-28)", family="titans",
                paper="2501.00663")
MODELS.register("titans-mal", f"{_T}:build_mal", aliases=("mal",),
                summary="Titans memory as a layer before sliding-window attention (eqs. 29-31)",
                family="titans",
                paper="2501.00663")
MODELS.register("miras-moneta", f"{_T}:build_moneta", aliases=("moneta",),
                summary="MIRAS Moneta: l_3 attentional bias, l_4 retention", family="miras",
                paper="2504.13173")
MODELS.register("miras-yaad", f"{_T}:build_yaad", aliases=("yaad",),
                summary="MIRAS Yaad: Huber attentional bias with learned threshold", family="miras",
                paper="2504.13173")
MODELS.register("miras-memora", f"{_T}:build_memora", aliases=("memora",),
                summary="MIRAS Memora: l2 attentional bias, KL retention", family="miras",
                paper="2504.13173")
