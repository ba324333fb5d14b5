"""The needle task (tasks/needle.py): sample layout, training rows, streamed scoring against an oracle and against
one call, PG19 filler, and a short run through the runner."""

import numpy as np
import pytest
import torch

from harness.adapter import LMAdapter, build_model
from harness.errors import DataError, HarnessError
from harness.runner import RunConfig, run
from tasks.needle import FILLER_TOP, KEY_LOW, NEEDLE, QUERY, VALUE_LOW, NeedleTask


def test_prompt_layout():
    task = NeedleTask(lengths="1k", needles=3, value_len=2)
    prompts, answers = task.test_samples("1k", 8)
    assert prompts.shape == (8, 1024) and answers.shape == (8, 2)
    for p, a in zip(prompts, answers):
        assert p[-2] == QUERY and KEY_LOW <= p[-1] < VALUE_LOW
        starts = np.flatnonzero(p == NEEDLE)
        assert len(starts) == 3
        needles = {p[s + 1]: list(p[s + 2:s + 4]) for s in starts}
        assert needles[p[-1]] == list(a)  # the asked key's value
        filler = np.delete(p, np.concatenate([starts + k for k in range(4)] + [[1022, 1023]]))
        assert (filler < FILLER_TOP).all()


def test_training_rows_query_every_needle_with_loss_on_the_values_only():
    task = NeedleTask(train_length=64, needles=2, value_len=2)
    x, y = task.train_batch(0, 4, 64, seed=0)
    assert x.shape == y.shape == (4, 64)
    for row, t in zip(x, y):
        starts = (row == NEEDLE).nonzero().flatten().tolist()
        needles = {row[s + 1].item(): row[s + 2:s + 4].tolist() for s in starts}
        queries = (row == QUERY).nonzero().flatten().tolist()
        assert len(starts) == 2 and len(queries) == 2 and queries[0] == 57  # a haystack of 64 + 1 - 2 x 4 tokens, then the queries
        for q in queries:
            key = row[q + 1].item()
            assert t[q + 1:q + 3].tolist() == needles[key]  # the value tokens are the targets
        assert sorted(row[q + 1].item() for q in queries) == sorted(needles)  # every needle asked once
        assert (t != -100).sum() == 4
    torch.testing.assert_close(task.train_batch(0, 4, 64, 0), NeedleTask(train_length=64, needles=2).train_batch(0, 4, 64, 0))


class LookupModel(LMAdapter):
    """A state-streaming model that answers needles perfectly by keeping a table of the needles it has read;
    `forget_after` drops needles read more than that many tokens ago (a memory that fades)."""

    streaming = "state"

    def __init__(self, value_len=2, forget_after=None):
        super().__init__(type("C", (), {"vocab_size": 256})())
        self.value_len, self.forget_after = value_len, forget_after
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def describe(self):
        return {}

    def forward_with_state(self, ids, state):
        state = state or [{"pos": 0, "table": {}, "tail": []} for _ in range(len(ids))]
        logits = torch.zeros(*ids.shape, 256)
        new = []
        for r, row in enumerate(ids.tolist()):
            st = {"pos": state[r]["pos"], "table": dict(state[r]["table"]), "tail": list(state[r]["tail"]),
                  "pending": list(state[r].get("pending", []))}
            for t, tok in enumerate(row):
                st["tail"] = (st["tail"] + [tok])[-(self.value_len + 3):]
                st["pos"] += 1
                tail = st["tail"]
                if len(tail) >= 2 + self.value_len and tail[-2 - self.value_len] == NEEDLE:
                    st["table"][tail[-1 - self.value_len]] = (tuple(tail[-self.value_len:]), st["pos"])
                if len(tail) >= 2 and tail[-2] == QUERY and tail[-1] in st["table"]:
                    value, at = st["table"][tail[-1]]
                    if self.forget_after is None or st["pos"] - at <= self.forget_after:
                        logits[r, t, value[0]] = 1
                        st["pending"] = list(value[1:])
                elif st.get("pending"):
                    logits[r, t, st["pending"].pop(0)] = 1
            new.append(st)
        return logits, logits.new_zeros(()), new

    def select_state(self, state, rows):
        return [state[int(i)] for i in rows]

    def repeat_state(self, state, n):
        return [s for s in state for _ in range(n)]


def test_streamed_scoring_with_an_oracle_and_a_fading_memory():
    task = NeedleTask(lengths="256,1k", samples=6, eval_batch=4)
    perfect = task.evaluate(LookupModel(), device="cpu", seq_len=64, batch_size=4, progress=False)
    assert perfect["acc/256"].value == 100.0 and perfect["acc/1k"].value == 100.0 and perfect["acc"].n == 12
    fading = task.evaluate(LookupModel(forget_after=300), device="cpu", seq_len=64, batch_size=4, progress=False)
    assert fading["acc/256"].value == 100.0 and fading["acc/1k"].value < 100.0


