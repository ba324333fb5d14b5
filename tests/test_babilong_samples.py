"""BABILong samples: length names, bAbI parsing, the builder (exact GPT-2 lengths, seeded), the built-in generator
(exact lengths without files, answers that follow from the story), the HF source and source selection."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import DataError, HarnessError
from tasks.babilong.babi import parse_babi
from tasks.babilong.common import TASK_LABELS, TASKS, parse_length
from tasks.babilong.generator import BabilongGenerator, count_tokens, generate_story

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "babi").is_dir(), reason=f"shared data not found at {SHARED}")


def test_length_names():
    assert parse_length("0k") == ("0k", 0)
    assert parse_length("1k") == ("1k", 1000)  # the benchmark's names are decimal thousands of GPT-2 tokens
    assert parse_length("128k") == ("128k", 128000)
    assert parse_length("1M") == ("1M", 1_000_000)
    assert parse_length("1500") == ("1500", 1500)
    for bad in ("1kb", "k", "-1k", "1.5k"):
        with pytest.raises(HarnessError):
            parse_length(bad)


def test_parse_babi_splits_questions_into_samples():
    text = ("1 Mary moved to the bathroom.\n2 John went to the hallway.\n3 Where is Mary? \tbathroom\t1\n"
            "4 Daniel went back to the hallway.\n5 Where is Daniel? \thallway\t4\n1 Sandra went to the office.\n"
            "2 Where is Sandra? \toffice\t1\n")
    samples = parse_babi(text)
    assert [s.answer for s in samples] == ["bathroom", "hallway", "office"]
    assert samples[1].facts == ("Mary moved to the bathroom.", "John went to the hallway.",
                                "Daniel went back to the hallway.")  # earlier questions dropped
    assert samples[1].supporting == (2,) and samples[1].n_lines == 4
    assert samples[2].facts == ("Sandra went to the office.",)  # ids restart: a new story
    with pytest.raises(DataError):
        parse_babi("x Mary moved.\n")


def _facts_in_order(context: str, facts) -> bool:
    pos = 0
    for fact in facts:
        found = context.find(fact, pos)
        if found < 0:
            return False
        pos = found + len(fact)
    return True


@pytest.fixture(scope="module")
def builder():
    if not (SHARED / "babi").is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    from tasks.babilong.builder import BabilongBuilder

    return BabilongBuilder(SHARED / "babi", SHARED / "pg19", SHARED / "tokenizers" / "gpt2", seed=3)


@needs_shared
@pytest.mark.parametrize("length", ["0k", "1k", "4k"])
def test_builder_lengths_are_exact_gpt2_counts(builder, length):
    name, tokens = parse_length(length)
    for task in ("qa1", "qa3"):
        for sample in builder.eval_samples(task, name, tokens, 2):
            pieces_count = builder.counter.counts([sample.context])[0]
            if tokens == 0:
                assert pieces_count < 1000  # the bare story
            else:
                # facts + background fill exactly length - 300 tokens (re-tokenising the joined text may merge a
                # token or two differently at piece boundaries)
                assert abs(pieces_count - (tokens - 300)) <= 2, (task, length, pieces_count)
            assert sample.source == "builder" and sample.task == task and sample.length == name


@needs_shared
def test_builder_is_seeded_and_uses_test_stories(builder):
    from tasks.babilong.builder import BabilongBuilder

    a = builder.eval_samples("qa2", "1k", 1000, 3)
    b = builder.eval_samples("qa2", "1k", 1000, 3)
    assert a == b
    other = BabilongBuilder(SHARED / "babi", SHARED / "pg19", SHARED / "tokenizers" / "gpt2", seed=4)
    assert other.eval_samples("qa2", "1k", 1000, 3) != a
    test_stories = builder.stories("qa2", "eval")
    for sample in a:
        story = next(s for s in test_stories if s.question == sample.question and s.answer == sample.target
                     and _facts_in_order(sample.context, s.facts))
        assert story is not None
    # facts are scattered: background text sits between them at 1k
    assert len(a[0].context) > 5 * sum(len(f) for f in story.facts) or len(story.facts) > 20
    # train samples are a pure function of (seed, index), and come from the train files
    assert builder.train_sample("qa1", "0k", 0, 5, 17) == builder.train_sample("qa1", "0k", 0, 5, 17)
    assert "train" in str(builder._files["qa1", "train"]) and "test" in str(builder._files["qa1", "eval"])


@needs_shared
def test_generator_counts_equal_the_real_gpt2_tokenizer():
    from tasks.babilong.builder import GPT2Counter

    counter = GPT2Counter(SHARED / "tokenizers" / "gpt2")
    gen = BabilongGenerator(seed=1)
    for task in TASKS:
        sample = gen.eval_samples(task, "1k", 1000, 1)[0]
        pieces = re.split(r"(?<=\.) ", sample.context)  # the sentences again (the last one may be cut)
        assert counter.counts(pieces) == [count_tokens(p) for p in pieces]
        assert sum(counter.counts(pieces)) == 700  # 1k = 1000 - 300 tokens of context


def test_generator_lengths_and_determinism():
    gen = BabilongGenerator(seed=0)
    for task in TASKS:
        for name, tokens in (("1k", 1000), ("2k", 2000)):
            for s in gen.eval_samples(task, name, tokens, 2):
                assert count_tokens(s.context) == tokens - 300
                assert s.target in TASK_LABELS[task]
    assert gen.eval_samples("qa3", "2k", 2000, 2) == BabilongGenerator(seed=0).eval_samples("qa3", "2k", 2000, 2)
    assert gen.eval_samples("qa3", "2k", 2000, 2) != BabilongGenerator(seed=1).eval_samples("qa3", "2k", 2000, 2)
    assert gen.train_sample("qa1", "0k", 0, 9, 3) != gen.eval_samples("qa1", "0k", 0, 4)[3]


def test_generator_background_holds_no_answer_words():
    gen = BabilongGenerator(seed=0)
    text = " ".join(gen.background(3000, np.random.default_rng(0), "eval")).lower()
    words = set(re.findall(r"[a-z]+", text))
    for labels in TASK_LABELS.values():
        assert not words & {l.lower() for l in labels}
    assert not words & {"john", "daniel", "sandra", "north", "south", "east", "west"}


def _solve(task: str, facts, question: str) -> str:
    """An independent reading of the story (the way a person would answer), to check the generator's answers."""
    q = question.rstrip("?").split()
    if task == "qa4":
        rel = {}
        for fact in facts:
            w = fact.rstrip(".").split()
            rel[w[3], w[6]] = w[1]  # (direction, of place) -> place
        if q[2] == "the":  # What is the X <direction> of?
            return next(o for (d, o), p in rel.items() if p == q[3] and d == q[4])
        return rel[q[2], q[-1]]  # What is <direction> of the Y?
    at, holder, where_obj, trail = {}, {}, {}, {}
    last_give = {}
    for fact in facts:
        words = fact.rstrip(".").split()
        person = words[0]
        if words[-2:-1] == ["the"] and words[-1] in TASK_LABELS["qa1"] and " of " not in fact:
            at[person] = words[-1]
            for obj, h in holder.items():
                if h == person and (not trail.get(obj) or trail[obj][-1] != words[-1]):
                    trail.setdefault(obj, []).append(words[-1])
        elif "gave" in words:
            obj, receiver = words[3], words[5]
            holder[obj] = receiver
            last_give[obj] = (person, receiver)
            last_give["pair", person, receiver] = obj
        elif any(v in fact for v in (" dropped ", " discarded ", " put down ", " left ")):
            obj = words[-1]
            holder[obj] = None
            where_obj[obj] = at.get(person)
        else:  # picked up / got / grabbed / took
            obj = [w for w in words if w in ("apple", "football", "milk")][0]
            holder[obj] = person
            if not trail.get(obj) or trail[obj][-1] != at[person]:
                trail.setdefault(obj, []).append(at[person])
    if task == "qa1":
        return at[q[-1]]
    if task == "qa2":
        obj = q[-1]
        return at[holder[obj]] if holder.get(obj) else where_obj[obj]
    if task == "qa3":
        return trail[q[3]][-2]
    if q[0] == "What":  # What did A give to B?
        return last_give["pair", q[2], q[-1]]
    if q[:2] == ["Who", "did"]:  # Who did A give the OBJ to?
        return last_give[q[-2]][1]
    if q[1] == "received":
        return last_give[q[-1]][1]
    return last_give[q[3]][0]  # Who gave the OBJ (to B)?


