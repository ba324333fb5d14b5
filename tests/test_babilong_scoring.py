"""BABILong scoring: the benchmark's rule reproduces the published SmolLM2-360M tables exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from tasks.babilong.common import TASK_LABELS, TASKS, load_official_labels
from tasks.babilong.scoring import binomial_accuracy, compare_answers, mean_of_accuracies, score_prediction_table

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "babilong"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared BABILong data not found at {DATA}")


def _rows(csv: Path):
    df = pd.read_csv(csv, keep_default_na=False)
    return list(zip(df["target"].astype(str), df["output"].astype(str), df["question"].astype(str)))


@needs_data
@pytest.mark.parametrize("model", ["SmolLM2-360M", "SmolLM2-360M-Instruct"])
def test_published_predictions_reproduce_published_tables(model):
    table = pd.read_csv(DATA / "babilong_results_smollm-eval-branch" / "HuggingFaceTB" / f"{model}.csv", index_col=0)
    evals = DATA / "babilong_evals_smollm-eval-branch" / "HuggingFaceTB" / model
    checked = 0
    for task in TASKS:
        for length in ["0k", "1k", "2k", "4k", "8k"]:
            (csv,) = evals.glob(f"{task}_{length}_*.csv")
            ours = score_prediction_table(_rows(csv), TASK_LABELS[task])
            assert ours == table.loc[task, length], (model, task, length)  # exact, as published
            checked += 1
    assert checked == 25
    # the published average row is the unweighted mean over qa1..qa5
    for length in ["0k", "1k", "2k", "4k", "8k"]:
        assert math.isclose(table.loc[list(TASKS), length].mean(), table.loc["avg", length], rel_tol=1e-12)


@needs_data
def test_labels_match_the_official_label_sets():
    official = load_official_labels(DATA / "babilong_prompts_and_labels.json")
    for task in TASKS:
        assert set(official[task]) == set(TASK_LABELS[task])


def test_compare_answers_rule():
    locs = TASK_LABELS["qa1"]
    assert compare_answers("kitchen", "Answer: Mary is in the kitchen.", "Where is Mary?", locs)
    assert compare_answers("kitchen", "THE KITCHEN", "Where is Mary?", locs)  # lower-cased
    assert not compare_answers("kitchen", "The office. Then the kitchen.", "Where is Mary?", locs)  # first sentence
    assert not compare_answers("kitchen", "kitchen or garden", "Where is Mary?", locs)  # two labels
    assert not compare_answers("kitchen", "the hallway", "Where is Mary?", locs)
    assert not compare_answers("kitchen", "<context>kitchen", "Where is Mary?", locs)  # cut at <context>
    assert not compare_answers("kitchen", "<example> kitchen", "Where is Mary?", locs)
    # labels in the question are dropped: qa3 asks "before the garden", the garden is never the answer
    q = "Where was the apple before the garden?"
    assert compare_answers("office", "It was in the office, then the garden", q, locs)
    assert not compare_answers("garden", "the garden", q, locs)
    # qa5 labels are capitalised in the label set, matched case-insensitively
    assert compare_answers("Fred", "fred gave it", "Who gave the apple to Jeff?", TASK_LABELS["qa5"])
    # qa8-style set targets: exactly the set
    objs = ("apple", "football", "milk", "nothing")
    assert compare_answers("apple,milk", "milk and apple", "What is Mary carrying?", objs)
    assert not compare_answers("apple,milk", "milk", "What is Mary carrying?", objs)
    assert not compare_answers("apple,milk", "milk, apple and football", "What is Mary carrying?", objs)


def test_accuracy_arithmetic():
    acc, se, n = binomial_accuracy([True, False, False, True, True])
    assert (acc, n) == (60.0, 5)
    assert math.isclose(se, 100 * math.sqrt(0.6 * 0.4 / 5))
    mean, mse, total = mean_of_accuracies([(50.0, 3.0, 10), (70.0, 4.0, 10)])
    assert (mean, total) == (60.0, 20)
    assert math.isclose(mse, 2.5)  # sqrt(9 + 16) / 2
    with pytest.raises(ValueError):
        binomial_accuracy([])
