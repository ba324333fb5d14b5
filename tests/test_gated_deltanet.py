"""Gated DeltaNet: the chunked gated delta rule against the token-by-token recurrence (forward and gradients, float64,
non-zero initial state, lengths not divisible by the chunk), and the LM's adapter properties (streaming equals one
call, causality, bounded state, parameter counts per preset, one-line errors)."""

import importlib.util

import pytest
import torch

from baselines.gated_deltanet.model import GatedDeltaNetLM, build
from baselines.gated_deltanet.ops import (chunk_gated_delta_rule, chunk_gated_delta_rule_torch,
                                          naive_recurrent_gated_delta_rule)
from harness.adapter import build_model
from harness.errors import HarnessError



def random_inputs(B=2, T=37, H=3, K=8, V=6, dtype=torch.float64, seed=0, with_state=True):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    g = -torch.rand(B, T, H, generator=gen, dtype=dtype)  # log alpha in (-1, 0]
    beta = torch.rand(B, T, H, generator=gen, dtype=dtype)
    state = torch.randn(B, H, K, V, generator=gen, dtype=dtype) if with_state else None
    return q, k, v, g, beta, state


def test_naive_recurrence_is_the_delta_rule():
    # The reference itself: with alpha = 1 and beta = 1 the update overwrites the value stored under key k_t
    # (S_t^T k_t = v_t for unit k_t); with beta = 0 it only decays the state by alpha.
    q, k, v, g, beta, S0 = random_inputs(T=1)
    _, S1 = naive_recurrent_gated_delta_rule(q, k, v, torch.zeros_like(g), torch.ones_like(beta), initial_state=S0,
                                             output_final_state=True)
    torch.testing.assert_close(torch.einsum("bhkv,bhk->bhv", S1, k[:, 0]), v[:, 0], rtol=0, atol=1e-12)
    _, S1 = naive_recurrent_gated_delta_rule(q, k, v, g, torch.zeros_like(beta), initial_state=S0,
                                             output_final_state=True)
    torch.testing.assert_close(S1, g[:, 0].exp()[..., None, None] * S0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("T,chunk_size", [(37, 8), (37, 16), (5, 64), (64, 16)])
@pytest.mark.parametrize("with_state", [True, False])
def test_chunked_matches_recurrence_forward(T, chunk_size, with_state):
    q, k, v, g, beta, S0 = random_inputs(T=T, with_state=with_state)
    o_ref, s_ref = naive_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=S0, output_final_state=True)
    o, s = chunk_gated_delta_rule_torch(q, k, v, g, beta, initial_state=S0, output_final_state=True,
                                        chunk_size=chunk_size)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-10)  # float64: agreement to rounding
    torch.testing.assert_close(s, s_ref, rtol=0, atol=1e-10)


def test_chunked_matches_recurrence_gradients():
    inputs = [x.requires_grad_() for x in random_inputs(T=21)]
    weights = torch.randn(2, 21, 3, 6, dtype=torch.float64), torch.randn(2, 3, 8, 6, dtype=torch.float64)

    def grads(fn, **kw):
        o, s = fn(*inputs[:5], initial_state=inputs[5], output_final_state=True, **kw)
        return torch.autograd.grad((o * weights[0]).sum() + (s * weights[1]).sum(), inputs)

    for name, a, b in zip("q k v g beta S0".split(), grads(naive_recurrent_gated_delta_rule),
                          grads(chunk_gated_delta_rule_torch, chunk_size=8)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-9, msg=f"gradient of {name}")


def test_float32_chunked_close_to_float64_recurrence():
    q, k, v, g, beta, S0 = random_inputs(T=45)
    o_ref, s_ref = naive_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=S0, output_final_state=True)
    o, s = chunk_gated_delta_rule(*(x.float() for x in (q, k, v, g, beta)), initial_state=S0.float(),
                                  output_final_state=True, chunk_size=16)
    assert o.dtype == torch.float32
    torch.testing.assert_close(o.double(), o_ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(s.double(), s_ref, rtol=0, atol=1e-4)


def test_fla_kernel_is_only_used_on_cuda(monkeypatch):
    import baselines.gated_deltanet.ops as ops

    def fla_stand_in(*args, **kwargs):
        raise AssertionError("fla's kernel must not be called on CPU tensors")

    monkeypatch.setattr(ops, "_fla_chunk_gated_delta_rule", fla_stand_in)
    q, k, v, g, beta, S0 = random_inputs(T=10)
    o, _ = ops.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=S0)
    o_ref, _ = naive_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=S0)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-10)


