"""Shared definitions of the BABILong task: the sample record, length names, label sets and the prompt.

Lengths follow the benchmark's naming: "1k" is a sample of 1,000 GPT-2 tokens (decimal thousands, not 1024), "1M"
is 1,000,000; "0k" is the bare bAbI story with no background text. Any "<n>k" / "<n>M" / "<n>" (tokens) is accepted.
As in the benchmark's generator, 300 tokens of every non-zero length are left for the prompt and question, so the
context itself holds `length - 300` GPT-2 tokens, and stories with more than `(length - 300) // 8` lines
(facts + question) are not used at that length.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.errors import HarnessError

TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
TASK_TITLES = {
    "qa1": "single supporting fact", "qa2": "two supporting facts", "qa3": "three supporting facts",
    "qa4": "two argument relations", "qa5": "three argument relations",
}
BABI_FILE_STEMS = {
    "qa1": "qa1_single-supporting-fact", "qa2": "qa2_two-supporting-facts", "qa3": "qa3_three-supporting-facts",
    "qa4": "qa4_two-arg-relations", "qa5": "qa5_three-arg-relations",
}
STANDARD_LENGTHS = ("0k", "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k")
PROMPT_MARGIN = 300  # tokens the benchmark leaves for the prompt at every non-zero length
FACTS_PER_TOKEN = 8  # the benchmark keeps stories of at most (length - 300) // 8 lines

# The benchmark's answer label sets for qa1..qa5 (`TASK_LABELS` of babilong/metrics.py; the same lists are in
# ../shared/data/babilong/babilong_prompts_and_labels.json, which a test compares with these).
TASK_LABELS = {
    "qa1": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa2": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa3": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa4": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa5": ("Bill", "Fred", "Jeff", "Mary", "apple", "football", "milk"),
}

# What a model sees: the benchmark's user template (context in <context> tags, then the question) without the
# instruction / examples / post-prompt, which is the published "no instruction" setting, plus an answer cue.
PROMPT_TEMPLATE = "<context>\n{context}\n</context>\n\nQuestion: {question}\nAnswer:"
ANSWER_TEMPLATE = " {answer}."  # the continuation a model is trained on and scored by


@dataclass(frozen=True)
class BabilongSample:
    context: str  # bAbI facts scattered through background text ("input" in the HF datasets)
    question: str
    target: str  # the answer, one label word (qa8 would be a comma-separated set)
    task: str  # "qa1" .. "qa5"
    length: str  # length name, e.g. "4k"
    source: str  # "hf", "builder" or "generator"

    @property
    def input(self) -> str:  # the field name the official datasets use
        return self.context

    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(context=self.context, question=self.question)

    def to_dict(self) -> dict:
        return asdict(self)


_LENGTH_RE = re.compile(r"^(\d+)([kKmM]?)$")


def parse_length(name: str | int) -> tuple[str, int]:
    """('4k', 4000) from '4k'; ('1M', 1000000) from '1M'; ('1500', 1500) from '1500' or 1500."""
    text = str(name).strip()
    match = _LENGTH_RE.match(text)
    if not match:
        raise HarnessError(f"BABILong length {name!r} is not understood; use names like 0k, 1k, 4k, 128k, 1M "
                           f"(thousands / millions of GPT-2 tokens) or a plain token count like 1500")
    number, unit = int(match.group(1)), match.group(2).lower()
    scale = {"": 1, "k": 1000, "m": 1_000_000}[unit]
    canonical = f"{number}{'M' if unit == 'm' else unit}"
    return canonical, number * scale


def context_budget(length_tokens: int) -> int:
    """GPT-2 tokens of context (facts + background) for a sample of `length_tokens` (0: the bare story)."""
    return max(0, length_tokens - PROMPT_MARGIN) if length_tokens > 0 else 0


def max_story_lines(length_tokens: int) -> int | None:
    """Longest story (facts + question lines) the benchmark uses at a length; None: no limit (0k)."""
    return context_budget(length_tokens) // FACTS_PER_TOKEN if length_tokens > 0 else None


def parse_list(value, allowed: tuple[str, ...] | None, what: str) -> list[str]:
    """A comma-separated option (or a list) as a list of names; names outside `allowed` are a one-line error."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    if not items:
        raise HarnessError(f"BABILong option {what} is empty")
    twice = sorted({v for v in items if items.count(v) > 1})
    if twice:  # a cell scored twice would overwrite itself
        raise HarnessError(f"BABILong {what} {', '.join(twice)} given more than once; name each once")
    if allowed is not None:
        bad = [v for v in items if v not in allowed]
        if bad:
            raise HarnessError(f"BABILong {what} {', '.join(bad)} not available; choose from {', '.join(allowed)}")
    return items


def load_official_labels(path: str | Path) -> dict[str, tuple[str, ...]]:
    """TASK_LABELS from the extracted babilong_prompts_and_labels.json (all 20 tasks)."""
    data = json.loads(Path(path).read_text())
    return {task: tuple(labels) for task, labels in data["TASK_LABELS"].items()}
