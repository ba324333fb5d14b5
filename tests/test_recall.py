"""The synthetic recall suite (tasks/recall.py): Zoology's MQAR layout, the power-law query gaps against numpy's
sequential sampling, test items never trained on, MAD's noisy and fuzzy variants, scoring against an oracle, the
order-blind control model, and a run through the runner with its record and plot."""

import json

import numpy as np
import pytest
import torch

from harness.adapter import build_model
from harness.errors import HarnessError
from harness.runner import RunConfig, run
from tasks.recall import Cell, MQARTask, power_law_gaps


def pairs_of(task, x, cell, row):
    """{key: value} of one sequence's context (single-token keys and values, no noise)."""
    ctx = x[row, :2 * cell.kv_pairs].tolist()
    return dict(zip(ctx[0::2], ctx[1::2]))


def test_zoology_layout():
    task = MQARTask(kv_pairs=8, seq_len=64, vocab=256)
    cell = task.cells[0]
    x, y = task.train_batch(3, 32, 64, seed=1)
    assert x.shape == y.shape == (32, 64)
    for r in range(32):
        kv = pairs_of(task, x, cell, r)
        assert len(kv) == 8  # distinct keys
        assert all(1 <= k < 128 for k in kv) and all(128 <= v < 256 for v in kv.values())
        assert len(set(kv.values())) == 8
        answers = (y[r] != -100).nonzero().flatten().tolist()
        assert len(answers) == 8 and min(answers) >= 16  # one query per key, all after the context
        queried = [x[r, p].item() for p in answers]
        assert sorted(queried) == sorted(kv)  # each key queried once, the input at an answer is its key
        assert [y[r, p].item() for p in answers] == [kv[k] for k in queried]


def test_power_law_gaps_match_sequential_sampling():
    """Gumbel top-k draws the same distribution as numpy's choice(replace=False, p) (Zoology's own call)."""
    slots, k, n, a = 6, 2, 40000, 0.3
    p = a * np.arange(1, slots + 1) ** (a - 1)
    p /= p.sum()
    rng = np.random.default_rng(0)
    ours = power_law_gaps(rng, n, slots, k, a)
    reference = np.stack([rng.choice(slots, size=k, replace=False, p=p) for _ in range(n)])
    inc_ours = np.bincount(ours.ravel(), minlength=slots) / n
    inc_ref = np.bincount(reference.ravel(), minlength=slots) / n
    np.testing.assert_allclose(inc_ours, inc_ref, atol=0.012)  # inclusion probabilities, ~3 sigma at n=40k
    assert (np.sort(ours, 1)[:, 0] != np.sort(ours, 1)[:, 1]).all()  # without replacement


def test_batches_are_pure_functions_and_test_set_ignores_run_seed():
    a, b = MQARTask(), MQARTask()
    torch.testing.assert_close(a.train_batch(5, 8, 64, 0), b.train_batch(5, 8, 64, 0))
    assert not torch.equal(a.train_batch(5, 8, 64, 0)[0], a.train_batch(5, 8, 64, 1)[0])
    cell = a.cells[0]
    torch.testing.assert_close(a.test_set(cell), MQARTask().test_set(cell))
    assert not torch.equal(a.test_set(cell)[0], MQARTask(seed=1).test_set(cell)[0])


def items(x, y, kv_pairs):
    """What makes an MQAR item (single-token keys/values): the context and the keys in query order."""
    return {tuple(row[:2 * kv_pairs].tolist()) + tuple(row[(t != -100)].tolist()) for row, t in zip(x, y)}


def test_training_never_sees_a_test_item():
    """A cell with few possible items (vocab 8: 3 keys, 4 values, 2 pairs) forces clashes; all are redrawn."""
    task = MQARTask(vocab=8, kv_pairs=2, seq_len=8, test_size=60)
    test_items = items(*task.test_set(task.cells[0]), 2)
    trained = set()
    for step in range(20):
        trained |= items(*task.train_batch(step, 16, 8, seed=0), 2)
    assert task.redrawn > 0 and len(trained) > 20
    assert not trained & test_items


