"""Properties every registered architecture must have, checked on its tiny preset:
causality (changing token j never changes outputs before j), streaming (segment by segment == one call),
a scalar finite aux loss, and parameter counts within 10% of Transformer++ at every standard preset."""

import pytest
import torch

from harness.adapter import build_model
from harness.inspect import STANDARD_PRESETS, count_parameters
from harness.registry import MODELS

NAMES = MODELS.names()
TOL = 1e-4  # float32, absolute, on logits


@pytest.fixture(scope="module", params=NAMES)
def model(request):
    torch.manual_seed(0)
    m = build_model(request.param, "tiny", vocab_size=256).eval()
    return m


def test_forward_shapes_and_aux(model):
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        logits, aux = model(ids)
    assert logits.shape == (2, 40, 256)
    assert aux.dim() == 0 and torch.isfinite(aux)
    assert torch.isfinite(logits).all()


def test_causality(model):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (1, 48), generator=g)
    with torch.no_grad():
        base, _ = model(ids)
        for j in (0, 17, 31, 47):
            changed = ids.clone()
            changed[0, j] = (changed[0, j] + 101) % 256
            out, _ = model(changed)
            assert torch.allclose(out[:, :j], base[:, :j], atol=TOL), f"position <{j} changed"
            assert not torch.allclose(out[:, j:], base[:, j:], atol=TOL), f"change at {j} had no effect at all"


def test_streaming_equals_one_call(model):
    if model.streaming == "none":
        pytest.skip(f"{model.registry_name} declares it cannot stream")
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 256, (2, 70), generator=g)
    with torch.no_grad():
        full, _ = model(ids)
        state, parts = None, []
        for seg in ids.split([1, 16, 29, 24], dim=1):
            out, _, state = model(seg, state=state)
            parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=TOL)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_match_transformer_pp(name):
    for preset in STANDARD_PRESETS:
        reference = count_parameters("transformer-pp", preset)
        n = count_parameters(name, preset)
        assert n is not None, f"{name} has no {preset} preset"
        assert abs(n - reference) / reference <= 0.10, f"{name} {preset}: {n:,} vs transformer-pp {reference:,}"
