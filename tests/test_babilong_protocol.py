"""The BABILong fine-tuning protocol: word tokens, packed training rows, extra "Where is" questions, per-length
sample counts and the learning curve the runner records."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from babilong_toys import RunningMeanLM, ToyConfig  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from tasks.babilong.babi import read_babi
from tasks.babilong.common import BABI_FILE_STEMS, TASK_LABELS, TASKS
from tasks.babilong.task import BabilongTask
from tasks.babilong.training import last_places, where_questions
from tasks.babilong.words import BABI_WORDS, SPECIALS, WordCodec


def test_every_babi_word_has_its_own_id_and_other_words_share_hashed_ids(shared_data):
    codec = WordCodec()
    seen = set()
    for task in TASKS:
        for path in (shared_data / "babi" / "en-10k").glob(f"{BABI_FILE_STEMS[task]}_*.txt"):
            seen |= set(re.findall(r"[A-Za-z]+|[^\w\s]", re.sub(r"^\d+ |\t.*$", "", path.read_text(), flags=re.M)))
    assert seen <= set(BABI_WORDS)  # every word of qa1..qa5 is a fixed token
    fixed = len(SPECIALS) + len(BABI_WORDS)
    ids = codec.encode("Mary went to the kitchen. Whereupon the xylophone sang.")
    assert codec.decode(ids[:6]) == "Mary went to the kitchen ."
    assert ids[6] >= fixed and ids[8] >= fixed and ids[6] != ids[8] and ids[7] < fixed  # hashed, and not all one "unknown" id
    assert codec.encode("xylophone") == codec.encode("xylophone") and max(ids) < codec.vocab_size


def test_last_places_answer_every_qa1_question_of_the_benchmark(shared_data):
    """The extra questions' answers come from the same rule bAbI's qa1 answers follow (checked on 1,000 test
    stories of the real files, and inside PG19 background at 1k)."""
    for story in read_babi(shared_data / "babi" / "en" / "qa1_single-supporting-fact_test.txt"):
        person = story.question.split()[-1].rstrip("?")
        assert last_places(" ".join(story.facts))[person] == story.answer
    task = BabilongTask(source="builder", tasks="qa1", data_dir=str(shared_data))
    for sample in task.eval_samples("qa1", "1k", 1000, 30):
        assert last_places(sample.context)[sample.question.split()[-1].rstrip("?")] == sample.target


def test_where_questions_skip_the_asked_person_and_respect_k():
    context = "Mary went to the kitchen. John moved to the office. Mary travelled to the garden. Sandra got the milk."
    assert where_questions(context, "Where is Mary?", 5) == [("\nQuestion: Where is John?\nAnswer:", "office")]
    assert where_questions(context, "Where is the milk?", 1) == [("\nQuestion: Where is Mary?\nAnswer:", "garden")]
    assert where_questions(context, "Where is the milk?", 0) == []


def _answers(task, inputs, targets):
    """Decoded (next token at each target position) of a batch: what the loss is taken on."""
    return [task.codec.decode(targets[b][targets[b] != -100].tolist()) for b in range(targets.shape[0])]


def test_packed_rows_fill_up_with_stories_sized_to_the_room_left():
    """Later samples of a row are drawn short enough for the room left: rows are mostly tokens, not padding, and
    no sample is ever cut (every row starts with a whole prompt)."""
    task = BabilongTask(source="generator")
    inputs, _ = task.train_batch(0, 32, 128, seed=0)
    stats = task.describe()["train_rows"]
    padding = stats["padding"] / (stats["padding"] + stats["tokens"])
    assert padding < 0.2, padding  # dropping a draw that did not fit left ~50 % of each row empty
    assert stats["truncated"] == 0 and stats["packed"] >= 32 // 2
    for b in range(32):
        row = task.codec.decode(inputs[b][inputs[b] != task.codec.pad_id].tolist())
        assert row.startswith("<context>")


def test_packed_rows_hold_whole_samples_with_every_answer_labelled():
    task = BabilongTask(source="generator", extra_questions=2)
    inputs, targets = task.train_batch(3, 4, 128, seed=7)
    again = task.train_batch(3, 4, 128, seed=7)
    assert torch.equal(inputs, again[0]) and torch.equal(targets, again[1])  # a pure function of (seed, step)
    stats = task.describe()["train_rows"]
    assert stats["packed"] > 0 and stats["answers"] > stats["rows"]
    frames = 0
    for b in range(4):
        row = task.codec.decode(inputs[b][inputs[b] != task.codec.pad_id].tolist())
        frames += row.count("<context>")
        # every target position predicts the token that follows in the row (shifted by one)
        pos = (targets[b] != -100).nonzero().flatten()
        assert torch.equal(targets[b, pos[:-1]], inputs[b, pos[:-1] + 1])
        # each answer is "<label> ." right after "Answer :"
        for p in pos.tolist():
            if p + 1 < 128 and inputs[b, p + 1] == targets[b, p] and task.codec.decode([int(targets[b, p])]) != ".":
                assert task.codec.decode(inputs[b, p - 1:p + 1].tolist()) == "Answer :"
    assert frames > 4  # more than one sample per row
    single = BabilongTask(source="generator", pack=0, extra_questions=0)
    x, y = single.train_batch(3, 4, 128, seed=7)
    assert all(single.codec.decode(x[b].tolist()).count("<context>") == 1 for b in range(4))
    assert all(len(a.split()) == 2 for a in _answers(single, x, y))  # "<label> ." once per row
    assert single.describe()["train_packing"] == "one sample per training row"


def test_loss_all_labels_every_real_token_and_validation_stays_on_answers():
    task = BabilongTask(source="generator", loss="all")
    x, y = task.train_batch(0, 2, 128, seed=0)
    real = x != task.codec.pad_id
    assert int((y != -100).sum()) >= int(real.sum()) - 2
    _, val_targets = task.val_batch(0, 2, 128)
    assert int((val_targets != -100).sum()) < int(real.sum()) // 4


def test_options_are_checked_and_0k_and_longer_cells_take_their_own_sample_counts():
    for bad in ({"pack": "yes"}, {"loss": "lm"}, {"extra_questions": -1}, {"long_samples": 0},
                {"tokenizer": "chars"}, {"curve_samples": "x"}):
        with pytest.raises(HarnessError):
            BabilongTask(source="generator", **bad)
    task = BabilongTask(source="generator", tasks="qa4", lengths="0k,1k", samples=3, long_samples=2)
    metrics = task.evaluate(RunningMeanLM(ToyConfig(vocab_size=task.vocab_size)), device="cpu", seq_len=128, batch_size=1,
                            progress=False)
    assert metrics["acc/qa4/0k"].n == 3 and metrics["acc/qa4/1k"].n == 2
    assert task.describe()["samples_per_cell"] == {"0k": 3, "1k": 2}


def test_the_runner_records_the_learning_curve_at_0k_and_1k(tmp_path):
    from harness.runner import RunConfig, run

    cfg = RunConfig(model="transformer-pp", task="babilong", preset="tiny", steps=4, batch_size=2, seq_len=128,
                    eval_every=2, eval_batches=1, output_path=str(tmp_path), progress=False,
                    task_args={"tasks": "qa1", "lengths": "0k", "samples": "2", "curve_samples": "3"})
    record, path = run(cfg)
    stored = json.loads(path.read_text())
    curve = stored["training"]["task_curve"]
    assert [point[0] for point in curve] == [2, 4] and [point[1] for point in curve] == [512, 1024]
    assert set(curve[-1][2]) == {"acc/mean/0k", "acc/mean/1k"}
    assert all(0 <= v <= 100 for point in curve for v in point[2].values())
    assert stored["task_info"]["model_tokens"].startswith("words")
    assert any(p.endswith("_curve.png") and Path(p).is_file() for p in stored["artifacts"])
    assert stored["task_info"]["train_rows"]["rows"] == 4 * 2  # training rows only: not the trial or validation rows


def test_the_shortcut_level_answers_with_the_label_named_last():
    from types import SimpleNamespace

    from tasks.babilong.scoring import last_mentioned_label, shortcut_accuracy
    places = TASK_LABELS["qa1"]
    context = "Mary went to the kitchen. John moved to the office. Mary travelled to the garden."
    assert last_mentioned_label(context, "Where is John?", places) == "garden"  # the shortcut, not the answer
    # a label the question names is never the answer (qa4: "What is north of the kitchen?")
    assert last_mentioned_label("The office is north of the kitchen.", "What is north of the kitchen?",
                                places) == "office"
    samples = [SimpleNamespace(context=context, question="Where is John?", target="office"),
               SimpleNamespace(context=context, question="Where is Mary?", target="garden"),
               SimpleNamespace(context="Nothing here.", question="Where is Mary?", target="garden")]
    assert shortcut_accuracy(samples, places) == pytest.approx(100 * (0 + 1 + 1 / 6) / 3)
    # on the generator's qa1 test samples the rule is right far more often than a guess (and far from always)
    task = BabilongTask(source="generator", tasks="qa1", lengths="0k")
    level = shortcut_accuracy(task.eval_samples("qa1", "0k", 0, 100), places)
    assert 30 < level < 60, level


def test_the_record_states_the_random_guess_level_per_cell():
    """harness regress checks a BABILong row only where its lower bound clears this level (one label in six; qa5
    one in seven)."""
    task = BabilongTask(source="generator", tasks="qa1,qa5", lengths="0k,1k")
    levels = task.describe()["guess_level"]
    assert levels["qa1/0k"] == pytest.approx(100 / 6, abs=1e-4) and levels["qa5/1k"] == pytest.approx(100 / 7, abs=1e-4)
    assert levels["mean/0k"] == levels["mean"] == pytest.approx((100 / 6 + 100 / 7) / 2, abs=1e-4)


def test_named_budgets_at_preset_tiny():
    assert BabilongTask(source="generator", tasks="qa1").budget_defaults("tiny")["steps"] == 750
    long = BabilongTask(source="generator", tasks="qa1", budget="long")
    assert long.budget_defaults("tiny")["steps"] == 1500 and long.describe()["budget"] == "long"
    assert long.budget_defaults("small") == {}  # larger presets keep their own budget
    with pytest.raises(HarnessError, match="budget 'huge' is not one of main, long"):
        BabilongTask(source="generator", tasks="qa1", budget="huge")


def test_a_curriculum_trains_its_first_tasks_alone_for_its_first_steps():
    task = BabilongTask(source="generator", tokenizer="phrases", curriculum="qa1+qa2:3", samples=1)
    drawn = []
    example = task._example
    task._example = lambda name, *args: (drawn.append(name), example(name, *args))[1]
    for step in range(3):
        task.train_batch(step, 8, 128, seed=0)
    assert set(drawn) == {"qa1", "qa2"}
    drawn.clear()
    task.train_batch(3, 8, 128, seed=0)
    assert set(drawn) == set(TASKS)
    drawn.clear()
    task.val_batch(0, 8, 128)  # validation rows always hold every task
    assert set(drawn) == set(TASKS)
    assert task.describe()["train_curriculum"] == "steps 0-2 on qa1, qa2 only, then every task"
    plain = BabilongTask(source="generator", tokenizer="phrases", samples=1)
    assert plain.curriculum is None and plain.describe()["train_curriculum"].startswith("none")


@pytest.mark.parametrize("bad, message", [("qa1", "not TASKS:STEPS"), ("qa9:10", "among the trained tasks"),
                                          ("qa1:0", "curriculum steps"), ("qa1:x", "curriculum steps")])
def test_curriculum_option_errors(bad, message):
    with pytest.raises(HarnessError, match=message):
        BabilongTask(source="generator", tokenizer="phrases", curriculum=bad, samples=1)


def test_named_protocols_set_option_defaults_and_explicit_options_win():
    from tasks.babilong.protocols import DELTA_RANGE_MEMORY

    standard = BabilongTask(source="generator", samples=1)
    assert "+ 0 movement phrases" in standard.codec.name and standard.curriculum is None
    assert standard.model_defaults("titans-mac") == {} and standard.describe()["protocol"].startswith("standard")
    learns = BabilongTask(source="generator", protocol="curriculum", samples=1)
    assert "+ 5 movement phrases" in learns.codec.name and learns.curriculum == (["qa1"], 600)
    assert learns.describe()["protocol"].startswith("curriculum: phrase tokens")
    assert learns.model_defaults("titans-mac") == {**DELTA_RANGE_MEMORY, "segment": "16"}
    assert learns.model_defaults("titans-mag") == DELTA_RANGE_MEMORY
    assert learns.model_defaults("transformer-pp") == {}  # other architectures keep their registered settings
    mine = BabilongTask(source="generator", protocol="curriculum", tokenizer="words", curriculum="none", samples=1)
    assert "+ 0 movement phrases" in mine.codec.name and mine.curriculum is None
    assert BabilongTask(source="generator", protocol="curriculum", tasks="qa2,qa3", samples=1).curriculum is None
    with pytest.raises(HarnessError, match="protocol 'fast' is not one of standard, curriculum"):
        BabilongTask(source="generator", protocol="fast", samples=1)


def test_the_runner_builds_and_rescores_with_the_protocols_model_settings(tmp_path):
    """The protocol's settings reach the model (record, note, memory config) unless --model-arg sets them, and
    scoring the checkpoint the run wrote builds the same model again."""
    from harness.runner import RunConfig, run

    task_args = {"protocol": "curriculum", "tasks": "qa1", "lengths": "0k", "samples": "2", "curve_samples": "0"}
    cfg = RunConfig(model="titans-mac", task="babilong", preset="tiny", steps=2, batch_size=2, eval_batches=1,
                    output_path=str(tmp_path), progress=False, update_leaderboard=False, task_args=task_args,
                    model_args={"chunk_size": "1"})
    record, _ = run(cfg)
    assert record["model_args"] == {"memory_depth": "1", "theta_max": "0.5", "momentum": "false",
                                    "inner_grad_clip": "null", "segment": "16", "chunk_size": "1"}
    assert any(n.startswith("task babilong's settings for titans-mac: inner_grad_clip=null, memory_depth=1")
               for n in record["notes"])
    assert record["task_info"]["train_curriculum"].startswith("steps 0-599 on qa1")
    rescored, _ = run(RunConfig(model="titans-mac", task="babilong", preset="tiny", checkpoint=record["checkpoint"],
                                output_path=str(tmp_path), progress=False, update_leaderboard=False,
                                task_args=task_args, model_args={"chunk_size": "1"}))
    assert rescored["model_args"] == record["model_args"]
    assert rescored["metrics"]["acc/qa1/0k"]["value"] == record["metrics"]["acc/qa1/0k"]["value"]
