"""A built-in generator of bAbI-style qa1..qa5 samples that needs no files, so the task runs on a fresh offline
machine. Stories are simulated the way the bAbI tasks describe them (Weston et al., 2015, "Towards AI-complete
question answering"), with bAbI's actors, places, objects and verbs:

- qa1 single supporting fact: people move between places; "Where is Mary?" (their last place);
- qa2 two supporting facts: people also pick up and drop objects; "Where is the milk?" (its holder's place or where
  it was dropped);
- qa3 three supporting facts: "Where was the milk before the kitchen?" (the place the object was in before it
  came to its current place);
- qa4 two argument relations: "The office is north of the kitchen." ... "What is north of the kitchen?" /
  "What is the kitchen north of?";
- qa5 three argument relations: people give objects to each other; "What did Fred give to Jeff?", "Who gave the
  milk to Jeff?", "Who did Fred give the milk to?", "Who received the milk?", "Who gave the milk?".

Background text is random plain sentences from a small vocabulary that contains none of the task's answer words
or names. Every word of the generator is a single GPT-2 token when it follows a space, and so are '.', ',' and
'?', so lengths are counted exactly in GPT-2 tokens without the tokenizer files (a test checks this against the
real tokenizer).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from tasks.babilong.babi import BabiStory
from tasks.babilong.builder import MIN_SENTENCE_TOKENS, SampleSource

PLACES = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
PEOPLE = ("Mary", "John", "Daniel", "Sandra")
GIVERS = ("Bill", "Fred", "Jeff", "Mary")  # qa5's actors
OBJECTS = ("apple", "football", "milk")
MOVE_VERBS = ("moved to", "went to", "went back to", "travelled to")
TAKE_VERBS = ("picked up", "got", "grabbed", "took")
DROP_VERBS = ("dropped", "discarded", "put down", "left")
DIRECTIONS = ("north", "south", "east", "west")

# Distractor vocabulary (no answer words, no names).
_DET = ("the", "a", "this", "that", "every", "his", "her", "their", "our")
_DET_START = ("The", "A", "This", "That", "Every", "His", "Her", "Their", "Our")
_ADJ = ("old", "young", "small", "large", "quiet", "long", "short", "dark", "bright", "cold", "warm", "strange",
        "simple", "poor", "rich", "early", "late", "little", "great", "heavy", "gentle", "happy", "sad", "proud",
        "silent", "wide", "broken", "empty")
_NOUN = ("man", "woman", "boy", "girl", "child", "stranger", "farmer", "soldier", "captain", "doctor", "teacher",
         "priest", "king", "queen", "horse", "dog", "bird", "ship", "road", "river", "bridge", "village", "town",
         "city", "church", "house", "window", "door", "letter", "book", "song", "story", "night", "morning",
         "evening", "winter", "summer", "storm", "wind", "rain", "sea", "hill", "forest", "field", "market", "fire",
         "lamp", "table", "chair", "voice", "face", "hand", "heart", "mind", "friend", "enemy", "master", "crowd")
_VERB_INTRANSITIVE = ("walked", "waited", "watched", "looked", "spoke", "listened", "laughed", "smiled", "turned",
                      "stood", "sat", "slept", "worked", "prayed", "sang", "wrote", "read", "answered", "called",
                      "stopped", "rested", "wandered", "returned", "paused", "hurried", "wondered", "whispered")
_VERB_TRANSITIVE = ("saw", "heard", "found", "lost", "followed", "loved", "feared", "knew", "met", "carried",
                    "held", "opened", "closed", "remembered")
_ADV = ("slowly", "quickly", "quietly", "softly", "silently", "suddenly", "gently", "carefully", "again", "alone",
        "together", "often", "never", "always", "once", "far")
_PREP = ("near", "beside", "behind", "across", "along", "under", "over", "through", "beyond", "toward", "around",
         "past", "into", "upon")
_CONJ = ("and", "but", "while", "because", "until", "though", "when", "as")

_WORD_OR_MARK = re.compile(r"\w+|[^\w\s]")


def count_tokens(piece: str) -> int:
    """GPT-2 tokens of a generator piece preceded by a space: one per word and one per punctuation mark."""
    return len(_WORD_OR_MARK.findall(piece))


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _noun_phrase(rng, start: bool = False) -> str:
    det = _pick(rng, _DET_START if start else _DET)
    return f"{det} {_pick(rng, _ADJ)} {_pick(rng, _NOUN)}" if rng.random() < 0.6 else f"{det} {_pick(rng, _NOUN)}"


def _clause(rng, start: bool = False) -> str:
    subject = _noun_phrase(rng, start)
    if rng.random() < 0.5:
        clause = f"{subject} {_pick(rng, _VERB_TRANSITIVE)} {_noun_phrase(rng)}"
    else:
        clause = f"{subject} {_pick(rng, _VERB_INTRANSITIVE)}"
        if rng.random() < 0.5:
            clause += f" {_pick(rng, _ADV)}"
    if rng.random() < 0.5:
        clause += f" {_pick(rng, _PREP)} {_noun_phrase(rng)}"
    return clause


def distractor_sentence(rng: np.random.Generator) -> str:
    sentence = _clause(rng, start=True)
    while rng.random() < 0.4:
        sentence += f"{',' if rng.random() < 0.5 else ''} {_pick(rng, _CONJ)} {_clause(rng)}"
    return sentence + "."


# -- story simulators --------------------------------------------------------------------------------------------

def _move(rng, world: dict, people: Sequence[str]) -> str:
    person = _pick(rng, people)
    place = _pick(rng, [p for p in PLACES if p != world["at"].get(person)])
    world["at"][person] = place
    for obj, holder in world["holder"].items():
        if holder == person:
            _visit(world, obj, place)
    return f"{person} {_pick(rng, MOVE_VERBS)} the {place}."


def _visit(world: dict, obj: str, place: str) -> None:
    trail = world["trail"].setdefault(obj, [])
    if not trail or trail[-1] != place:
        trail.append(place)


def _object_event(rng, world: dict, people: Sequence[str]) -> str | None:
    """Someone whose place is known picks up a free object there, or drops one they hold."""
    holding = [(o, h) for o, h in world["holder"].items() if h is not None]
    if holding and rng.random() < 0.4:
        obj, person = _pick(rng, holding)
        world["holder"][obj] = None
        return f"{person} {_pick(rng, DROP_VERBS)} the {obj}."
    placed = [p for p in people if world["at"].get(p)]
    free = [o for o in OBJECTS if world["holder"].get(o) is None]
    if not placed or not free:
        return None
    person, obj = _pick(rng, placed), _pick(rng, free)
    if world["trail"].get(obj) and world["trail"][obj][-1] != world["at"][person]:
        return None  # a dropped object can only be picked up where it lies
    world["holder"][obj] = person
    _visit(world, obj, world["at"][person])
    return f"{person} {_pick(rng, TAKE_VERBS)} the {obj}{' there' if rng.random() < 0.5 else ''}."


def _where_is_object(world: dict) -> list[tuple[str, str]]:
    out = []
    for obj in OBJECTS:
        holder, trail = world["holder"].get(obj), world["trail"].get(obj)
        if holder is not None and world["at"].get(holder):
            out.append((f"Where is the {obj}?", world["at"][holder]))
        elif holder is None and trail:
            out.append((f"Where is the {obj}?", trail[-1]))
    return out


def _where_was_object(world: dict) -> list[tuple[str, str]]:
    return [(f"Where was the {obj} before the {trail[-1]}?", trail[-2])
            for obj, trail in world["trail"].items() if len(trail) >= 2]


def _simulate(task: str, rng: np.random.Generator, max_facts: int) -> BabiStory:
    """Facts until a question about the story so far can be asked, the way bAbI interleaves them; the story
    stops at a random question (samples of one story are prefixes, as in bAbI)."""
    world = {"at": {}, "holder": {}, "trail": {}}
    facts: list[str] = []
    target_facts = int(rng.integers(2, max(3, max_facts + 1)))
    while True:
        if task == "qa1":
            facts.append(_move(rng, world, PEOPLE))
            candidates = [(f"Where is {p}?", pl) for p, pl in world["at"].items()] if len(facts) >= 2 else []
        else:
            event = _object_event(rng, world, PEOPLE) if rng.random() < 0.45 else None
            facts.append(event or _move(rng, world, PEOPLE))
            candidates = _where_is_object(world) if task == "qa2" else _where_was_object(world)
        if candidates and len(facts) >= target_facts or len(facts) >= max_facts and candidates:
            question, answer = _pick(rng, candidates)
            return BabiStory(tuple(facts), question, answer, ())
        if len(facts) > max_facts + 200:  # rare (e.g. qa3: no object ever changed place): start a new story
            world, facts = {"at": {}, "holder": {}, "trail": {}}, []


def _relations(rng: np.random.Generator) -> BabiStory:
    a, b, c = rng.choice(len(PLACES), size=3, replace=False).tolist()
    d1, d2 = rng.choice(len(DIRECTIONS), size=2, replace=False).tolist()
    x, y, z = PLACES[a], PLACES[b], PLACES[c]
    facts = [f"The {x} is {DIRECTIONS[d1]} of the {y}.", f"The {z} is {DIRECTIONS[d2]} of the {y}."]
    if rng.random() < 0.5:
        facts.reverse()
    which = int(rng.integers(2))
    place, direction = (x, DIRECTIONS[d1]) if which == 0 else (z, DIRECTIONS[d2])
    if rng.random() < 0.5:
        return BabiStory(tuple(facts), f"What is {direction} of the {y}?", place, ())
    return BabiStory(tuple(facts), f"What is the {place} {direction} of?", y, ())


def _giving(rng: np.random.Generator, max_facts: int) -> BabiStory:
    world = {"at": {}, "holder": {}, "trail": {}}
    facts: list[str] = []
    last_give = None
    target_facts = int(rng.integers(3, max(4, max_facts + 1)))
    while True:
        holding = [(o, h) for o, h in world["holder"].items() if h is not None]
        r = rng.random()
        if holding and r < 0.45:
            obj, giver = _pick(rng, holding)
            receiver = _pick(rng, [p for p in GIVERS if p != giver])
            world["holder"][obj] = receiver
            facts.append(f"{giver} gave the {obj} to {receiver}.")
            last_give = (giver, obj, receiver)
        else:
            event = _object_event(rng, world, GIVERS) if r < 0.75 else None
            facts.append(event or _move(rng, world, GIVERS))
        if last_give and (len(facts) >= target_facts or len(facts) >= max_facts):
            giver, obj, receiver = last_give
            question, answer = [
                (f"What did {giver} give to {receiver}?", obj), (f"Who gave the {obj} to {receiver}?", giver),
                (f"Who did {giver} give the {obj} to?", receiver), (f"Who received the {obj}?", receiver),
                (f"Who gave the {obj}?", giver)][int(rng.integers(5))]
            return BabiStory(tuple(facts), question, answer, ())
        if len(facts) > max_facts + 200:  # rare: start a new story
            world, facts, last_give = {"at": {}, "holder": {}, "trail": {}}, [], None


# bAbI-like story sizes: qa1 asks after 2..10 facts, qa2 after up to ~30, qa3 after up to ~60, qa5 after up to ~25.
MAX_FACTS = {"qa1": 10, "qa2": 30, "qa3": 60, "qa4": 2, "qa5": 25}


def generate_story(task: str, rng: np.random.Generator, max_lines: int | None = None) -> BabiStory:
    limit = MAX_FACTS[task] if max_lines is None else max(2, min(MAX_FACTS[task], max_lines - 1))
    if task == "qa4":
        return _relations(rng)
    if task == "qa5":
        return _giving(rng, limit)
    return _simulate(task, rng, limit)


class BabilongGenerator(SampleSource):
    name = "generator"

    def stories(self, task, split):
        return None  # no fixed pool: every sample draws its own story

    def random_story(self, task, split, rng, max_lines):
        return generate_story(task, rng, max_lines)

    def counts(self, pieces):
        return [count_tokens(p) for p in pieces]

    def background(self, budget: int, rng: np.random.Generator, split: str) -> list[str]:
        chosen, total = [], 0
        while total < budget:
            sentence = distractor_sentence(rng)
            n = count_tokens(sentence)
            if n < MIN_SENTENCE_TOKENS:
                continue
            if total + n > budget:  # trim the last sentence to its first (budget - total) tokens
                cut = list(_WORD_OR_MARK.finditer(sentence))[budget - total - 1].end()
                sentence, n = sentence[:cut], budget - total
            chosen.append(sentence)
            total += n
        return chosen

    def describe(self) -> dict:
        return {"source": "generator", "length_tokenizer": "gpt2 (exact: every generator word is one GPT-2 token)",
                "sentence_splitter": "none (the generator writes sentences)",
                "story_max_facts": dict(MAX_FACTS), "notes": []}
