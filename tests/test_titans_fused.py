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


def test_fused_backward_matches_finite_differences():
    """Finite differences against the hand-written backward (each check a fresh forward, so its first backward,
    which is the hand-written one): depth 2, momentum, decay and a clip that bites. For random output weights p
    and input directions d, <d, J^T p> must equal (p . f(x + eps d) - p . f(x - eps d)) / 2 eps (central
    differences in float64, eps = 1e-6: relative tolerance 1e-7)."""
    from models.titans.fused_run import fused_chunk_run
    from models.titans.ops import _coefficients, unfused_l2_run

    g = torch.Generator().manual_seed(1)
    nc, N, n, d = 2, 2, 3, 2
    rand = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    q, k, v = rand(nc, N, n, d), rand(nc, N, n, d), rand(nc, N, n, d)
    theta = -0.3 * torch.rand(nc, N, n, dtype=torch.float64, generator=g)
    log_keep = torch.log(1 - 0.2 * torch.rand(nc, N, n, dtype=torch.float64, generator=g))
    log_eta = torch.log(torch.rand(nc, N, n, dtype=torch.float64, generator=g))
    states = [rand(N, d, 2 * d), rand(N, 2 * d, d), rand(N, d, 2 * d), rand(N, 2 * d, d)]

    def fn(q, k, v, theta, log_keep, log_eta, *states):
        coef = _coefficients(theta, log_keep, log_eta, q, k, factors=False)
        y, new_A, new_S, G = fused_chunk_run(q, k, v, coef, list(states[:2]), list(states[2:]), clip=0.4,
                                               unfused=unfused_l2_run)
        return (y, *new_A, *new_S, *G)

    inputs = [q, k, v, theta, log_keep, log_eta, *states]
    for _ in range(4):
        x = [t.clone().requires_grad_(True) for t in inputs]
        outputs = fn(*x)
        weights = [rand(*o.shape) for o in outputs]
        grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outputs, weights)), x)
        direction = [rand(*t.shape) for t in inputs]
        analytic = sum((gr * dr).sum() for gr, dr in zip(grads, direction)).item()
        with torch.no_grad():
            at = lambda eps: sum((o * w).sum() for o, w in zip(  # noqa: E731
                fn(*(t + eps * dr for t, dr in zip(inputs, direction))), weights)).item()
            numeric = (at(1e-6) - at(-1e-6)) / 2e-6
        assert abs(analytic - numeric) <= 1e-7 * max(1.0, abs(numeric)), (analytic, numeric)


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


def _second_order(fused):
    """d/dx of <d loss / d q, probe>: a gradient of a gradient through the op (deep_nested's meta_order=2)."""
    x, weights = _inputs(2, True, True)
    leaves = [x["q"], x["k"], x["v"], x["theta"], x["log_keep"], x["log_eta"], *weights]
    for t in leaves:
        t.requires_grad_(True)
    state = {"A": weights, "S": [torch.zeros_like(w) for w in weights], "G": weights, "pos": 0}
    y, new = memory_parallel(x["q"], x["k"], x["v"], x["theta"], x["log_keep"], x["log_eta"], state, 4,
                             make_bias("l2"), make_retention("decay"), grad_clip=0.5, fused=fused)
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + new["A"][1].pow(2).sum()
    g_q, = torch.autograd.grad(loss, x["q"], create_graph=True)
    return torch.autograd.grad((g_q * torch.cos(torch.arange(g_q.numel(), dtype=g_q.dtype)).view_as(g_q)).sum(),
                               leaves, allow_unused=True)


def test_fused_op_has_higher_order_gradients():
    """With create_graph the fused op differentiates the unfused path under autograd: second-order gradients
    exist and equal the unfused path's (1e-10 relative)."""
    for a, b in zip(_second_order(None), _second_order(False)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10 * max(b.abs().max().item(), 1e-30))
    assert any(g is not None and g.abs().sum() > 0 for g in _second_order(None))