@pytest.mark.parametrize("task", TASKS)
def test_generator_answers_follow_from_the_story(task):
    rng = np.random.default_rng(11)
    for _ in range(200):
        story = generate_story(task, rng)
        assert _solve(task, story.facts, story.question) == story.answer, (story.facts, story.question)


def test_hf_source_with_a_stand_in_loader(monkeypatch):
    import datasets

    from tasks.babilong.sources import HFSource

    calls = []

    def fake_load(repo, config, split):
        calls.append((repo, config, split))
        return [{"input": f"ctx {i}", "question": "Where is Mary?", "target": "garden"} for i in range(5)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    src = HFSource()
    samples = src.eval_samples("qa1", "4k", 4000, 3)
    assert [s.context for s in samples] == ["ctx 0", "ctx 1", "ctx 2"] and samples[0].source == "hf"
    assert calls == [("RMT-team/babilong", "4k", "qa1")]
    src.train_sample("qa1", "0k", 0, 0, 1)
    assert calls[-1] == ("RMT-team/babilong-train-5k-samples", "0k", "qa1")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="could not load RMT-team/babilong"):
        HFSource().eval_samples("qa1", "1k", 1000, 1)


def test_source_selection(monkeypatch, tmp_path):
    from tasks.babilong.task import BabilongTask

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    task = BabilongTask(samples=1)  # auto, no data dir
    assert task.describe()["source"] == "generator" and task.describe()["source_choice"].startswith("auto")
    with pytest.raises(DataError, match="builder needs"):
        BabilongTask(source="builder", data_dir=str(tmp_path))
    with pytest.raises(HarnessError):
        BabilongTask(source="nowhere")
    with pytest.raises(HarnessError, match="unknown BABILong option"):
        BabilongTask(sampels=3)
    with pytest.raises(HarnessError):
        BabilongTask(tasks="qa1,qa9")
    if (SHARED / "babi").is_dir():
        task = BabilongTask(data_dir=str(SHARED), samples=1)
        assert task.describe()["source"] == "builder"
        assert "Punkt" in task.describe()["source_sentence_splitter"] or "regex" in task.describe()[
            "source_sentence_splitter"]