@pytest.mark.slow  # importing the Qwen3-Next module takes ~10 s
@pytest.mark.skipif(importlib.util.find_spec("fla") is not None,
                    reason="with fla installed transformers' function is fla's GPU kernel, not its PyTorch code")
def test_chunked_matches_transformers_qwen3_next_implementation():
    # An independent implementation of the same chunked algorithm (it works in float32 internally).
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule
    q, k, v, g, beta, S0 = random_inputs(T=40)
    o_ref, s_ref = torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=16, initial_state=S0,
                                                output_final_state=True)
    o, s = chunk_gated_delta_rule_torch(q, k, v, g, beta, initial_state=S0, output_final_state=True, chunk_size=16)
    torch.testing.assert_close(o, o_ref.double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(s, s_ref.double(), rtol=0, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("fla") is not None,
                    reason="with fla installed transformers' function is fla's GPU kernel, not its PyTorch code")
def test_cpu_float32_runs_transformers_copy_with_the_same_result(monkeypatch):
    """On the CPU in float32 the dispatcher calls transformers' torch_chunk_gated_delta_rule (any scale), with the
    harness' chunked form's result; float64 stays on the harness' form, exact against the recurrence."""
    from baselines.gated_deltanet import ops

    library = ops.library_chunk_gated_delta_rule()
    assert library is not None
    calls = []
    monkeypatch.setattr(ops, "_LIBRARY", [lambda *a, **kw: calls.append(1) or library(*a, **kw)])
    q, k, v, g, beta, S0 = (x.float() for x in random_inputs(T=40))
    for scale in (None, 0.2):
        o, s = ops.chunk_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=S0, output_final_state=True,
                                          chunk_size=16)
        o_ref, s_ref = chunk_gated_delta_rule_torch(q, k, v, g, beta, scale, S0, True, 16)
        torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(s, s_ref, rtol=0, atol=1e-5)
    assert len(calls) == 2
    ops.chunk_gated_delta_rule(*random_inputs(T=10)[:5])
    assert len(calls) == 2


# ---- the LM -----------------------------------------------------------------------------------------------


def tiny_model(**overrides):
    torch.manual_seed(0)
    return build("tiny", vocab_size=256, overrides=overrides).eval()


def test_streaming_equals_one_call():
    model = tiny_model(chunk_size=8)  # several chunks per segment, segment ends inside chunks
    ids = torch.randint(0, 256, (2, 70), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(ids)
        state, pieces = None, []
        for a, b in [(0, 1), (1, 3), (3, 29), (29, 30), (30, 70)]:
            logits, aux, state = model(ids[:, a:b], state=state)
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-4)
    assert float(aux) == 0.0


def test_result_does_not_depend_on_chunk_size():
    ids = torch.randint(0, 256, (1, 50), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, _ = tiny_model(chunk_size=8)(ids)
        b, _ = tiny_model(chunk_size=64)(ids)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_causal():
    model = tiny_model(chunk_size=8)
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    j = 21
    changed[0, j] = (ids[0, j] + 1) % 256
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :j], b[:, :j], rtol=0, atol=0)
    assert (a[:, j:] - b[:, j:]).abs().max() > 1e-6  # and the change is seen from position j on


def test_state_size_does_not_grow_with_length():
    model = tiny_model()
    with torch.no_grad():
        _, _, state = model(torch.zeros(1, 5, dtype=torch.long), state=None)
        size = sum(t.numel() for layer in state for t in layer)
        for _ in range(3):
            _, _, state = model(torch.zeros(1, 300, dtype=torch.long), state=state)
    assert sum(t.numel() for layer in state for t in layer) == size
    cfg = model.config
    conv, rec = state[0]
    assert rec.shape == (1, cfg.num_heads, cfg.head_dim, cfg.head_dim * cfg.expand_v)
    assert conv.shape == (1, cfg.conv_size - 1, cfg.num_heads * cfg.head_dim * (2 + cfg.expand_v))


def test_trains_one_step():
    model = tiny_model().train()
    ids = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(4))
    logits, aux = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1)) + aux
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.blocks[0].mixer.A_log.grad.abs().sum() > 0  # the decay is learned


def test_registry_and_errors():
    for name in ("gated-deltanet", "gdn", "gated_deltanet", "Gated-DeltaNet"):
        assert isinstance(build_model(name, "tiny"), GatedDeltaNetLM)
    with pytest.raises(HarnessError, match="no preset"):
        build("huge")
    with pytest.raises(HarnessError, match="num_heads must be a positive"):
        build("tiny", overrides={"num_heads": 0})
    with pytest.raises(HarnessError, match="unknown model setting"):
        build("tiny", overrides={"heads": 4})
