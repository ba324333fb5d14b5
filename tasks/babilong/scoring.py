"""Scoring BABILong answers.

`compare_answers` is the benchmark's rule for a generated answer (restated from its description in
../shared/data/README.md, section 6): lower-case the output, keep what precedes the first '.', and cut it at
'<context>' / '<example>'; find the task's label words that occur in it (substring match, as the benchmark does),
drop those that also occur in the question (a question's own words are never the answer), and count the answer as
correct only if exactly one label remains and it is the target. A target with a comma (qa8, "apple,milk") is a set:
correct iff the remaining labels are exactly that set. Accuracy = 100 * correct / N, in percent like the
published tables; its standard error is the binomial sqrt(p (1 - p) / N) (in percent).

`shortcut_accuracy` is the level a model reaches without reasoning: answer with the label named last in the context
(qa1's "last place mentioned" is right on 41 of the 100 generator 0k samples, far above the 1-in-6 guess), so an
accuracy at that level says the model learned where answers sit, not which fact answers the question.

`choose_label` is the constrained form for small models trained from scratch: the answer is the label whose
continuation has the highest log-likelihood after the prompt (see `streaming.py`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence


def cut_output(output: str) -> str:
    output = output.lower().split(".")[0]
    output = output.split("<context>")[0]
    return output.split("<example>")[0]


def compare_answers(target: str, output: str, question: str, labels: Iterable[str]) -> bool:
    """The benchmark's rule: True iff the only label in the (cut) output that is not in the question is the target."""
    output = cut_output(output)
    labels = {label.lower() for label in labels}
    in_question = {label for label in labels if label in question.lower()}
    predicted = {label for label in labels if label in output} - in_question
    target = target.lower()
    if "," in target:  # qa8: a set of objects
        return predicted == {t.strip() for t in target.split(",")}
    return predicted == {target}


def binomial_accuracy(correct: Sequence[bool]) -> tuple[float, float | None, int]:
    """(accuracy %, its standard error %, n) of a list of per-sample outcomes."""
    n = len(correct)
    if n == 0:
        raise ValueError("no samples were scored")
    p = sum(bool(c) for c in correct) / n
    return 100.0 * p, (100.0 * math.sqrt(p * (1.0 - p) / n) if n > 1 else None), n


def mean_of_accuracies(cells: Sequence[tuple[float, float | None, int]]) -> tuple[float, float | None, int]:
    """Unweighted mean of per-task accuracies (the leaderboard's average), with the stderr of a mean of
    independent estimates: sqrt(sum se_i^2) / k."""
    if not cells:
        raise ValueError("no cells")
    k = len(cells)
    mean = sum(c[0] for c in cells) / k
    ses = [c[1] for c in cells]
    se = None if any(s is None for s in ses) else math.sqrt(sum(s * s for s in ses)) / k
    return mean, se, sum(c[2] for c in cells)


def score_prediction_table(rows: Iterable[tuple[str, str, str]], labels: Iterable[str]) -> float:
    """Accuracy (percent) of (target, output, question) rows under `compare_answers`, as the benchmark computes
    it from its per-sample prediction CSVs."""
    labels = tuple(labels)
    outcomes = [compare_answers(t, o, q, labels) for t, o, q in rows]
    return 100.0 * sum(outcomes) / len(outcomes)


def last_mentioned_label(context: str, question: str, labels: Iterable[str]) -> str | None:
    """The label the context names last, leaving out labels the question names (never an answer, as in
    `compare_answers`); None when the context names none."""
    question_words = set(re.findall(r"[a-z]+", question.lower()))
    pool = {label.lower() for label in labels} - question_words
    for word in reversed(re.findall(r"[a-z]+", context.lower())):
        if word in pool:
            return word
    return None


def shortcut_accuracy(samples: Sequence, labels: Sequence[str]) -> float:
    """Accuracy (%) of answering each sample (.context, .question, .target) with `last_mentioned_label`; a sample
    whose context names no label counts as a uniform guess among the labels."""
    if not samples:
        raise ValueError("no samples")
    total = 0.0
    for sample in samples:
        guess = last_mentioned_label(sample.context, sample.question, labels)
        total += (1.0 / len(labels)) if guess is None else float(guess == sample.target.lower())
    return 100.0 * total / len(samples)
