"""The chunk-parallel neural-memory op against the token-by-token reference (Titans eqs. 12-15, section 3.2;
MIRAS biases and retentions). float64 throughout; tolerances: outputs and end states 1e-10, input gradients
1e-8
(the reference differentiates the bias loss with torch.func, the fast path uses closed forms)."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from models.titans.objectives import make_bias, make_retention
from models.titans.ops import memory_naive, memory_parallel


B, H, T, D = 2, 2, 13, 4


def _inputs(depth, momentum, decay, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = [D] + [2 * D] * (depth - 1) + [D]
    rand = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    x = dict(
        q=F.normalize(rand(B, H, T, D), dim=-1), k=F.normalize(rand(B, H, T, D), dim=-1), v=rand(B, H, T, D),
        theta=torch.rand(B, H, T, dtype=torch.float64, generator=g) * 0.3,
        log_keep=(torch.log(1 - 0.2 * torch.rand(B, H, T, dtype=torch.float64, generator=g))
                  if decay else None),
        log_eta=torch.log(torch.rand(B, H, T, dtype=torch.float64, generator=g)) if momentum else None,
        # Huber thresholds on both sides of the errors' norms (~2): Yaad's norm switch takes both branches
        bias_param=3 * torch.rand(B, H, T, 1, dtype=torch.float64, generator=g) + 0.1,
    )
    weights = [rand(B, H, dims[i], dims[i + 1]) / dims[i] ** 0.5 for i in range(depth)]
    return x, weights


def _run(fn, x, weights, momentum, chunk, bias, retention, pos=0, grad_clip=None):
    state = {"A": weights, "S": [torch.zeros_like(w) for w in weights] if momentum else None, "G": weights,
             "pos": pos}
    return fn(x["q"], x["k"], x["v"], x["theta"], x["log_keep"], x["log_eta"], state, chunk, bias, retention,
              x["bias_param"] if bias.needs_param else None, grad_clip=grad_clip)


def _compare(depth, momentum, decay, bias_name="l2", retention_name="decay", chunk=4, pos=0, grad_clip=None):
    x, weights = _inputs(depth, momentum, decay)
    leaves = [t for t in list(x.values()) + weights if t is not None]
    for t in leaves:
        t.requires_grad_(True)
    bias, retention = make_bias(bias_name), make_retention(retention_name, scale=2.0)
    results = []
    for fn in (memory_parallel, memory_naive):
        y, state = _run(fn, x, weights, momentum, chunk, bias, retention, pos, grad_clip)
        probe = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        loss = (y * probe).sum() + sum(a.pow(2).sum() for a in state["A"])
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        results.append((y, state, grads))
    (y1, s1, g1), (y2, s2, g2) = results
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-10)
    for a, b in zip(s1["A"], s2["A"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    if momentum:
        for a, b in zip(s1["S"], s2["S"]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for a, b in zip(g1, g2):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
    assert all(g is not None and g.abs().sum() > 0 for g in (g1[0], g1[1], g1[2], g1[3]))  # q, k, v, theta


@pytest.mark.parametrize("depth,momentum,decay",
                         list(itertools.product([1, 2], [False, True], [False, True])))
def test_parallel_matches_reference_titans(depth, momentum, decay):
    _compare(depth, momentum, decay)


@pytest.mark.parametrize("chunk,pos", [(1, 0), (5, 3), (16, 0), (3, 7)])
def test_parallel_matches_reference_chunking_and_stream_offset(chunk, pos):
    _compare(2, True, True, chunk=chunk, pos=pos)


@pytest.mark.parametrize("bias,retention", [("lp", "lq"), ("huber", "decay"), ("l2", "kl")])
@pytest.mark.parametrize("depth,momentum", [(1, False), (2, False), (2, True)])
def test_parallel_matches_reference_miras(bias, retention, depth, momentum):
    _compare(depth, momentum, True, bias, retention)


def test_three_layer_memory():
    _compare(3, True, True)


@pytest.mark.parametrize("depth,momentum,bias,retention",
                         [(1, False, "l2", "decay"), (2, True, "l2", "decay"), (2, False, "huber", "decay"),
                          (2, False, "lp", "lq")])
def test_parallel_matches_reference_with_inner_gradient_clip(depth, momentum, bias, retention):
    """A cap of 0.5 cuts most tokens' gradients of these inputs (norms ~0.1-3), so both paths clip, and must
    clip alike (the reference takes each token's full gradient matrix norm)."""
    x, weights = _inputs(depth, momentum, True)
    bias_fn, keep = make_bias(bias), make_retention(retention, scale=2.0)
    # the cap must bite, or this test would not test it
    _, free = _run(memory_parallel, x, weights, momentum, 4, bias_fn, keep)
    _, capped = _run(memory_parallel, x, weights, momentum, 4, bias_fn, keep, grad_clip=0.5)
    assert (free["A"][-1] - capped["A"][-1]).abs().max() > 1e-3
    _compare(depth, momentum, True, bias, retention, grad_clip=0.5)


@pytest.mark.parametrize("cuts", [[0, 5, 6, 13], [0, 4, 8, 13], [0, 1, 2, 3, 13]])
def test_streaming_segments_equal_one_call_and_state_is_fixed_size(cuts):
    x, weights = _inputs(2, True, True)
    bias, retention = make_bias("l2"), make_retention("decay")
    y_full, s_full = _run(memory_parallel, x, weights, True, 4, bias, retention)
    state = {"A": weights, "S": [torch.zeros_like(w) for w in weights], "G": weights, "pos": 0}
    sizes, parts = set(), []
    for a, b in zip(cuts[:-1], cuts[1:]):
        sl = {k: (v[:, :, a:b] if v is not None else None) for k, v in x.items()}
        y, state = memory_parallel(sl["q"], sl["k"], sl["v"], sl["theta"], sl["log_keep"], sl["log_eta"],
                                   state,
                                   4, bias, retention)
        parts.append(y)
        sizes.add(sum(t.numel() for key in ("A", "S", "G") for t in state[key]))
    assert len(sizes) == 1  # the carried state does not grow with the stream
    torch.testing.assert_close(torch.cat(parts, dim=2), y_full, rtol=0, atol=1e-12)
    for a, b in zip(state["A"], s_full["A"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_closed_form_bias_gradients_match_autograd():
    err = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    delta = torch.rand(3, 5, 1, dtype=torch.float64) + 0.05
    for bias in (make_bias("l2"), make_bias("lp", 3.0), make_bias("lp", 1.5), make_bias("huber"),
                 make_bias("huber", huber="coordinate")):
        (auto,) = torch.autograd.grad(bias.loss(err, delta).sum(), err)
        torch.testing.assert_close(bias.grad(err, delta), auto)


def test_retention_maps():
    A = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    W = make_retention("kl", scale=3.0).phi(A)
    torch.testing.assert_close(W.sum(-2), torch.full((2, 3, 5), 3.0, dtype=torch.float64))
    Wq = make_retention("lq", 4.0).phi(A)
    norm = A.pow(4).sum((-2, -1), keepdim=True).pow(0.25)
    torch.testing.assert_close(Wq, A / norm.pow(2), rtol=1e-5, atol=1e-8)


def test_bad_objective_names_are_one_line_errors():
    with pytest.raises(HarnessError, match="accepted"):
        make_bias("l7")
    with pytest.raises(HarnessError, match="accepted"):
        make_retention("forget")


@pytest.mark.parametrize("retention", ["lq", "kl"])
def test_non_linear_retention_recomputes_chunks_in_backward(monkeypatch, retention):
    """Moneta's and Memora's chunks keep only their inputs for backward and run again there: the same numbers
    as keeping every intermediate (float64, 1e-12), and the cap's counters count each token once."""
    from models.titans import ops

    x, weights = _inputs(2, True, True)
    leaves = [t.requires_grad_(True) for t in list(x.values()) + weights if t is not None]
    bias, keep = make_bias("l2"), make_retention(retention, scale=2.0)
    calls, results = [], []
    checkpoint = ops.checkpoint
    for recompute in (True, False):
        monkeypatch.setattr(ops, "checkpoint", (lambda fn, *a, **kw: calls.append(1) or checkpoint(fn, *a, **kw))
                            if recompute else (lambda fn, *a, **kw: fn(*a)))
        stats = {"capped": torch.zeros((), dtype=torch.long), "total": torch.zeros((), dtype=torch.long)}
        state = {"A": weights, "S": [torch.zeros_like(w) for w in weights], "G": weights, "pos": 0}
        y, end = memory_parallel(x["q"], x["k"], x["v"], x["theta"], x["log_keep"], x["log_eta"], state, 4, bias,
                                 keep, grad_clip=0.5, stats=stats)
        grads = torch.autograd.grad((y * y).sum() + end["A"][-1].sum(), leaves, allow_unused=True)
        results.append((y, grads, int(stats["capped"]), int(stats["total"])))
    assert len(calls) == 3  # T = 13 in chunks of 4: three whole chunks recomputed, the last 1 token not
    (y1, g1, c1, n1), (y2, g2, c2, n2) = results
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert (c1, n1) == (c2, n2) and 0 < c1 <= n1 == B * H * T * 2  # rows x heads x tokens x layers: once each


def test_the_recompute_setting_reaches_every_memory_layer(monkeypatch):
    from harness.adapter import build_model
    from models.titans import ops

    calls = []
    checkpoint = ops.checkpoint
    monkeypatch.setattr(ops, "checkpoint", lambda fn, *a, **kw: calls.append(1) or checkpoint(fn, *a, **kw))
    ids = torch.randint(0, 256, (1, 33))
    small = {"dim": 32, "heads": 2, "depth": 2, "ff_hidden": 64, "chunk_size": 8}
    losses = []
    for recompute, expect in ((None, True), (False, False)):
        torch.manual_seed(0)
        model = build_model("miras-memora", "tiny", 256, {**small, "recompute": recompute})
        del calls[:]
        logits, _ = model(ids)
        logits.square().mean().backward()
        assert bool(calls) == expect, recompute
        losses.append(logits.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)  # same numbers either way
