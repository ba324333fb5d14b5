"""Newton-Schulz orthogonalisation (shared by mugrokfast) and the orthogonality of Muon-style updates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.presets import TINY
from optimizers.mugrokfast import build as build_mugrokfast
from optimizers.muon import build as build_muon
from optimizers.newton_schulz import CUBIC_COEFFICIENTS, newton_schulz

SHAPES = [(96, 24), (24, 96), (48, 48)]  # tall, wide, square



def ill_conditioned(shape, seed=0, cond=50.0):
    """A random matrix with singular values spread over [1/cond, 1] (far from orthogonal)."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    k = min(m, n)
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), k, dtype=torch.float64)
    return (u[:, :k] * s) @ v[:, :k].T


@pytest.mark.parametrize("shape", SHAPES)
def test_quintic_newton_schulz_flattens_the_spectrum(shape):
    G = ill_conditioned(shape)
    sv_in = torch.linalg.svdvals(G)
    assert sv_in.max() / sv_in.min() > 40  # the input is far from orthogonal
    X = newton_schulz(G, steps=5)
    assert X.shape == G.shape and X.dtype == G.dtype
    sv = torch.linalg.svdvals(X)
    assert sv.min() > 0.6 and sv.max() < 1.25, sv  # Muon's quintic lands in ~[0.7, 1.2], not exactly 1


@pytest.mark.parametrize("shape", SHAPES)
def test_cubic_newton_schulz_converges_to_the_polar_factor(shape):
    G = ill_conditioned(shape, cond=5.0)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    X = newton_schulz(G, steps=60, coefficients=CUBIC_COEFFICIENTS)
    torch.testing.assert_close(X, U @ Vh, atol=1e-8, rtol=0)  # float64 reference: the exact U V^T


def test_newton_schulz_rejects_non_matrices():
    with pytest.raises(ValueError):
        newton_schulz(torch.ones(3, 3, 3))


class TwoMatrices(nn.Module):
    vocab_size = 64

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(64, 16)  # tall 64 x 16
        self.hidden = nn.Linear(16, 40, bias=False)  # tall 40 x 16
        self.wide = nn.Linear(40, 16, bias=False)  # wide 16 x 40
        self.norm = nn.RMSNorm(16)


def _set_grads(model, seed=0):
    for p in model.parameters():
        p.grad = ill_conditioned(tuple(p.shape), seed).float() if p.dim() == 2 else torch.ones_like(p)


def _update_singular_values(build, name, **options):
    torch.manual_seed(0)
    model = TwoMatrices()
    opt = build(model, TINY, weight_decay="0", **options)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _set_grads(model)
    opt.step()
    return {n: torch.linalg.svdvals((before[n] - p.detach()).double()) for n, p in model.named_parameters()
            if p.dim() == 2}


def test_torch_muon_update_of_hidden_matrices_is_orthogonal():
    svs = _update_singular_values(build_muon, "muon", muon_lr="0.1")
    for name in ("hidden.weight", "wide.weight"):
        sv = svs[name] / svs[name].max()
        assert sv.min() > 0.5, (name, sv)  # equalised (bf16 NS inside torch.optim.Muon)
    emb = svs["emb.weight"]  # AdamW: the gradient's spread survives (sign-like, not orthogonal)
    assert emb.min() / emb.max() < 0.5


def test_mugrokfast_orthogonalises_every_2d_matrix_including_embeddings():
    svs = _update_singular_values(build_mugrokfast, "mugrokfast", muon_lr="0.1")
    for name in ("emb.weight", "hidden.weight", "wide.weight"):
        sv = svs[name] / svs[name].max()
        assert sv.min() > 0.5, (name, sv)
    svs_hidden_only = _update_singular_values(build_mugrokfast, "mugrokfast", muon_lr="0.1", orthogonalize="hidden")
    emb = svs_hidden_only["emb.weight"]
    assert emb.min() / emb.max() < 0.5  # the embedding went to AdamW
