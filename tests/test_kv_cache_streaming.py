"""The key/value-cache streaming of the attention baselines (transformer-pp, moe; `kv_cache=True`, the default):
streamed logits equal one full call wherever the stream is cut, with batches and selected / repeated rows; past
the window they equal a naive reference, one full forward with the window as an explicit attention mask
(transformer-pp: a window sliding in steps of max_seq_len // 8, moe: sliding token by token); BABILong's batched
scores with the cache equal the one-call reference `score_choices_full`; training (a call without state) is the
same plain forward with the cache on or off.

Tolerances: float64 models agree to 1e-9 on logits and log-likelihoods (the observed differences are ~1e-14); the
float32 BABILong check allows 1e-4 per candidate log-likelihood, as the other streaming tests do."""

from __future__ import annotations

import pytest
import torch

from harness.adapter import build_model
from models.common import attention as attention_module
from tasks.babilong.streaming import (
    greedy_continue,
    greedy_generate,
    repeat_state,
    score_candidates,
    score_choices_batched,
    score_choices_full,
    select_state,
    stream_prompts,
)
from tasks.babilong.task import BabilongTask

MODELS = ["transformer-pp", "moe"]
TOL64 = 1e-9


def _model(name, window=4096, dtype=torch.float64, **overrides):
    torch.manual_seed(0)
    model = build_model(name, "tiny", vocab_size=256, overrides={"max_seq_len": window, **overrides}).eval()
    return model.to(dtype)


def _ids(batch, length, seed=1):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def _stream(model, ids, cuts, state=None):
    parts = []
    with torch.no_grad():
        for piece in ids.split(cuts, dim=1):
            logits, _, state = model(piece, state=state)
            parts.append(logits)
    return torch.cat(parts, dim=1), state


