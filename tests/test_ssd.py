"""The harness's Mamba-2 SSD scan (baselines/ssd.py) against the token-by-token recurrence (float64), against
transformers' `mamba2_chunk_scan` (float32, outputs and gradients), and inside the model: the same logits and
gradients as transformers' scan, the module-level function restored after every call."""

import pytest
import torch
from transformers.models.mamba2 import modeling_mamba2

from baselines.mamba2 import build
from baselines.ssd import ssd_chunk_scan, ssd_chunked, ssd_naive
from harness.errors import HarnessError


def inputs(b=2, T=37, h=4, p=3, g=2, n=5, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    return {"x": r(b, T, h, p), "dt": torch.rand(b, T, h, generator=gen, dtype=dtype),
            "A": -2 * torch.rand(h, generator=gen, dtype=dtype), "B": r(b, T, g, n), "C": r(b, T, g, n), "D": r(h),
            "initial_state": r(b, h, p, n)}


@pytest.mark.parametrize("chunk", [1, 4, 8, 64])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_chunked_equals_the_token_by_token_recurrence(chunk, groups):
    a = inputs(g=groups)  # T = 37: a partial last chunk for every chunk size > 1
    y_ref, h_ref = ssd_naive(**a)
    y, h = ssd_chunked(chunk_size=chunk, **a)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-10)


def test_without_initial_state_or_skip():
    a = inputs(seed=1)
    a.update(D=None, initial_state=None)
    y_ref, h_ref = ssd_naive(**a)
    y, h = ssd_chunked(chunk_size=8, **a)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-10)


def library_scan():
    fn = modeling_mamba2.mamba2_chunk_scan
    return getattr(fn, "__wrapped__", fn)  # transformers' PyTorch code, whatever kernel wraps it


@pytest.mark.parametrize("with_state", [False, True])
def test_drop_in_for_transformers_scan_outputs_and_gradients(with_state):
    a = inputs(b=2, T=70, h=4, p=8, g=2, n=16, dtype=torch.float32, seed=2)
    dt_bias = torch.randn(4)
    leaves = {k: a[k].clone().requires_grad_() for k in ("x", "dt", "B", "C")}
    results = []
    for fn in (library_scan(), ssd_chunk_scan):
        xs = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
        y, final = fn(xs["x"], xs["dt"], a["A"], xs["B"], xs["C"], 16, D=a["D"], dt_bias=dt_bias,
                      initial_states=a["initial_state"] if with_state else None, dt_softplus=True,
                      dt_limit=(0.0, 5.0), return_final_states=True)
        (y.square().sum() + final.sum()).backward()
        results.append((y, final, {k: v.grad for k, v in xs.items()}))
    (y0, f0, g0), (y1, f1, g1) = results
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f1, f0, rtol=1e-5, atol=1e-5)
    for k in g0:  # float32 sums in a different order: compare relative to the gradient's size
        assert (g1[k] - g0[k]).norm() <= 1e-5 * g0[k].norm(), k


def test_recomputed_backward_equals_the_stored_one():
    a = inputs(dtype=torch.float64, seed=3)
    grads = []
    for recompute in (False, True):
        x = a["x"].clone().requires_grad_()
        y = ssd_chunk_scan(x, a["dt"], a["A"], a["B"], a["C"], 8, D=a["D"], recompute=recompute)
        y.sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)


def test_model_gives_transformers_logits_and_gradients_and_restores_the_library_function():
    ids = torch.randint(0, 256, (2, 150), generator=torch.Generator().manual_seed(4))
    library = modeling_mamba2.mamba2_chunk_scan
    out = {}
    for scan in ("library", "ssd"):
        torch.manual_seed(0)
        model = build("tiny", vocab_size=256, overrides={"scan": scan, "depth": 2})
        assert model.describe()["scan"] == scan
        logits, _ = model(ids)
        logits.square().mean().backward()
        out[scan] = (logits.detach(), {n: p.grad for n, p in model.named_parameters()})
        assert modeling_mamba2.mamba2_chunk_scan is library
    torch.testing.assert_close(out["ssd"][0], out["library"][0], rtol=1e-4, atol=1e-4)
    for name, grad in out["library"][1].items():
        torch.testing.assert_close(out["ssd"][1][name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_auto_is_the_harness_scan_on_the_cpu_and_a_bad_name_is_one_line():
    assert build("tiny", vocab_size=256).describe()["scan"] == "ssd"
    with pytest.raises(HarnessError, match="unknown scan 'fast'; accepted: auto, ssd, library"):
        build("tiny", vocab_size=256, overrides={"scan": "fast"})