def test_fused_backward_twice_with_retain_graph():
    """The first backward frees the per-chunk tensors as it goes; a second one (retain_graph) takes the autograd
    route and gives the same gradients."""
    x, weights = _inputs(2, True, True)
    q = x["q"].requires_grad_(True)
    state = {"A": weights, "S": [torch.zeros_like(w) for w in weights], "G": weights, "pos": 0}
    y, _ = memory_parallel(q, x["k"], x["v"], x["theta"], x["log_keep"], x["log_eta"], state, 4, make_bias("l2"),
                           make_retention("decay"))
    loss = y.pow(2).sum()
    first, = torch.autograd.grad(loss, q, retain_graph=True)
    second, = torch.autograd.grad(loss, q)
    torch.testing.assert_close(second, first, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 5), (4, 7)])
def test_decay_momentum_coefficients_match_autograd(shape):
    """The hand-written backward of the coefficients with forgetting and momentum against autograd through the
    general formula (float64; values 1e-13, gradients 1e-12 relative), every output weighted."""
    from models.titans.ops import _coefficients, _coefficients_autograd

    g = torch.Generator().manual_seed(2)
    uniform = lambda: torch.rand(*shape, dtype=torch.float64, generator=g)  # noqa: E731
    leaves = [(-0.3 * uniform()).requires_grad_(), torch.log(1 - 0.2 * uniform()).requires_grad_(),
              torch.log(uniform()).requires_grad_(),
              torch.randn(*shape, 4, dtype=torch.float64, generator=g).requires_grad_(),
              torch.randn(*shape, 4, dtype=torch.float64, generator=g).requires_grad_()]
    keys = ("C", "beta", "c_end", "beta_end", "score1", "m", "m_end", "mo_end", "e_end")
    weights, results = None, []
    for fn in (_coefficients, _coefficients_autograd):
        coef = fn(*leaves, False)
        if weights is None:
            weights = {key: torch.randn(coef[key].shape, dtype=torch.float64, generator=g) for key in keys}
        grads = torch.autograd.grad(sum((coef[key] * weights[key]).sum() for key in keys), leaves)
        results.append(([coef[key] for key in keys], grads))
    (v1, g1), (v2, g2) = results
    for a, b in zip(v1, v2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12 * b.abs().max().item())


@pytest.mark.parametrize("retention", ["decay", "kl"])
def test_a_compiled_titans_memory_layer_matches_eager(retention):
    # decay (Titans): torch.compile cannot trace the fused op's hand-written backward; the op is excluded from
    # compilation (torch.compiler.disable). kl (MIRAS-Memora, the unfused path): the chunk loop runs in Python
    # around one compiled chunk step (run_chunks_compiled). Either way `--compile` gives eager's numbers, and the
    # cap's counters (buffers added to in place: no recompilation per step) count the same.
    from models.titans.memory import NeuralMemory

    torch.manual_seed(0)
    # float64, so that inductor's reordered sums (float32: up to 1e-3 of a small gradient) do not hide a real
    # difference
    layer = NeuralMemory(dim=32, n_heads=2, chunk_size=8, grad_clip=0.5, retention=retention).double()
    T = 20 if retention == "decay" else 16  # kl: two whole chunks, the compiled chunk step (compiling is slow)
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = []
    for fn in (layer, torch.compile(layer)):
        layer.zero_grad()
        layer.reset_cap_counts()
        y, _ = fn(x)
        y.square().mean().backward()
        results.append((y.detach(), [p.grad.clone() for p in layer.parameters()], layer.cap_counts()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-10, atol=1e-12)
    for compiled, eager in zip(results[1][1], results[0][1]):  # within 1e-9 of each gradient's norm
        assert (compiled - eager).norm() <= 1e-9 * eager.norm()
    assert results[1][2] == results[0][2] and results[0][2][1] == 2 * 2 * T * 2  # rows x heads x tokens x layers
