"""Reading bAbI task files (v1.2 format) into question samples.

A file is a sequence of stories; line ids restart at 1 for each story. A question line is
`ID question<TAB>answer<TAB>supporting ids`. As in the benchmark, every question becomes one sample: the story's
fact lines before it (earlier questions dropped), the question, the answer and the supporting-fact ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import DataError


@dataclass(frozen=True)
class BabiStory:
    facts: tuple[str, ...]  # fact sentences before the question, in order
    question: str
    answer: str
    supporting: tuple[int, ...]  # indices into `facts` of the supporting facts

    @property
    def n_lines(self) -> int:  # facts + question, the unit of the benchmark's max_n_facts filter
        return len(self.facts) + 1


def parse_babi(text: str, origin: str = "bAbI file") -> list[BabiStory]:
    samples: list[BabiStory] = []
    facts: list[tuple[int, str]] = []  # (line id, text) of the current story's facts
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        head, _, rest = line.partition(" ")
        if not head.isdigit():
            raise DataError(f"{origin} line {lineno} does not start with a line id: {line[:60]!r}")
        line_id = int(head)
        if line_id == 1:
            facts = []
        if "\t" in rest:
            parts = rest.split("\t")
            if len(parts) < 3:
                raise DataError(f"{origin} line {lineno}: a question line needs question, answer and support ids")
            question, answer, support = parts[0].strip(), parts[1].strip(), parts[2].split()
            index_of = {lid: i for i, (lid, _) in enumerate(facts)}
            try:
                supporting = tuple(index_of[int(s)] for s in support)
            except (KeyError, ValueError) as exc:
                raise DataError(f"{origin} line {lineno}: supporting id {exc} is not a fact of the story") from exc
            samples.append(BabiStory(tuple(t for _, t in facts), question, answer, supporting))
        else:
            facts.append((line_id, rest.strip()))
    if not samples:
        raise DataError(f"{origin} holds no questions")
    return samples


def read_babi(path: Path) -> list[BabiStory]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read bAbI file {path}: {exc}") from exc
    return parse_babi(text, str(path))
