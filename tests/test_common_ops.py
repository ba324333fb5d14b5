"""Fast shared ops against their naive references (float64, tolerance 1e-10 unless stated)."""

import pytest
import torch

from models.common import (CausalDepthwiseConv, RMSNorm, RotaryEmbedding, SlidingWindowAttention, apply_rotary,
                           linear_scan, linear_scan_naive, sliding_window_attention, sliding_window_attention_naive)


@pytest.mark.parametrize("tq,tk,window,n_persistent", [(37, 37, 8, 0), (37, 37, 8, 3), (10, 25, 8, 2),
                                                        (5, 5, 16, 0), (64, 64, 64, 1), (20, 27, 7, 1),
                                                        # a short streamed call over a cache: the band-mask path
                                                        (6, 25, 8, 2), (8, 23, 8, 0), (1, 40, 16, 1),
                                                        # the window never binds: the plain causal path
                                                        (10, 25, 32, 0), (10, 25, 25, 2), (25, 25, 25, 0)])
def test_sliding_window_matches_full_masked_attention(tq, tk, window, n_persistent):
    g = torch.Generator().manual_seed(tq * 100 + tk)
    q, k, v = (torch.randn(2, 3, t, 8, generator=g, dtype=torch.float64, requires_grad=True)
               for t in (tq, tk, tk))
    pk = torch.randn(3, n_persistent, 8, generator=g, dtype=torch.float64) if n_persistent else None
    pv = torch.randn(3, n_persistent, 8, generator=g, dtype=torch.float64) if n_persistent else None
    fast = sliding_window_attention(q, k, v, window, pk, pv)
    slow = sliding_window_attention_naive(q, k, v, window, pk, pv)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
    grads_fast = torch.autograd.grad(fast.square().sum(), (q, k, v))
    grads_slow = torch.autograd.grad(slow.square().sum(), (q, k, v))
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_sliding_window_scores_are_linear_in_length():
    """The block algorithm materialises [T/w, w, 2w+P] scores: doubling T doubles, not quadruples, the work."""
    import torch.nn.functional as F

    sizes = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        sizes.append(q.shape[-2] * k.shape[-2] * q.shape[1])
        return original(q, k, v, attn_mask=attn_mask, **kw)

    F.scaled_dot_product_attention = spy
    try:
        for T in (256, 512):
            x = torch.randn(1, 1, T, 4)
            sliding_window_attention(x, x, x, window=16)
    finally:
        F.scaled_dot_product_attention = original
    assert sizes[1] == 2 * sizes[0]


def test_linear_scan_matches_loop_with_gradients():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 45, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 45, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64)
    fast, slow = linear_scan(a, b, h0), linear_scan_naive(a, b, h0)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    ga = torch.autograd.grad(fast[:, -1].sum(), (a, b))
    gb = torch.autograd.grad(slow[:, -1].sum(), (a, b))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
    assert ga[1][:, 0].abs().sum() > 0  # the first step still receives gradient: nothing is detached


def test_conv_and_attention_stream_exactly():
    torch.manual_seed(0)
    conv = CausalDepthwiseConv(6, 4).double()
    attn = SlidingWindowAttention(16, 2, window=5, n_persistent=2).double()
    x = torch.randn(2, 23, 6, dtype=torch.float64)
    y, _ = conv(x)
    state, parts = None, []
    for seg in x.split([1, 7, 15], dim=1):
        out, state = conv(seg, state)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), y, rtol=0, atol=1e-12)
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    y, _ = attn(x)
    state, parts = None, []
    for seg in x.split([1, 1, 2, 1, 18], dim=1):  # segments shorter than the window, then longer
        out, state = attn(seg, state)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), y, rtol=0, atol=1e-12)
    assert state["k"].shape[2] == 4  # bounded: window - 1 keys


@pytest.mark.parametrize("shape,affine", [((3, 5, 16), True), ((2, 3, 7, 8), True), ((4, 16), False)])
def test_rmsnorm_backward_matches_pytorch(shape, affine):
    """The hand-written CPU backward against nn.RMSNorm's autograd (float64, 1e-12); float32 outputs are
    bitwise nn.RMSNorm's."""
    torch.manual_seed(0)
    ours = RMSNorm(shape[-1], elementwise_affine=affine).double()
    if affine:
        torch.nn.init.normal_(ours.weight)
    ref = torch.nn.RMSNorm(shape[-1], elementwise_affine=affine).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(*shape, dtype=torch.float64)
    y, y_ref = ours(x), ref(x)
    grads = torch.autograd.grad(y, [x, *ours.parameters()], g)
    grads_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(ours, (x,))
    x32 = x.detach().float()
    assert torch.equal(ours.float()(x32), ref.float()(x32))


def test_rotary_matches_pairwise_rotation():
    """apply_rotary against the rotation of each pair (x_i, x_{i+d/2}) written out per pair: bitwise in float32,
    and the gradient is the inverse rotation (float64, 1e-12)."""
    torch.manual_seed(0)
    d = 8
    cos, sin = RotaryEmbedding(d)(torch.arange(6))
    x = torch.randn(2, 3, 6, d)
    expected = torch.empty_like(x)
    for i in range(d // 2):
        a, b = x[..., i], x[..., i + d // 2]
        expected[..., i] = a * cos[:, i] - b * sin[:, i]
        expected[..., i + d // 2] = a * sin[:, i] + b * cos[:, i]
    assert torch.equal(apply_rotary(x, cos, sin), expected)
    x64 = x.double().requires_grad_()
    g = torch.randn_like(x64)
    (grad,) = torch.autograd.grad(apply_rotary(x64, cos.double(), sin.double()), x64, g)
    torch.testing.assert_close(grad, apply_rotary(g, cos.double(), -sin.double()), rtol=0, atol=1e-12)
