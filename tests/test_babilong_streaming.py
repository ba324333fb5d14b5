"""BABILong evaluation: segment-by-segment scoring equals one-call scoring, memory stays bounded at 128k tokens,
window / non-streaming models are handled and recorded, metrics and the heatmap come out; batched scoring (many
streams in lockstep, all candidates in one call) equals scoring one sample at a time for every state-streaming
model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from babilong_toys import NoStreamLM, RunningMeanLM, ToyConfig, WindowedLM  # noqa: E402

from harness.adapter import build_model, state_rows
from harness.errors import HarnessError, StreamingUnsupported  # noqa: E402
from harness.registry import MODELS
from tasks.babilong.common import ANSWER_TEMPLATE, TASK_LABELS  # noqa: E402
from tasks.babilong.generator import BabilongGenerator, count_tokens  # noqa: E402
from tasks.babilong.streaming import (argmax_first, can_batch, continuation_logprob, greedy_generate, repeat_state,  # noqa: E402
                                      score_choices_batched, score_choices_full, score_choices_streaming,
                                      select_state, stream_prompt, stream_prompts)
from tasks.babilong.task import BabilongTask  # noqa: E402



def _encode(text):
    return list(text.encode("utf-8"))


def _candidates(task):
    return [_encode(ANSWER_TEMPLATE.format(answer=l)) for l in TASK_LABELS[task]]


@pytest.mark.parametrize("seg_len", [1, 7, 64, 1000, 100000])
def test_segment_scoring_equals_one_call(seg_len):
    torch.manual_seed(0)
    model = RunningMeanLM()
    sample = BabilongGenerator(seed=2).eval_samples("qa1", "1k", 1000, 1)[0]
    prompt = _encode(sample.prompt())[:2000 if seg_len == 1 else None]
    streamed, longest = score_choices_streaming(model, prompt, _candidates("qa1"), seg_len, "cpu")
    reference = score_choices_full(model, prompt, _candidates("qa1"), "cpu")
    assert longest <= seg_len
    assert streamed == pytest.approx(reference, abs=1e-9, rel=1e-12)  # float64 toy: agreement to rounding


@pytest.mark.slow
def test_a_128k_token_sample_scores_in_bounded_segments():
    model = RunningMeanLM()
    sample = BabilongGenerator(seed=0).eval_samples("qa2", "128k", 128000, 1)[0]
    assert count_tokens(sample.context) == 128000 - 300
    prompt = _encode(sample.prompt())
    assert len(prompt) > 500_000  # bytes
    model.max_input = 0
    logprobs, state, longest = stream_prompt(model, prompt, 4096, "cpu")
    assert longest == 4096 and model.max_input <= 4096  # never more than one segment in a call
    assert [tuple(t.shape) for t in state] == [(1, 8), (1, 1)]  # the state does not grow with the stream
    assert float(state[1]) == len(prompt)
    scores = [continuation_logprob(model, logprobs, state, c, "cpu") for c in _candidates("qa2")]
    assert len(scores) == 6 and all(s < 0 for s in scores)


def test_candidate_scoring_does_not_disturb_the_state():
    model = RunningMeanLM()
    prompt = _encode("<context>\nMary went to the garden.\n</context>\n\nQuestion: Where is Mary?\nAnswer:")
    once = score_choices_streaming(model, prompt, _candidates("qa1"), 16, "cpu")[0]
    reversed_order = score_choices_streaming(model, prompt, _candidates("qa1")[::-1], 16, "cpu")[0][::-1]
    assert once == reversed_order


def test_greedy_generation_streams_like_one_call():
    model = RunningMeanLM()
    prompt = _encode("Question: Where is Mary?\nAnswer:")
    out = greedy_generate(model, prompt, 5, "cpu", max_new_tokens=6)
    ids = list(prompt)
    for _ in range(6):  # reference: re-run the whole sequence each step
        logits, _ = model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    assert out == ids[len(prompt):]


def test_non_streaming_models_are_refused_or_skipped():
    with pytest.raises(StreamingUnsupported):
        stream_prompt(NoStreamLM(), [1, 2, 3], 2, "cpu")
    model = NoStreamLM(ToyConfig(max_seq_len=300))
    task = BabilongTask(source="generator", tokenizer="bytes", tasks="qa4", lengths="0k,1k", samples=2)
    metrics = task.evaluate(model, device="cpu", seq_len=64, batch_size=1, progress=False)
    assert metrics["acc/qa4/0k"].n == 2  # 0k samples fit one call
    assert "acc/qa4/1k" not in metrics  # 1k samples do not, and the record says so
    assert any("skipped" in note for note in task.describe()["eval_notes"])


def test_window_models_score_and_the_record_says_where_the_window_was_exceeded():
    model = WindowedLM(ToyConfig(max_seq_len=512))
    task = BabilongTask(source="generator", tokenizer="bytes", tasks="qa1,qa4", lengths="0k,1k", samples=2)
    metrics = task.evaluate(model, device="cpu", seq_len=128, batch_size=1, progress=False)
    assert {"acc/qa1/0k", "acc/qa4/1k", "acc/mean/0k", "acc/mean/1k", "acc/mean"} <= set(metrics)
    notes = task.describe()["eval_notes"]
    assert any(note.startswith("1k:") and "window" in note for note in notes)
    assert not any(note.startswith("0k:") for note in notes)


def test_metrics_table_and_heatmap(tmp_path):
    task = BabilongTask(source="generator", tokenizer="bytes", tasks="qa1,qa5", lengths="0k,2k", samples=3,
                        long_samples=3)
    metrics = task.evaluate(RunningMeanLM(), device="cpu", seq_len=256, batch_size=1, progress=False)
    for key in ("acc/qa1/0k", "acc/qa5/2k", "acc/mean/0k", "acc/mean/2k", "acc/mean"):
        m = metrics[key]
        assert 0 <= m.value <= 100 and m.higher_is_better
    assert metrics["acc/qa1/0k"].n == 3 and metrics["acc/mean/2k"].n == 6 and metrics["acc/mean"].n == 12
    mean_0k = (metrics["acc/qa1/0k"].value + metrics["acc/qa5/0k"].value) / 2
    assert metrics["acc/mean/0k"].value == pytest.approx(mean_0k)
    record = task.describe()
    assert record["accuracy_table"]["qa5"]["2k"] == metrics["acc/qa5/2k"].value
    assert record["source"] == "generator" and record["lengths"]["2k"] == {"tokens": 2000, "context_tokens": 1700}
    paths = task.artifacts({"metrics": {k: v.to_dict() for k, v in metrics.items()}, "model": "toy"}, tmp_path)
    assert paths == [str(tmp_path / "plots" / "babilong_toy.png")]
    assert task.describe()["accuracy_table"]["mean"]["0k"] == metrics["acc/mean/0k"].value
    assert Path(paths[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_constrained_choice_picks_the_label_a_model_prefers():
    """A model that always puts its mass on the bytes of ' office.' must answer 'office' for every sample."""

    class OfficeLM(RunningMeanLM):
        def forward_with_state(self, input_ids, state):
            logits, aux, state = super().forward_with_state(input_ids, state)
            return logits * 0 + torch.nn.functional.one_hot(
                torch.tensor(ord("o")), 256).double() * 5, aux, state

    task = BabilongTask(source="generator", tokenizer="bytes", tasks="qa1", lengths="0k", samples=30)
    metrics = task.evaluate(OfficeLM(), device="cpu", seq_len=128, batch_size=1, progress=False)
    samples = BabilongGenerator(seed=0).eval_samples("qa1", "0k", 0, 30)
    expected = 100 * sum(s.target == "office" for s in samples) / 30
    assert metrics["acc/qa1/0k"].value == pytest.approx(expected)


def test_a_registered_model_streams_within_its_window():
    from harness.adapter import build_model

    torch.manual_seed(0)
    model = build_model("transformer-pp", preset="tiny", vocab_size=256).eval()
    sample = BabilongGenerator(seed=0).eval_samples("qa1", "0k", 0, 1)[0]
    prompt = _encode(sample.prompt())
    streamed, _ = score_choices_streaming(model, prompt, _candidates("qa1"), 64, "cpu")
    reference = score_choices_full(model, prompt, _candidates("qa1"), "cpu")
    assert streamed == pytest.approx(reference, abs=1e-3)  # float32, within the 4096-token window



# -- batched scoring ------------------------------------------------------------------------------------------

def _streaming_kind(name):
    with torch.device("meta"):
        return type(build_model(name, "tiny", 256)).streaming


STATE_MODELS = [name for name in MODELS.names() if _streaming_kind(name) == "state"]
PROMPT_LENGTHS = (300, 20, 129, 64, 200)  # unsorted, with ends on and off the 64-token grid
CANDIDATE_LENGTHS = (1, 3, 9, 6)
# Float32, absolute, on a candidate's log-likelihood. miras-moneta's l_p updates and miras-memora's softmax
# retention amplify float32 rounding: cutting a stream at other points or changing the batch size alone moves their
# log-probs by up to ~5e-5 (the model contract allows 1e-4 per logit; memora on one thread: 1.8e-4 on a 6-token
# candidate), so they get 1e-4 per candidate token; in float64 both agree to rounding (below).
LOGLIK_TOL = {"miras-moneta": lambda n_tokens: 1e-4 * n_tokens, "miras-memora": lambda n_tokens: 1e-4 * n_tokens}


def _random_case(prompt_lengths=PROMPT_LENGTHS):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(256, (n,), generator=g).tolist() for n in prompt_lengths]
    candidates = [torch.randint(256, (n,), generator=g).tolist() for n in CANDIDATE_LENGTHS]
    return prompts, candidates


def _assert_batched_equals_per_sample(model, tol, prompt_lengths=PROMPT_LENGTHS):
    prompts, candidates = _random_case(prompt_lengths)
    per_sample = [score_choices_streaming(model, p, candidates, 64, "cpu")[0] for p in prompts]
    batched = score_choices_batched(model, prompts, [candidates] * len(prompts), 64, "cpu")
    for ref, got in zip(per_sample, batched):
        for c, a, b in zip(candidates, ref, got):
            assert abs(a - b) <= tol(len(c)), (a, b, len(c))
        assert argmax_first(got) == argmax_first(ref)


@pytest.mark.parametrize("name", STATE_MODELS)
def test_batched_scoring_equals_per_sample_for_every_state_model(name):
    torch.manual_seed(0)
    model = build_model(name, "tiny", vocab_size=256).eval()
    _assert_batched_equals_per_sample(model, LOGLIK_TOL.get(name, lambda n_tokens: 1e-4))


@pytest.mark.parametrize("name", ["miras-moneta", "miras-memora"])
def test_batched_scoring_of_miras_in_float64_agrees_to_rounding(name):
    torch.manual_seed(0)
    model = build_model(name, "tiny", vocab_size=256).eval().double()
    _assert_batched_equals_per_sample(model, lambda n_tokens: 1e-9, prompt_lengths=(130, 20, 70))


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", STATE_MODELS)
def test_state_rows_round_trip(name):
    torch.manual_seed(0)
    model = build_model(name, "tiny", vocab_size=256).eval()
    ids = torch.randint(256, (3, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, _, state = model(ids, state=None)
        repeated = repeat_state(model, state, 2)  # rows 0 0 1 1 2 2
        assert _same(select_state(model, repeated, [0, 2, 4]), state)
        assert _same(select_state(model, repeated, [3]), select_state(model, state, [1]))
        # a selected row carries on like the stream it came from (same continuation logits)
        nxt = torch.randint(256, (3, 5), generator=torch.Generator().manual_seed(4))
        whole, _, _ = model(nxt, state=state)
        row, _, _ = model(nxt[1:2], state=select_state(model, state, [1]))
    torch.testing.assert_close(row[0], whole[1], rtol=0, atol=1e-4)


def test_state_rows_keeps_plain_values_and_refuses_unknown_objects():
    state = {"pos": 7, "none": None, "step": torch.tensor(2),
             "t": (torch.arange(6.).view(3, 2), [torch.zeros(3, 1, 4)])}
    out = state_rows(state, torch.tensor([2, 0]))
    assert out["pos"] == 7 and out["none"] is None and int(out["step"]) == 2
    assert out["t"][0].tolist() == [[4.0, 5.0], [0.0, 1.0]] and out["t"][1][0].shape == (2, 1, 4)
    with pytest.raises(TypeError, match="select_state"):
        state_rows({"cache": object()}, torch.tensor([0]))


def test_stream_prompts_feeds_lockstep_segments_and_drops_finished_streams():
    model = RunningMeanLM()
    calls = []
    forward = model.forward_with_state
    model.forward_with_state = lambda ids, state: calls.append(tuple(ids.shape)) or forward(ids, state)
    prompts = [[1] * 10, [2] * 3, [3] * 10, [4] * 7]
    got = list(stream_prompts(model, prompts, 4, "cpu"))
    assert [i for i, _, _ in got] == [1, 3, 0, 2]  # shortest first, ties in order
    assert calls == [(4, 3), (3, 1), (3, 3), (2, 1), (2, 2)]  # cut at 3, 4 (grid), 7, 8 (grid), 10
    for i, logprobs, state in got:
        ref_logprobs, _, _ = stream_prompt(model, prompts[i], 4, "cpu")
        assert torch.allclose(logprobs, ref_logprobs, atol=1e-12)
        assert float(state[1]) == len(prompts[i]) and state[0].shape == (1, 8)
    with pytest.raises(StreamingUnsupported):
        next(stream_prompts(NoStreamLM(), prompts, 4, "cpu"))


@pytest.mark.parametrize("scoring", ["choice", "generate"])
def test_evaluate_batched_equals_one_sample_at_a_time(scoring):
    results = {}
    for eval_batch in (1, 3, 16):
        task = BabilongTask(source="generator", tokenizer="bytes", tasks="qa1,qa2", lengths="0k,1k", samples=5, scoring=scoring,
                            eval_batch=eval_batch, max_new_tokens=4)
        metrics = task.evaluate(RunningMeanLM(), device="cpu", seq_len=128, batch_size=1, progress=False)
        evaluation = task.describe()["evaluation"]
        assert evaluation["batched"] == (eval_batch > 1) and evaluation["eval_batch"] == eval_batch
        results[eval_batch] = {k: (m.value, m.n) for k, m in metrics.items()}
    assert results[1] == results[3] == results[16]


def test_window_models_are_scored_in_batches_with_the_one_sample_scores():
    """Window models stream in lockstep too (their state is the token tail); within the window the batched
    scores equal the one-sample path's."""
    torch.manual_seed(0)
    model = build_model("transformer-pp", "tiny", vocab_size=256).eval()
    assert can_batch(model)
    outcomes = {}
    for eval_batch in (1, 8):
        task = BabilongTask(source="generator", tokenizer="bytes", tasks="qa1,qa4", lengths="0k", samples=6, eval_batch=eval_batch)
        metrics = task.evaluate(model, device="cpu", seq_len=128, batch_size=1, progress=False)
        assert task.last_eval["batched"] == (eval_batch > 1)
        outcomes[eval_batch] = {k: (m.value, m.n) for k, m in metrics.items()}
    assert outcomes[1] == outcomes[8]
    prompts = [[5, 6, 7] * 9, [8, 9] * 5, [3] * 20]
    cands = [[[1, 2], [4], [7, 7, 7]]] * 3
    batched = score_choices_batched(model, prompts, cands, model.max_context, "cpu")
    for prompt, cand, got in zip(prompts, cands, batched):
        ref = score_choices_full(model, prompt, cand, "cpu")
        assert got == pytest.approx(ref, abs=1e-4)


