"""MoE baseline: routing is exact (each expert sees exactly its tokens; fast path == per-token loop), the Switch
load-balancing loss has its documented values, and the model is causal, streams, and matches Transformer++ in size."""

import pytest
import torch

from baselines.moe import FLAVORS, MoEConfig, MoEFeedForward, MoELM, build, load_balancing_loss
from harness.errors import HarnessError



def _tiny(**kw):
    torch.manual_seed(0)
    cfg = MoEConfig(vocab_size=64, d_model=32, n_heads=4, n_layers=2, d_ff=24, max_seq_len=64, **kw)
    return MoELM(cfg).double().eval()


def test_uniform_routing_gives_the_minimum_one():
    # A zero router gives uniform probabilities: L = E * sum_e f_e * (1/E) = 1 whatever top-k picks.
    moe = MoEFeedForward(16, 8, n_experts=8, top_k=2).double()
    torch.nn.init.zeros_(moe.router.weight)
    _, loss = moe(torch.randn(3, 10, 16, dtype=torch.float64))
    assert loss.item() == pytest.approx(1.0, abs=1e-12)


def test_confident_routing_loss_is_one_iff_balanced():
    E, N = 8, 64
    # Confident top-2 routing: each token puts 1/2 on each of its two experts, so P_e == f_e.
    def confident(assign):
        probs = torch.zeros(N, E, dtype=torch.float64)
        probs.scatter_(1, assign, 0.5)
        return load_balancing_loss(probs, assign, E)

    tokens = torch.arange(N)
    balanced = torch.stack([tokens % E, (tokens + 1) % E], dim=1)
    assert confident(balanced).item() == pytest.approx(1.0, abs=1e-12)  # E * sum (1/E)^2 = 1: the lower bound
    skewed = torch.stack([tokens % 2, 2 + tokens % 2], dim=1)  # only 4 of 8 experts used
    assert confident(skewed).item() == pytest.approx(2.0, abs=1e-12)
    collapsed = torch.zeros(N, 1, dtype=torch.long)  # top-1, everything to expert 0 with prob 1
    probs = torch.zeros(N, E, dtype=torch.float64)
    probs[:, 0] = 1
    assert load_balancing_loss(probs, collapsed, E).item() == pytest.approx(E)  # the maximum
    g = torch.Generator().manual_seed(1)
    for _ in range(20):  # random confident routings never go below the balanced value
        assign = torch.stack([torch.randperm(E, generator=g)[:2] for _ in range(N)])
        assert confident(assign).item() >= 1.0 - 1e-12


def test_each_expert_sees_exactly_its_routed_tokens():
    torch.manual_seed(0)
    moe = MoEFeedForward(16, 8, n_experts=8, top_k=2).double()
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    seen = {}
    hooks = [expert.register_forward_hook(lambda mod, inp, out, e=e: seen.__setitem__(e, inp[0].clone()))
             for e, expert in enumerate(moe.experts)]
    moe(x)
    for h in hooks:
        h.remove()
    flat = x.reshape(-1, 16)
    _, top_i, _ = moe.route(flat)
    for e in range(8):
        routed = (top_i == e).any(dim=1).nonzero().flatten()  # tokens that chose e, in token order
        assert torch.equal(seen[e], flat[routed])


def test_fast_routing_equals_per_token_loop():
    torch.manual_seed(0)
    moe = MoEFeedForward(16, 8, n_experts=8, top_k=2).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    fast, _ = moe(x)
    torch.testing.assert_close(fast, moe.forward_naive(x), rtol=0, atol=1e-12)


def test_causal_and_aux_loss():
    model = _tiny()
    ids = torch.randint(0, 64, (2, 20))
    logits, aux = model(ids)
    assert logits.shape == (2, 20, 64)
    assert torch.isfinite(aux) and aux.item() > 0
    changed = ids.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 64
    logits2, _ = model(changed)
    torch.testing.assert_close(logits2[:, :12], logits[:, :12], rtol=0, atol=1e-12)
    assert (logits2[:, 12:] - logits[:, 12:]).abs().max() > 1e-6


def test_streaming_equals_one_call():
    model = _tiny()
    ids = torch.randint(0, 64, (2, 30))
    full, _ = model(ids)
    state, parts = None, []
    for segment in ids.split(7, dim=1):
        logits, _, state = model(segment, state=state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-10)


def test_gradients_reach_router_and_experts():
    model = _tiny().train()
    logits, aux = model(torch.randint(0, 64, (2, 16)))
    (logits.logsumexp(-1).mean() + aux).backward()
    moe = model.blocks[0].moe
    assert moe.router.weight.grad.abs().sum() > 0
    assert sum(e.gate_up.weight.grad.abs().sum() for e in moe.experts if e.gate_up.weight.grad is not None) > 0


def test_gpu24gb_preset_is_the_seed_config():
    c = FLAVORS["gpu24gb"]
    assert (c.d_model, c.n_heads, c.n_layers, c.d_ff, c.n_experts, c.top_k, c.max_seq_len) == (
        512, 8, 8, 2048, 8, 2, 1024)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(HarnessError, match="top_k"):
        build("tiny", overrides={"top_k": 9})
    with pytest.raises(HarnessError, match="no preset"):
        build("huge")
