"""The fused memory op (models/titans/fused_run.py: whole chunks as one autograd node with a hand-written backward)
against autograd through the unfused chunk-parallel path, in float64. Tolerances: outputs and states 1e-12
absolute; gradients 1e-10 relative to each gradient's largest entry (the two paths differ only in the order of
floating-point sums). A numerical gradcheck covers the hand-written backward independently of both."""

import itertools

import pytest
import torch

from harness.errors import HarnessError
from models.titans.objectives import make_bias, make_retention
from models.titans.ops import memory_parallel

from test_titans_ops import _inputs


def _run_both(depth, momentum, decay, clip, T, chunk, pos):
    x, weights = _inputs(depth, momentum, decay)
    x = {key: (val[:, :, :T] if val is not None else None) for key, val in x.items()}
    leaves = [t.requires_grad_(True) for t in list(x.values()) + weights if t is not None]
    bias, retention = make_bias("l2"), make_retention("decay")
    results = []
    for fused in (True, False):
        state = {"A": weights, "S": [torch.zeros_like(w) for w in weights] if momentum else None, "G": weights,
                 "pos": pos}
        y, new = memory_parallel(x["q"], x["k"], x["v"], x["theta"], x["log_keep"], x["log_eta"], state, chunk,
                                 bias, retention, grad_clip=clip, fused=fused)
        probe = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        # every output the op returns carries a gradient: y, the end states A and S, and the chunk-start G
        loss = (y * probe).sum() + sum(a.pow(2).sum() for a in new["A"]) + 0.3 * sum(g.sum() for g in new["G"])
        if momentum:
            loss = loss + sum(s.pow(3).sum() for s in new["S"])
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        results.append((y, new, grads))
    return results


@pytest.mark.parametrize("depth,momentum,decay,clip", [
    *((d, m, dec, None) for d, m, dec in itertools.product([1, 2], [False, True], [False, True])),
    (2, True, True, 0.5), (1, False, True, 0.5), (3, True, True, None), (3, False, True, 0.5)])
@pytest.mark.parametrize("T,chunk,pos", [(16, 4, 0), (13, 3, 7), (5, 4, 0)])  # runs of 4, 3 and 1 chunks
def test_fused_matches_autograd(depth, momentum, decay, clip, T, chunk, pos):
    (y1, s1, g1), (y2, s2, g2) = _run_both(depth, momentum, decay, clip, T, chunk, pos)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)
    for key in ("A", "G") + (("S",) if momentum else ()):
        for a, b in zip(s1[key], s2[key]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10 * b.abs().max().item())


def test_fused_backward_passes_gradcheck():
    """Finite differences against the hand-written backward: depth 2, momentum, decay and a clip that bites."""
    from models.titans.fused_run import fused_chunk_run
    from models.titans.ops import _coefficients

    g = torch.Generator().manual_seed(1)
    nc, N, n, d = 2, 2, 3, 2
    rand = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    q, k, v = rand(nc, N, n, d), rand(nc, N, n, d), rand(nc, N, n, d)
    theta = -0.3 * torch.rand(nc, N, n, dtype=torch.float64, generator=g)
    log_keep = torch.log(1 - 0.2 * torch.rand(nc, N, n, dtype=torch.float64, generator=g))
    log_eta = torch.log(torch.rand(nc, N, n, dtype=torch.float64, generator=g))
    A = [rand(N, d, 2 * d), rand(N, 2 * d, d)]
    S = [rand(N, d, 2 * d), rand(N, 2 * d, d)]

    def fn(q, k, v, theta, log_keep, log_eta, *states):
        coef = _coefficients(theta, log_keep, log_eta, q, k, factors=False)
        y, new_A, new_S, G = fused_chunk_run(q, k, v, coef, list(states[:2]), list(states[2:]), clip=0.4)
        return (y, *new_A, *new_S, *G)

    inputs = [t.requires_grad_(True) for t in (q, k, v, theta, log_keep, log_eta, *A, *S)]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_fused_keeps_nothing_without_a_graph():
    x, weights = _inputs(2, True, True)
    bias, retention = make_bias("l2"), make_retention("decay")
    state = {"A": weights, "S": [torch.zeros_like(w) for w in weights], "G": weights, "pos": 0}
    args = (x["q"], x["k"], x["v"], x["theta"], x["log_keep"], x["log_eta"], state, 4, bias, retention)
    y_graph, _ = memory_parallel(*args)
    with torch.no_grad():
        y_plain, _ = memory_parallel(*args)
    torch.testing.assert_close(y_plain, y_graph, rtol=0, atol=0)


def test_fused_refuses_what_it_does_not_cover():
    x, weights = _inputs(1, False, True)
    state = {"A": weights, "S": None, "G": weights, "pos": 0}
    with pytest.raises(HarnessError, match="fused memory op covers the l2 bias with linear retention"):
        memory_parallel(x["q"], x["k"], x["v"], x["theta"], x["log_keep"], None, state, 4, make_bias("huber"),
                        make_retention("decay"), x["bias_param"], fused=True)