def test_grid_cells_and_option_errors():
    task = MQARTask(kv_pairs="4,8,16,32,64", seq_len="64,128,256,512")
    names = [c.name for c in task.cells]
    assert "kv16/T64" in names and "kv32/T64" not in names and "kv64/T256" in names
    assert task.dropped == ["kv32/T64", "kv64/T64", "kv64/T128"]
    assert task.preferred_seq_len == 512 and task.exact_seq_len
    assert task.vocab_size == 256 and MQARTask().vocab_size == 64  # grown until 64 pairs have distinct keys
    x, y = task.train_batch(0, 4, 512, 0)  # shorter cells are right-padded, no loss on padding
    assert x.shape == (4, 512) and (y[:, 64:] == -100).all()
    with pytest.raises(HarnessError, match="unknown option.*for task mqar"):
        MQARTask(kvpairs=4)
    with pytest.raises(HarnessError, match="twice"):
        MQARTask(kv_pairs="4,4")
    with pytest.raises(HarnessError, match="no MQAR cell fits"):
        MQARTask(kv_pairs=64, seq_len=64)
    with pytest.raises(HarnessError, match="too few keys"):
        MQARTask(vocab=16, kv_pairs=8, seq_len=64)


def test_noisy_variant_keeps_pairs_adjacent():
    task = MQARTask(kv_pairs=4, seq_len=64, vocab=256, noise=10)
    assert task.noise_vocab == 32 and task.half == 112
    x, y = task.train_batch(0, 16, 64, 0)
    for r in range(16):
        ctx = x[r, :18].tolist()
        noise = [t for t in ctx if t >= 224]
        assert len(noise) == 10
        clean = [t for t in ctx if t < 224]
        assert all(1 <= k < 112 for k in clean[0::2]) and all(112 <= v < 224 for v in clean[1::2])
        kv = dict(zip(clean[0::2], clean[1::2]))
        for p in (y[r] != -100).nonzero().flatten().tolist():
            assert y[r, p].item() == kv[x[r, p].item()]


def test_fuzzy_variant_multi_token_keys_and_values():
    task = MQARTask(kv_pairs=4, seq_len=64, key_len=2, value_len=3)
    x, y = task.train_batch(0, 8, 64, 0)
    for r in range(8):
        ctx = x[r, :20].tolist()
        kv = {tuple(ctx[i:i + 2]): tuple(ctx[i + 2:i + 5]) for i in range(0, 20, 5)}
        answers = (y[r] != -100).nonzero().flatten().tolist()
        assert len(answers) == 12
        for q in range(4):
            first = answers[3 * q]
            assert answers[3 * q:3 * q + 3] == [first, first + 1, first + 2]
            key = tuple(x[r, first - 1:first + 1].tolist())
            assert tuple(y[r, first:first + 3].tolist()) == kv[key]
            assert x[r, first + 1].item() == kv[key][0]  # teacher forcing inside the value


class Oracle(torch.nn.Module):
    """Predicts every target of the task's test sequences, except the last value token of the first `wrong`
    queries of each row (so a multi-token value half right counts as not recalled)."""

    def __init__(self, task, wrong=0):
        super().__init__()
        self.vocab, self.wrong, self.value_len = task.vocab_size, wrong, task.answer_len
        self.answers = {tuple(x.tolist()): y for c in task.cells for x, y in zip(*task.test_set(c))}

    def forward(self, x):
        logits = torch.zeros(*x.shape, self.vocab)
        for r, row in enumerate(x):
            y = self.answers[tuple(row.tolist())]
            positions = (y != -100).nonzero().flatten()
            logits[r, positions, y[positions]] = 1
            for q in range(self.wrong):
                last = positions[q * self.value_len + self.value_len - 1]
                logits[r, last] = 0
                logits[r, last, (y[last] + 1) % self.vocab] = 1
        return logits, logits.new_zeros(())


@pytest.mark.parametrize("value_len", [1, 2])
def test_evaluate_scores_an_oracle(value_len):
    task = MQARTask(kv_pairs=4, seq_len=32, vocab=64, value_len=value_len, test_size=40, eval_batch=16)
    perfect = task.evaluate(Oracle(task), device="cpu", seq_len=32, batch_size=8, progress=False)
    assert perfect["acc"].value == 100.0 and perfect["acc/kv4/T32"].n == 160
    one_wrong = task.evaluate(Oracle(task, wrong=1), device="cpu", seq_len=32, batch_size=8, progress=False)
    assert one_wrong["acc"].value == 75.0
    assert one_wrong["acc"].stderr == pytest.approx(100 * (0.75 * 0.25 / 160) ** 0.5)