def test_evaluate_records_the_one_sample_path_for_unbatchable_models():
    task = BabilongTask(source="generator", tokenizer="bytes", tasks="qa1", lengths="0k", samples=2)

    class Unbatchable(RunningMeanLM):
        batched_state = False

    task.evaluate(Unbatchable(), device="cpu", seq_len=128, batch_size=1, progress=False)
    assert task.last_eval["batched"] is False and "batched_state" in task.last_eval["batched_why_not"]
    for bad in (0, "many"):
        with pytest.raises(HarnessError, match="eval_batch"):
            BabilongTask(source="generator", tokenizer="bytes", eval_batch=bad)


def test_a_smaller_pool_than_asked_is_warned_and_recorded(monkeypatch, capsys):
    """Issue 16: a source with fewer stories than `samples` scored fewer without saying so."""
    task = BabilongTask(source="generator", tokenizer="bytes", tasks="qa1", lengths="0k", samples=3)
    full = task.source.eval_samples
    monkeypatch.setattr(task.source, "eval_samples", lambda *a: full(*a)[:1])  # a pool of one story
    metrics = task.evaluate(RunningMeanLM(), device=torch.device("cpu"), seq_len=64, batch_size=1,
                            progress=False)
    assert metrics["acc/qa1/0k"].n == 1 and task.describe()["evaluation"]["samples_scored"] == {"qa1/0k": 1}
    assert any("1 samples scored, 3 asked" in note for note in task.describe()["eval_notes"])
    assert "warning: BABILong qa1/0k: 1 samples scored, 3 asked" in capsys.readouterr().err


