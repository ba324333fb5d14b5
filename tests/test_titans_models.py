"""Titans / MIRAS language models: registry, parameter counts per preset, causality, exact streaming with a
fixed-size state, gradients reaching every parameter, and the memory layer's parallel path against its
token-by-token reference end to end (projections, conv, gates included)."""

import pytest
import torch

from harness.adapter import build_model
from harness.errors import HarnessError
from harness.registry import MODELS
from models.common import SlidingWindowAttention
from models.titans.memory import NeuralMemory


NAMES = ["titans-lmm", "titans-mac", "titans-mag", "titans-mal", "miras-moneta", "miras-yaad", "miras-memora"]
# A shrunken tiny flavor so that every model runs in well under a second; chunk/segment/window smaller than T.
SMALL = dict(dim=32, heads=2, depth=2, ff_hidden=64, chunk_size=4, segment=8, window=8, n_persistent=2)


def _tiny(name, **extra):
    torch.manual_seed(0)
    return build_model(name, "tiny", 256, {**SMALL, **extra})


def test_registered_with_aliases():
    for name in NAMES:
        assert name in MODELS.names()
    assert MODELS.resolve("moneta").name == "miras-moneta" and MODELS.resolve("MAC").name == "titans-mac"


@pytest.mark.parametrize("name", NAMES)
def test_causal_streaming_and_gradients(name):
    model = _tiny(name)
    ids = torch.randint(0, 256, (2, 30))
    logits, aux = model(ids)
    assert logits.shape == (2, 30, 256) and aux.shape == ()
    # causality: changing token j never changes logits at positions < j
    for j in (0, 9, 17):
        changed = ids.clone()
        changed[:, j] = (changed[:, j] + 1) % 256
        other, _ = model(changed)
        assert torch.equal(other[:, :j], logits[:, :j]) or (other[:, :j] - logits[:, :j]).abs().max() < 1e-6
        assert (other[:, j:] - logits[:, j:]).abs().max() > 1e-6
    # streaming: cuts inside chunks, segments and windows give the one-call logits; the state stays one size
    with torch.no_grad():
        state, parts, sizes = None, [], []
        for a, b in [(0, 3), (3, 4), (4, 13), (13, 22), (22, 30)]:
            part, _, state = model(ids[:, a:b], state=state)
            parts.append(part)
            sizes.append(_state_numel(state))
    torch.testing.assert_close(torch.cat(parts, 1), logits.detach(), rtol=0, atol=1e-4)
    assert sizes[-1] == sizes[-2]  # once the windows are full, the state no longer grows
    assert not any(t.requires_grad for t in _tensors(state))
    logits.float().pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _state_numel(state):
    return sum(t.numel() for t in _tensors(state))


def test_long_stream_state_is_flat():
    model = _tiny("titans-mac")
    state, sizes = None, []
    with torch.no_grad():
        for _ in range(6):
            _, _, state = model(torch.randint(0, 256, (1, 16)), state=state)
            sizes.append(_state_numel(state))
    assert len(set(sizes)) == 1


@pytest.mark.parametrize("kwargs", [dict(depth=1), dict(depth=2), dict(depth=2, momentum=False, decay=False),
                                    dict(depth=2, bias="lp", retention="lq", momentum=False),
                                    dict(depth=1, bias="huber"),
                                    dict(depth=2, retention="kl", momentum=False)])
def test_memory_layer_parallel_matches_reference(kwargs):
    torch.manual_seed(0)
    layer = NeuralMemory(16, 2, chunk_size=3, **kwargs).double()
    x = torch.randn(2, 10, 16, dtype=torch.float64, requires_grad=True)
    outs = []
    for reference in (False, True):
        state, ys = None, []
        for a, b in [(0, 4), (4, 10)]:  # the state is carried across calls in both paths
            y, state = layer(x[:, a:b], state, reference=reference)
            ys.append(y)
        y = torch.cat(ys, 1)
        grads = torch.autograd.grad((y * torch.cos(y)).sum(), [x, *layer.parameters()])
        outs.append((y, grads))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=1e-10)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


