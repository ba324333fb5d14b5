"""Flavors (per-preset configs) of the Titans and MIRAS models, sized to Transformer++'s parameter counts at
vocab 256 (tiny 1.12M, small 50.7M, medium 370M, large 756M; all within 3%, checked by the tests), plus the
TitanMAC GPU24GB configuration of `../shared/seeds/000` and `001` (d_model 512, 8 heads, 8 layers, FF 2048
(here a SwiGLU of the same size), sliding-window attention with 16 persistent tokens, neural memory, MAG by
default, tied embeddings): ~52M parameters at the seed's SmolLM vocabulary of 49152 tokens.
"""

from __future__ import annotations

from dataclasses import replace

from harness.adapter import apply_overrides, flavor
from models.titans.models import TitansConfig, TitansLM

# Per-preset geometry shared by every variant: width, heads, chunk / segment / window lengths.
_TINY = TitansConfig(dim=128, heads=4, chunk_size=16, segment=32, window=64, n_persistent=4)
_SMALL = TitansConfig(dim=512, heads=8, chunk_size=64, segment=256, window=512, n_persistent=16)
_MEDIUM = TitansConfig(dim=1024, heads=16, chunk_size=64, segment=256, window=512, n_persistent=16)
_LARGE = TitansConfig(dim=1536, heads=16, chunk_size=64, segment=256, window=512, n_persistent=16)
_BASE = {"tiny": _TINY, "small": _SMALL, "medium": _MEDIUM, "large": _LARGE}

# (depth, ff_hidden) per preset that lands each variant on Transformer++'s parameter count.
_SIZES = {
    "lmm": {"tiny": (4, 448), "small": (12, 1952), "medium": (22, 4000), "large": (20, 5984)},
    "mac": {"tiny": (3, 480), "small": (9, 2016), "medium": (17, 3904), "large": (15, 6144)},
    "mag": {"tiny": (3, 512), "small": (10, 1824), "medium": (18, 3840), "large": (16, 5984)},
    "mal": {"tiny": (3, 512), "small": (10, 1824), "medium": (18, 3840), "large": (16, 5984)},
    # MIRAS (lmm layout, no momentum gate; the residual memory at expansion 4 is larger than Titans' MLP)
    "miras": {"tiny": (4, 416), "small": (12, 1872), "medium": (22, 3904), "large": (20, 5872)},
}

# MIRAS section 5: the three memories differ only in their attentional bias and retention; no momentum; the
# residual memory x + LN(W1 GELU(W2 x)) at expansion 4 (section 5.3). Moneta normalises at chunk boundaries
# (section 5.4, `lq_normalize="chunk"`, the TitansConfig default), which keeps its reads in dual form: a tiny
# training step (B 32 x T 32, one thread) takes 0.49 s, against 2.1 s for the earlier per-token form with the
# smaller MLP memory. Memora still materialises every token's softmax weights (2.8x the MLP memory's step).
_MIRAS_NET = dict(memory_net="residual_ln", memory_expansion=4, momentum=False)
MIRAS = {
    "moneta": dict(bias="lp", bias_p=3.0, retention="lq", retention_q=4.0, **_MIRAS_NET),
    "yaad": dict(bias="huber", huber="norm", retention="decay", **_MIRAS_NET),
    "memora": dict(bias="l2", retention="kl", **_MIRAS_NET),
}

TITANMAC_24GB = TitansConfig(variant="mag", dim=512, heads=8, depth=8, ff_hidden=1365, chunk_size=64,
                             segment=256, window=512, n_persistent=16, memory_every=4, tie_embeddings=True)


def flavors(variant: str, miras: str | None = None) -> dict[str, TitansConfig]:
    sizes = _SIZES["miras" if miras else variant]
    extra = MIRAS[miras] if miras else {}
    out = {p: replace(base, variant=variant, depth=sizes[p][0], ff_hidden=sizes[p][1], **extra)
           for p, base in _BASE.items()}
    if variant == "mac":  # tiny: the memory learns from each 32-token segment as one chunk (eq. 24)
        out["tiny"] = replace(out["tiny"], chunk_size=out["tiny"].segment)
    if variant in ("mac", "mag", "mal") and not miras:
        out["titanmac-24gb"] = replace(TITANMAC_24GB, variant=variant)
    return out


def _builder(name: str, flavor_table: dict[str, TitansConfig]):
    def build(preset: str = "tiny", vocab_size: int = 256, overrides: dict | None = None) -> TitansLM:
        settings = {"vocab_size": vocab_size, **(overrides or {})}
        config = apply_overrides(flavor(flavor_table, preset, name), settings)
        return TitansLM(config)

    build.__doc__ = f"Build {name} at a preset ({', '.join(flavor_table)}) for a vocabulary size."
    build.FLAVORS = flavor_table
    return build


build_lmm = _builder("titans-lmm", flavors("lmm"))
build_mac = _builder("titans-mac", flavors("mac"))
build_mag = _builder("titans-mag", flavors("mag"))
build_mal = _builder("titans-mal", flavors("mal"))
build_moneta = _builder("miras-moneta", flavors("lmm", "moneta"))
build_yaad = _builder("miras-yaad", flavors("lmm", "yaad"))
build_memora = _builder("miras-memora", flavors("lmm", "memora"))