@pytest.mark.parametrize("options, named", [({"lengths": "0k,0k"}, "lengths"),
                                            ({"lengths": "1k,1000"}, "lengths"),
                                            ({"tasks": "qa1,qa2,qa1"}, "tasks")])
def test_duplicate_lengths_or_tasks_are_rejected(options, named):
    with pytest.raises(HarnessError, match=f"BABILong {named} .*(twice|more than once)"):
        BabilongTask(source="generator", tokenizer="bytes", **options)


class OverflowingLM(RunningMeanLM):
    """RunningMeanLM whose outputs turn NaN once a stream passes 600 tokens, as a memory state that overflows along a
    long stream does: short prompts score, long ones have no answer."""

    def forward_with_state(self, input_ids, state):
        logits, aux, state = super().forward_with_state(input_ids, state)
        seen = state[1][:, 0] if state[1].dim() == 2 else state[1]
        return logits.masked_fill((seen > 600).view(-1, 1, 1), float("nan")), aux, state


@pytest.mark.parametrize("scoring", ["choice", "generate"])
@pytest.mark.parametrize("eval_batch", [1, 16])
def test_nan_outputs_count_wrong_and_are_recorded_per_cell(scoring, eval_batch, capsys):
    """A NaN score must not pick an answer: with NaN scores every comparison is false, and argmax would silently
    answer the first label (so a cell's accuracy became that label's share of the targets)."""
    task = BabilongTask(source="generator", tokenizer="bytes", tasks="qa1,qa4", lengths="0k,1k", samples=4, long_samples=4,
                        scoring=scoring, eval_batch=eval_batch, max_new_tokens=4)
    metrics = task.evaluate(OverflowingLM(), device="cpu", seq_len=128, batch_size=1, progress=True)
    assert task.last_eval["nonfinite_samples"] == {"qa1/1k": 4, "qa4/1k": 4}
    assert metrics["acc/qa1/1k"].value == metrics["acc/qa4/1k"].value == 0 and metrics["acc/qa1/1k"].n == 4
    assert any("NaN or infinite on 8 of 8 samples" in note for note in task.eval_notes)
    assert "NaN or infinite" in capsys.readouterr().err
    finite = BabilongTask(source="generator", tokenizer="bytes", tasks="qa1", lengths="0k", samples=4)
    finite.evaluate(OverflowingLM(), device="cpu", seq_len=128, batch_size=1, progress=False)
    assert finite.last_eval["nonfinite_samples"] == {}


def test_argmax_first_refuses_nan_scores():
    from tasks.babilong.streaming import NonFiniteOutput

    assert argmax_first([-2.0, -1.0, -1.0]) == 1
    for bad in ([float("nan"), -1.0], [-1.0, float("nan")], [float("-inf"), -1.0]):
        with pytest.raises(NonFiniteOutput):
            argmax_first(bad)
