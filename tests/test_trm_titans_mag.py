"""TRM x Titans-MAG: the scan memory equals the step-by-step recurrence (values and gradients, with gradient reaching
early positions), the model is causal and streams exactly, the aux terms are finite and non-negative, TRM's
detaching and deep supervision behave as documented, and presets match Transformer++ in size."""

import math

import pytest
import torch

from baselines.trm_titans_mag import (MAGGate, TRMTitansMAG, TRMTitansMAGConfig, build, decaying_memory,
                                      decaying_memory_naive)
from harness.errors import HarnessError



def _tiny(**kw):
    torch.manual_seed(0)
    cfg = TRMTitansMAGConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, window=8, n_persistent=2, **kw)
    return TRMTitansMAG(cfg).double().eval()


def test_scan_memory_equals_naive_loop_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 37, 6, dtype=torch.float64, requires_grad=True)
    decay = torch.rand(6, dtype=torch.float64) * 0.98 + 0.01
    m0 = torch.randn(2, 6, dtype=torch.float64)
    fast, slow = decaying_memory(x, decay, m0), decaying_memory_naive(x, decay, m0)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    weights = torch.randn_like(fast)
    g_fast, = torch.autograd.grad((fast * weights).sum(), x, retain_graph=True)
    g_slow, = torch.autograd.grad((slow * weights).sum(), x)
    torch.testing.assert_close(g_fast, g_slow, rtol=0, atol=1e-12)
    # Gradient flows through time: m_T depends on x_0 with d m_T / d x_0 = (1 - a) a^(T-1) per channel.
    g0, = torch.autograd.grad(fast[:, -1].sum(), x)
    expected = (1 - decay) * decay ** 36
    assert (g0[:, 0].abs() > 0).all()
    torch.testing.assert_close(g0[0, 0], expected, rtol=1e-10, atol=0)


def test_memory_gradient_reaches_first_token_inside_the_model():
    model = _tiny()
    x = torch.randn(1, 20, 32, dtype=torch.float64, requires_grad=True)
    memory_out, _ = model.blocks[0].memory(x, None)
    g, = torch.autograd.grad(memory_out[:, -1].sum(), x)
    assert g[:, 0].abs().sum() > 0


def test_causal():
    model = _tiny()
    ids = torch.randint(0, 48, (2, 26))
    logits, aux = model(ids)
    for j in (0, 9, 25):
        changed = ids.clone()
        changed[:, j] = (changed[:, j] + 1) % 48
        logits2, _ = model(changed)
        torch.testing.assert_close(logits2[:, :j], logits[:, :j], rtol=0, atol=1e-12)
        assert (logits2[:, j] - logits[:, j]).abs().max() > 1e-8


@pytest.mark.parametrize("segment,length", [(1, 12), (5, 29), (13, 29)])
def test_streaming_equals_one_call(segment, length):
    model = _tiny()
    ids = torch.randint(0, 48, (2, length))  # longer than the window (8): windows and memory must carry over
    full, _ = model(ids)
    state, parts = None, []
    for piece in ids.split(segment, dim=1):
        logits, _, state = model(piece, state=state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-10)
    assert state["cross"]["k"].shape[2] == 7 and state["blocks"][0]["memory"].shape == (2, 16)  # bounded state


def test_aux_terms_finite_and_non_negative():
    model = _tiny().train()
    ids = torch.randint(0, 48, (2, 16))
    _, aux = model(ids)
    assert torch.isfinite(aux) and aux.item() > 0  # BCE of the halting head is > 0
    targets = torch.randint(0, 48, (2, 16))
    targets[0, :5] = -100
    loss, aux_train = model.training_loss(ids, targets)
    assert torch.isfinite(loss) and torch.isfinite(aux_train) and aux_train.item() > 0
    assert 2.0 < loss.item() < 10.0  # CE of a fresh model over 48 symbols is near ln 48 = 3.9


def test_gate_entropy_term_is_zero_at_half_and_bounded():
    gate = MAGGate(8, 4).double()
    y, m = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    torch.nn.init.zeros_(gate.mlp[2].weight)
    torch.nn.init.zeros_(gate.mlp[2].bias)
    out, term = gate(y, m)  # g = 1/2 everywhere: maximal entropy, zero penalty, output the mean
    assert term.item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(out, (y + m) / 2)
    torch.nn.init.constant_(gate.mlp[2].bias, 30.0)  # saturated gate: penalty close to ln 2
    _, term = gate(y, m)
    assert math.log(2) - 1e-6 < term.item() <= math.log(2)


def test_deep_supervision_weights_and_detached_iterations():
    model = _tiny().train()
    ids, targets = torch.randint(0, 48, (2, 12)), torch.randint(0, 48, (2, 12))
    # Final logits alone: iterations are detached, so z_0/y_0 projections get no gradient but the backbone does.
    logits, _ = model(ids)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    assert model.reasoner.z0.weight.grad is None or model.reasoner.z0.weight.grad.abs().sum() == 0
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    model.zero_grad()
    loss, aux = model.training_loss(ids, targets)
    (loss + aux).backward()  # deep supervision trains y_0 (hence z_0) and the halting head
    assert model.reasoner.z0.weight.grad.abs().sum() > 0 and model.halt.weight.grad.abs().sum() > 0
    # The loss is the documented weighted mean of the per-step cross-entropies.
    with torch.no_grad():
        answers, _, _, _ = model._run(ids, None)
        ces = [torch.nn.functional.cross_entropy(model.lm_head(model.norm(y)).flatten(0, 1), targets.flatten())
               for y in answers]
        w = model.config.supervision_weights
        assert loss.item() == pytest.approx(sum(a * b for a, b in zip(w, ces)).item() / sum(w), rel=1e-10)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(HarnessError, match="supervision_weights"):
        build("tiny", overrides={"n_iterations": 2})
    with pytest.raises(HarnessError, match="divisible"):
        build("tiny", overrides={"n_heads": 3})


@pytest.mark.parametrize("segment", [1, 5, 13])
def test_sliding_window_attention_streams_segments_shorter_than_the_window(segment):
    # Regression for models.common.SlidingWindowAttention: a segment shorter than window-1 used to cut its cache
    # to that segment's length (a negative slice start), so later segments lost context.
    from models.common import SlidingWindowAttention
    torch.manual_seed(0)
    attn = SlidingWindowAttention(16, 2, window=8, n_persistent=2).double()
    x = torch.randn(2, 29, 16, dtype=torch.float64)
    full, _ = attn(x)
    state, parts = None, []
    for piece in x.split(segment, dim=1):
        y, state = attn(piece, state)
        parts.append(y)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-12)


def test_halting_loss_targets_whether_each_step_is_right():
    model = _tiny()
    latents = [torch.randn(1, 4, 32, dtype=torch.float64) for _ in range(4)]
    torch.nn.init.zeros_(model.halt.weight)
    torch.nn.init.constant_(model.halt.bias, 20.0)  # q_i ~ 1: "halt, the answer is right"
    answer = torch.tensor([[1, 2, 3, 4]])
    right = model._halting_loss(latents, [answer] * 4, answer)
    wrong = model._halting_loss(latents, [answer + 1] * 4, answer)
    assert right.item() < 1e-8 and wrong.item() == pytest.approx(20.0, rel=1e-6)
    masked = model._halting_loss(latents, [answer + torch.tensor([[1, 1, 0, 0]])] * 4, answer,
                                 valid=torch.tensor([[False, False, True, True]]))
    assert masked.item() < 1e-8  # ignored positions (target -100) do not count
