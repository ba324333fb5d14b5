"""Extra supervision for BABILong fine-tuning rows: more "Where is <person>?" questions about the same context.

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

MOVE_RE = re.compile(r"\b(Mary|John|Daniel|Sandra|Bill|Fred|Jeff) (?:moved|went|journeyed|travelled)(?: back)? to "
                     r"the (bathroom|bedroom|garden|hallway|kitchen|office)\.")
EXTRA_TEMPLATE = "\nQuestion: Where is {person}?\nAnswer:"


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