def _windowed_reference(model, ids, window):
    """Naive windowed attention: one forward over the whole sequence with the window as a mask. transformer-pp:
    token t attends to positions lo(t) .. t, lo(t) = 0 for t < window, else (t // step) * step - (window - step)
    with step = window // 8 (x-transformers' attn_mask, no cache); moe: each token attends to itself and at most
    window - 1 previous tokens (its attention computed with the full masked score matrix)."""
    with torch.no_grad():
        if model.registry_name == "transformer-pp":
            step, T = max(1, window // 8), ids.shape[1]
            lo = torch.tensor([0 if t < window else (t // step) * step - (window - step) for t in range(T)])
            allowed = torch.arange(T)[None, :] >= lo[:, None]  # causality is added by the decoder
            return model.net(ids, attn_mask=allowed)
        naive = attention_module.sliding_window_attention_naive
        saved, attention_module.sliding_window_attention = attention_module.sliding_window_attention, naive
        try:
            return model._run(ids, None)[0]
        finally:
            attention_module.sliding_window_attention = saved


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("cuts", [[70], [1, 16, 29, 24], [1] * 10 + [60], [35, 35]])
def test_streamed_with_cache_equals_one_full_call(name, cuts):
    model = _model(name)
    ids = _ids(3, 70)
    with torch.no_grad():
        full, _ = model(ids)
    streamed, state = _stream(model, ids, cuts)
    torch.testing.assert_close(streamed, full, rtol=0, atol=TOL64)
    assert not isinstance(state, torch.Tensor)  # the key/value cache, not the token tail


def test_the_attn_window_switch_streams_like_one_call():
    model = _model("transformer-pp", attn_window=2)  # the diagnostic window (x-transformers' max_attend_past)
    ids = _ids(2, 40)
    with torch.no_grad():
        full, _ = model(ids)
    torch.testing.assert_close(_stream(model, ids, [1, 13, 26])[0], full, rtol=0, atol=TOL64)


@pytest.mark.parametrize("name", MODELS)
def test_selected_and_repeated_rows_continue_like_their_streams(name):
    model = _model(name)
    prefix, more = _ids(3, 40), _ids(4, 9, seed=2)
    _, state = _stream(model, prefix, [17, 23])
    rows = [2, 2, 0, 0]  # select rows 2 and 0, then repeat each twice
    state = repeat_state(model, select_state(model, state, [2, 0]), 2)
    got, _ = _stream(model, more, [4, 5], state)
    with torch.no_grad():
        full, _ = model(torch.cat([prefix[rows], more], dim=1))
    torch.testing.assert_close(got, full[:, 40:], rtol=0, atol=TOL64)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("window", [24, 21])  # 21: the step (2) does not divide the window
@pytest.mark.parametrize("cuts", [[100], [1] * 100, [5, 30, 2, 63], [24, 24, 24, 28]])
def test_past_the_window_the_cache_equals_the_masked_reference(name, window, cuts):
    model = _model(name, window=window)
    ids = _ids(2, 100)
    reference = _windowed_reference(model, ids, window)
    streamed, state = _stream(model, ids, cuts)
    torch.testing.assert_close(streamed, reference, rtol=0, atol=TOL64)
    k = state["k"][0] if name == "transformer-pp" else state[0]["k"]
    assert k.shape[2] <= window - 1  # the cache never holds more than the window
    unbounded = _model(name, window=1000)
    unbounded.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (unbounded(ids)[0][:, window:] - reference[:, window:]).abs().max() > 1e-3  # the window binds


@pytest.mark.parametrize("name", MODELS)
def test_a_call_without_state_is_the_plain_forward_with_the_cache_on_or_off(name):
    on = _model(name, dtype=torch.float32)
    off = _model(name, dtype=torch.float32, kv_cache=False)
    off.load_state_dict(on.state_dict())
    ids = _ids(2, 50)
    on.train(), off.train()
    a, aux_a = on(ids)
    b, aux_b = off(ids)
    assert torch.equal(a, b) and torch.equal(aux_a, aux_b)
    a.sum().backward()  # training still has gradients through the plain forward
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in on.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_the_token_tail_path_stays_reachable_and_agrees_within_the_window(name):
    on = _model(name)
    off = _model(name, kv_cache=False)
    off.load_state_dict(on.state_dict())
    ids = _ids(2, 60)
    a, _ = _stream(on, ids, [20, 1, 39])
    b, tail = _stream(off, ids, [20, 1, 39])
    assert isinstance(tail, torch.Tensor) and tail.shape == (2, 60)
    torch.testing.assert_close(a, b, rtol=0, atol=TOL64)


def _babilong_case(n=4):
    task = BabilongTask(source="generator", tokenizer="words", tasks="qa1,qa2", lengths="0k", samples=n)
    samples = [s for t in task.tasks for s in task.eval_samples(t, "0k", 0, n)]
    prompts = [task.codec.encode(s.prompt()) for s in samples]
    candidates = [task._candidates[s.task] for s in samples]
    return prompts, candidates


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, TOL64), (torch.float32, 1e-4)])
def test_babilong_batched_scores_with_the_cache_equal_the_one_call_reference(name, dtype, tol):
    model = _model(name, dtype=dtype)
    prompts, candidates = _babilong_case()
    batched = score_choices_batched(model, prompts, candidates, 64, "cpu")  # prompts cut into 64-token calls
    for prompt, cands, got in zip(prompts, candidates, batched):
        reference = score_choices_full(model, prompt, cands, "cpu")
        assert got == pytest.approx(reference, abs=tol)


@pytest.mark.parametrize("name", MODELS)
def test_babilong_scores_past_the_window_equal_the_sliding_window_reference(name):
    window = 24  # 0k prompts are ~40-200 word tokens
    model = _model(name, window=window)
    prompts, candidates = _babilong_case(2)
    assert min(map(len, prompts)) > window
    batched = score_choices_batched(model, prompts, candidates, window, "cpu")
    for prompt, cands, got in zip(prompts, candidates, batched):
        reference = []
        for cand in cands:
            ids = torch.tensor([prompt + cand])
            logprobs = torch.log_softmax(_windowed_reference(model, ids[:, :-1], window)[0].double(), dim=-1)
            reference.append(float(logprobs[len(prompt) - 1:].gather(1, ids[0, len(prompt):, None]).sum()))
        assert got == pytest.approx(reference, abs=TOL64)


def test_candidates_cost_one_short_call_from_the_cached_prefix():
    model = _model("transformer-pp")
    calls = []
    forward = model.net.forward
    model.net.forward = lambda ids, **kw: calls.append(tuple(ids.shape)) or forward(ids, **kw)
    prompts, candidates = _babilong_case(1)
    for i, first, state in stream_prompts(model, prompts[:1], 4096, "cpu"):
        calls.clear()
        score_candidates(model, first, state, candidates[i], "cpu")
    longest = max(map(len, candidates[0]))
    assert calls == [(sum(len(c) > 1 for c in candidates[0]), longest - 1)]  # no prompt token is re-read


@pytest.mark.parametrize("name", MODELS)
def test_greedy_decoding_with_the_cache_matches_the_token_tail_path(name):
    on = _model(name)
    off = _model(name, kv_cache=False)
    off.load_state_dict(on.state_dict())
    prompts = [_ids(1, 30)[0].tolist(), _ids(1, 20, seed=3)[0].tolist()]
    expected = [greedy_generate(off, p, 8, "cpu", 12) for p in prompts]
    assert [greedy_generate(on, p, 8, "cpu", 12) for p in prompts] == expected
    for i, first, state in stream_prompts(on, prompts, 8, "cpu"):  # batched prompts, then one stream each
        assert greedy_continue(on, first, state, "cpu", 12) == expected[i]
