"""BABILong fine-tuning rows: packed samples (`pack_rows`) and extra "Where is <person>?" questions about the same
context (`where_questions`).

Packing: each training row of seq_len + 1 tokens holds whole samples (prompt + answer) one after another. The first
sample's story is capped to what fits a row; every later one is drawn with a story short enough for the room left
(the generator draws a story length up to that cap; fixed bAbI pools redraw until a sample fits), so rows fill up
(~12 % padding at 128 word tokens, where dropping a draw that does not fit left about half of each row empty).
Row b of step s draws samples (s * batch_size + b) * MAX_PACK + k, so rows are a pure function of (seed, step) and a
packed row never repeats another row's samples.

Extra questions:

A BABILong sample asks one question, so a training row gives one answer token of signal per story. Every bAbI
qa1..qa5 story in which people move also answers "Where is <person>?" for each person who moved: their place is the
one named by their last move fact ("Mary went back to the kitchen."; picking up, dropping and giving objects never
moves anyone). `where_questions` reads those facts from the context (bAbI facts keep their exact wording inside
the background text) and returns up to `k` such question/answer pairs, in the order the people first appear,
skipping the person the sample's own question asks about. Training rows append them after the sample's answer
in the benchmark's own frame ("\\nQuestion: Where is John?\\nAnswer: garden."), so the first question of a row is
exactly the evaluation format and the extra ones only add answer positions (`extra_questions=0` turns this off).
Evaluation samples are never changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

MOVE_RE = re.compile(r"\b(Mary|John|Daniel|Sandra|Bill|Fred|Jeff) (?:moved|went|journeyed|travelled)(?: back)? to "
                     r"the (bathroom|bedroom|garden|hallway|kitchen|office)\.")
EXTRA_TEMPLATE = "\nQuestion: Where is {person}?\nAnswer:"
MAX_PACK = 64  # samples at most in one packed training row (a bound on the index space of a row)
MIN_PACK_ROOM = 32  # tokens left in a row below which no further sample is packed (a 2-fact story needs ~30)


def last_places(context: str) -> dict[str, str]:
    """{person: place of their last move fact} in the order people first move."""
    places: dict[str, str] = {}
    for match in MOVE_RE.finditer(context):
        places[match.group(1)] = match.group(2)
    return places


def where_questions(context: str, question: str, k: int) -> list[tuple[str, str]]:
    """Up to k (question frame, answer) pairs "Where is <person>?" answered by the context's move facts, leaving
    out the person the sample's own question names."""
    if k <= 0:
        return []
    asked = set(re.findall(r"\b[A-Z][a-z]+\b", question))
    pairs = [(EXTRA_TEMPLATE.format(person=person), place) for person, place in last_places(context).items()
             if person not in asked]
    return pairs[:k]


Example = tuple[list[int], list[int]]  # (token ids of prompt + answers, positions of the answer tokens)


def fitting_example(draw: Callable[[int], Example], room: int, tries: int) -> tuple[list[int], list[int], int]:
    """(ids, answer positions, draws needed): draw(0), draw(1), ... until one has at most `room` tokens; the last
    draw is returned even if it does not fit."""
    for attempt in range(tries):
        ids, answers = draw(attempt)
        if len(ids) <= room:
            break
    return ids, answers, attempt + 1


def pack_rows(example: Callable[[str, int, int, int, int], tuple[list[int], list[int], int]], tasks: Sequence[str],
              step: int, batch_size: int, seq_len: int, seed: int, *, pad_id: int, story_cap: Callable[[int], int],
              pack: bool, answers_only: bool, stats: dict, extra_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) [batch_size, seq_len] of one step: rows of whole samples, left-padded, the loss on every
    answer's tokens (`answers_only`) or on every token. `example(task, index, seed, room, story_lines)` gives a
    sample of at most `room` tokens when it can; `story_cap(tokens)` the longest story worth drawing for that many
    tokens; `extra_tokens` what the extra questions add to a sample. `stats` counts rows, packed samples, answers, redraws, truncations, tokens and padding."""
    inputs = torch.full((batch_size, seq_len), pad_id, dtype=torch.long)
    targets = torch.full((batch_size, seq_len), -100, dtype=torch.long)
    cap = story_cap(seq_len)
    stats["story_line_cap"] = cap

    def bump(key: str, n: int = 1) -> None:
        stats[key] = stats.get(key, 0) + n
    for b in range(batch_size):
        row_ids: list[int] = []
        answer_at: list[int] = []  # positions in row_ids of answer tokens
        for k in range(MAX_PACK if pack else 1):
            room = seq_len + 1 - len(row_ids)
            if row_ids and room < MIN_PACK_ROOM:
                break  # the row is full
            task = tasks[(step * batch_size + b + k) % len(tasks)]
            index = (step * batch_size + b) * MAX_PACK + k
            # a later sample's story is sized for the room its extra questions leave (fewer redraws)
            lines = cap if not row_ids else min(cap, story_cap(room - 1 - extra_tokens))
            ids, answers, draws = example(task, index, seed, room, lines)
            if row_ids and len(ids) > room:
                break  # no draw fitted the room left: this draw is not used
            bump("rows" if k == 0 else "packed")
            bump("redrawn", int(draws > 1))
            if len(ids) > room:  # no draw fits a row: keep the end (question + answer), lose the start
                cut = len(ids) - room
                ids, answers = ids[cut:], [a - cut for a in answers if a >= cut]
                bump("truncated")
            bump("answers", len(answers))
            if answers_only:
                answer_at += [len(row_ids) + a for a in answers]
            else:
                answer_at += range(len(row_ids) + (0 if row_ids else 1), len(row_ids) + len(ids))
            row_ids += ids
        row = torch.tensor(row_ids, dtype=torch.long)
        offset = seq_len + 1 - len(row_ids)  # left padding
        inputs[b, offset:] = row[:-1]
        for k in answer_at:
            targets[b, offset + k - 1] = row[k]
        bump("tokens", len(row_ids) - 1)
        bump("padding", offset)
    return inputs, targets