TPP = {"tiny": 1_119_360, "small": 50_655_744, "medium": 369_849_344, "large": 756_069_888}


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_match_transformer_pp(name):
    for preset, target in TPP.items():
        with torch.device("meta"):
            n = build_model(name, preset, 256).num_parameters()
        assert abs(n / target - 1) < 0.05, (preset, n, target)


def test_titanmac_24gb_preset():
    with torch.device("meta"):
        model = build_model("titans-mag", "titanmac-24gb", 49152)
    assert model.config.variant == "mag" and model.config.tie_embeddings
    assert 50e6 < model.num_parameters() < 54e6  # seed 000: ~52M with neural memory
    assert sum(b.memory is not None for b in model.blocks) >= 1


def test_bad_settings_are_one_line_errors():
    with pytest.raises(HarnessError, match="accepted"):
        build_model("titans-lmm", "tiny", 256, {"variant": "mat"})
    with pytest.raises(HarnessError, match="accepted"):
        build_model("miras-yaad", "tiny", 256, {"bias": "cosine"})
    with pytest.raises(HarnessError, match="has no preset"):
        build_model("titans-mac", "huge", 256)


def test_sliding_window_attention_streams_from_stream_start():
    # regression: with fewer than window-1 tokens seen, the carried KV tail must keep all of them
    torch.manual_seed(0)
    attn = SlidingWindowAttention(16, 2, window=8, n_persistent=2).double()
    x = torch.randn(1, 20, 16, dtype=torch.float64)
    full, _ = attn(x)
    state, parts = None, []
    for a, b in [(0, 3), (3, 4), (4, 20)]:
        y, state = attn(x[:, a:b], state)
        parts.append(y)
    torch.testing.assert_close(torch.cat(parts, 1), full)


def test_causal_depthwise_conv_matches_conv1d():
    # models.common.CausalDepthwiseConv computes its conv as shifted multiply-adds; nn.Conv1d is the reference
    from models.common import CausalDepthwiseConv
    torch.manual_seed(0)
    conv = CausalDepthwiseConv(6, 4).double()
    x, state = torch.randn(2, 9, 6, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    y, new_state = conv(x, state)
    ref = conv.conv(torch.cat([state, x], 1).transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(new_state, x[:, -3:])


def test_causal_depthwise_conv_gradients_match_conv1d():
    # its hand-written backward (models.common.layers._ShiftedMultiplyAdd) against autograd through nn.Conv1d
    from models.common import CausalDepthwiseConv
    torch.manual_seed(0)
    conv = CausalDepthwiseConv(6, 4).double()
    x = torch.randn(2, 9, 6, dtype=torch.float64, requires_grad=True)
    state = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(2, 9, 6, dtype=torch.float64)
    (conv(x, state)[0] * probe).sum().backward()
    got = [t.grad.clone() for t in (x, state, conv.conv.weight, conv.conv.bias)]
    for t in (x, state, conv.conv.weight, conv.conv.bias):
        t.grad = None
    ref = conv.conv(torch.cat([state, x], 1).transpose(1, 2)).transpose(1, 2)
    (ref * probe).sum().backward()
    for g, t in zip(got, (x, state, conv.conv.weight, conv.conv.bias)):
        torch.testing.assert_close(g, t.grad)


@pytest.mark.parametrize("name", NAMES)
def test_inner_loop_stays_finite_on_a_long_stream(name):
    # regression: with theta_max = 0.1 the momentum inner loop blew up to inf/NaN within ~70 tokens at init
    torch.manual_seed(0)
    model = build_model(name, "tiny", 256).eval()
    with torch.no_grad():
        logits, _ = model(torch.randint(0, 256, (1, 384)))
    assert torch.isfinite(logits).all()