@pytest.mark.parametrize("name", ["titans-lmm", "transformer-pp"])
def test_batched_streaming_equals_one_sample_at_a_time(name):
    torch.manual_seed(0)
    model = build_model(name, "tiny", vocab_size=256, overrides={"depth": 1}).eval()
    task = NeedleTask(lengths="300", samples=4, eval_batch=4, train_length=64)
    one = NeedleTask(lengths="300", samples=4, eval_batch=1, train_length=64)
    a = task.evaluate(model, device="cpu", seq_len=64, batch_size=4, progress=False)
    b = one.evaluate(model, device="cpu", seq_len=64, batch_size=4, progress=False)
    assert a["acc/300"].value == b["acc/300"].value


def test_pg19_filler(shared_data):
    task = NeedleTask(lengths="512", filler="pg19", data_dir=str(shared_data))
    prompts, _ = task.test_samples("512", 2)
    body = prompts[0][prompts[0] < FILLER_TOP]
    assert bytes(body.astype(np.uint8)).decode("ascii").count(" ") > 50  # English text
    assert "pg19 ASCII text (20 books" in task.describe()["filler"]
    with pytest.raises(DataError, match="needs the books"):
        NeedleTask(filler="pg19")


def test_option_errors():
    with pytest.raises(HarnessError, match="unknown option.*for task needle"):
        NeedleTask(length="1k")
    with pytest.raises(HarnessError, match="distinct lengths"):
        NeedleTask(lengths="1k,1k")
    with pytest.raises(HarnessError, match="not a token count"):
        NeedleTask(lengths="1kb")
    with pytest.raises(HarnessError, match="do not fit"):
        NeedleTask(lengths="8", needles=4)


def test_run_through_the_runner(tmp_path):
    cfg = RunConfig(model="titans-lmm", task="needle", preset="tiny", steps=2, batch_size=2, eval_every=0,
                    model_args={"depth": "1"}, output_path=str(tmp_path), progress=False,
                    task_args={"lengths": "512,2k", "samples": "3", "train_length": "128"})
    record, _ = run(cfg)
    assert record["training"]["seq_len"] == 128
    assert set(record["metrics"]) == {"acc", "acc/512", "acc/2k"} and record["metrics"]["acc/2k"]["n"] == 3
    assert record["task_info"]["evaluation"]["batched"] is True
    peaks = record["task_info"]["evaluation"]["peak_memory_mb"]
    assert set(peaks) == {"512", "2k"} and all(mb > 10 for mb in peaks.values())  # the process's RSS, model included
    starts = record["task_info"]["evaluation"]["memory_at_start_mb"]
    assert set(starts) == {"512", "2k"} and all(0 < starts[n] <= peaks[n] for n in peaks)


class HoardingLookupModel(LookupModel):
    """The oracle, with a state that keeps 1 MB per call: memory that grows with the length streamed."""

    def forward_with_state(self, ids, state):
        logits, aux, new = super().forward_with_state(ids, state)
        hoard = (state[0].get("hoard", []) if state else []) + [torch.ones(2 ** 18)]
        for st in new:
            st["hoard"] = hoard
        return logits, aux, new


def test_peak_memory_per_length_shows_a_state_that_grows():
    """The per-length peak is measured, not assumed flat: a state that grows by 1 MB per 64-token call peaks
    ~250 MB higher at 16k than at 256 tokens."""
    task = NeedleTask(lengths="256,16k", samples=2, eval_batch=2)
    metrics = task.evaluate(HoardingLookupModel(), device="cpu", seq_len=64, batch_size=2, progress=False)
    assert metrics["acc/16k"].value == 100.0
    peaks, starts = task.last_eval["peak_memory_mb"], task.last_eval["memory_at_start_mb"]
    assert peaks["16k"] - peaks["256"] > 150, peaks
    assert peaks["16k"] - starts["16k"] > 150 and peaks["256"] - starts["256"] < 50, (peaks, starts)


class OverflowingLookupModel(LookupModel):
    """The oracle, with outputs that turn NaN once a stream passes 600 tokens (an overflowing memory state)."""

    def forward_with_state(self, ids, state):
        logits, aux, new = super().forward_with_state(ids, state)
        overflowed = torch.tensor([st["pos"] > 600 for st in new]).view(-1, 1, 1)
        return logits.masked_fill(overflowed, float("nan")), aux, new


@pytest.mark.parametrize("eval_batch", [1, 4])
def test_nan_outputs_count_wrong_and_are_recorded(eval_batch):
    task = NeedleTask(lengths="256,1k", samples=6, eval_batch=eval_batch)
    metrics = task.evaluate(OverflowingLookupModel(), device="cpu", seq_len=64, batch_size=4, progress=False)
    assert metrics["acc/256"].value == 100.0 and metrics["acc/1k"].value == 0.0 and metrics["acc/1k"].n == 6
    assert task.last_eval["nonfinite_samples"] == {"1k": 6}
    assert any("NaN or infinite on 6 of 6" in note for note in task.last_eval["notes"])