def test_control_is_blind_to_which_value_followed_which_key():
    """The bag-of-tokens control sees the multiset of tokens so far: swapping the values of two pairs changes
    nothing at a later query, which is what bounds its MQAR accuracy at 1/kv_pairs."""
    torch.manual_seed(0)
    model = build_model("bag-of-tokens", "tiny", vocab_size=256).eval()
    task = MQARTask(kv_pairs=8, seq_len=64)
    x, _ = task.train_batch(0, 4, 64, 0)
    swapped = x.clone()
    swapped[:, 1], swapped[:, 3] = x[:, 3], x[:, 1]
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(swapped)
    torch.testing.assert_close(a[:, 16:], b[:, 16:], rtol=1e-5, atol=1e-5)
    attention = build_model("transformer-pp", "tiny", vocab_size=256).eval()
    with torch.no_grad():  # an order-aware model does see the swap
        assert not torch.allclose(attention(x)[0][:, 16:], attention(swapped)[0][:, 16:], atol=1e-4)


def test_run_records_cells_and_draws_the_recall_plot(tmp_path):
    cfg = RunConfig(model="transformer-pp", task="mqar", preset="tiny", steps=3, batch_size=4, eval_every=0,
                    model_args={"depth": "1", "dim": "32", "heads": "2"}, output_path=str(tmp_path), progress=False,
                    task_args={"kv_pairs": "4,8", "seq_len": "32,64", "test_size": "20"})
    _, path = run(cfg)
    saved = json.loads(path.read_text())
    assert saved["training"]["seq_len"] == 64  # the task's longest cell, not the preset's 128
    assert set(saved["metrics"]) == {"acc", "acc/kv4/T32", "acc/kv8/T32", "acc/kv4/T64", "acc/kv8/T64"}
    cell = saved["metrics"]["acc/kv8/T64"]
    assert cell["n"] == 160 and cell["stderr"] is not None and cell["higher_is_better"]
    assert saved["task_info"]["no_recall_level"]["kv8/T64"] == 12.5
    assert any("context set from the preset's 128 to the 64" in n for n in saved["notes"])
    from click.testing import CliRunner

    from harness.cli import cli

    result = CliRunner().invoke(cli, ["leaderboard", "--output_path", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plots" / "recall_mqar.png").is_file()
    assert "acc/kv8/T64" in (tmp_path / "leaderboard.csv").read_text()


def test_cpu_budget_is_the_tiny_default_and_flags_win(tmp_path):
    from harness.runner import fit_budget, resolve_budget

    task = MQARTask()
    cfg = RunConfig(model="transformer-pp", task="mqar")
    budget, notes = fit_budget(cfg, resolve_budget(cfg), task)
    defaults = task.budget_defaults("tiny")
    assert budget.steps == defaults["steps"] and budget.lr == defaults["lr"] and budget.seq_len == 64
    assert notes and "budget for preset tiny" in notes[0]
    cfg = RunConfig(model="transformer-pp", task="mqar", steps=7, lr=0.5)
    budget, _ = fit_budget(cfg, resolve_budget(cfg), task)
    assert budget.steps == 7 and budget.lr == 0.5
    assert task.budget_defaults("small") == {}


def test_cell_name():
    assert Cell(8, 64).name == "kv8/T64"


def test_selective_copy_layout_and_scoring():
    from tasks.recall import SelectiveCopyTask

    task = SelectiveCopyTask(n_tokens=4, seq_len=16, vocab=16, test_size=30, eval_batch=8)
    x, y = task.train_batch(2, 8, 16, seed=0)
    for row, t in zip(x, y):
        mark = (row == SelectiveCopyTask.MARK).nonzero().flatten().tolist()
        assert mark == [12]  # 16 - 4 context tokens, then the marker
        content = [v for v in row[:12].tolist() if v != SelectiveCopyTask.BLANK]
        assert len(content) == 4 and all(2 <= v < 16 for v in content)
        assert t[12:].tolist() == content and (t[:12] == -100).all()  # copied in order after the marker
        assert row[13:].tolist() == content[:3]  # teacher forcing
    perfect = task.evaluate(Oracle(task), device="cpu", seq_len=16, batch_size=8, progress=False)
    assert perfect["acc/n4/T16"].value == 100.0 and perfect["acc"].n == 120
    with pytest.raises(HarnessError, match="no selective-copy cell fits"):
        SelectiveCopyTask(n_tokens=9, seq_len=16)