def test_the_default_source_makes_no_network_call(monkeypatch, no_network, capsys):
    from tasks.babilong.sources import HFSource
    from tasks.babilong.task import BabilongTask

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HARNESS_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)  # online as far as the environment says
    task = BabilongTask(samples=1)  # what `harness eval --task babilong` builds
    task.train_batch(0, 2, 256, seed=0)
    assert task.describe()["source"] == "generator" and "source=hf" in task.describe()["source_choice"]
    assert "source generator" in capsys.readouterr().err  # the choice is printed as well as recorded
    assert isinstance(BabilongTask(source="hf", samples=1).source, HFSource)  # the Hub only when asked for
    assert no_network == []


def test_train_batches_are_deterministic_and_train_only_the_answer():
    from tasks.babilong.task import BabilongTask

    # the byte form with one sample per row (the word-token, packed default: tests/test_babilong_protocol.py)
    task = BabilongTask(source="generator", samples=1, tokenizer="bytes", pack=0, extra_questions=0)
    x1, y1 = task.train_batch(3, 5, 400, seed=7)
    x2, y2 = task.train_batch(3, 5, 400, seed=7)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(task.train_batch(4, 5, 400, seed=7)[0], x1)
    assert x1.shape == y1.shape == (5, 400)
    for row_x, row_y in zip(x1, y1):
        kept = row_y[row_y != -100]
        answer = bytes(kept.tolist()).decode()
        assert re.fullmatch(r" \w+\.", answer), answer  # only " <answer>." is trained on
        first = int((row_y != -100).nonzero()[0])
        assert bytes(row_x[:first + 1].tolist()).decode().endswith("Answer:")
        # targets are the next inputs
        assert torch.equal(row_y[first:-1], row_x[first + 1:])
