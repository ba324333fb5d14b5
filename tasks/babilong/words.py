"""A word-level vocabulary for models trained from scratch on BABILong (`--task-arg tokenizer=words`).

Why: bAbI's qa1..qa5 are written with 52 words, so a from-scratch model that sees bytes (5-6 tokens per word) or
GPT-2 BPE (50,257 outputs, almost all unused) spends most of a CPU budget learning spelling. With one token per
bAbI word the 0k stories are ~60-300 tokens and a tiny model learns the task in minutes.

The vocabulary is fixed (it does not depend on the data folder, so checkpoints stay comparable):
- special tokens: padding, newline, the prompt frame's `<context>` / `</context>`;
- every word and punctuation mark of bAbI qa1..qa5 and of the prompt frame ("Question", "Answer", ":");
- every other word (the background text of PG19 books or the generator) goes to one of `HASH_BUCKETS` ids chosen by
  a stable hash of the word (crc32), so background text stays varied text rather than one "unknown" token, and a
  background word that is also a bAbI word ("Mary", "went", "kitchen") is that word, as in the benchmark.

Lengths are still counted in GPT-2 tokens (the benchmark's unit); a 1k sample is ~750-1000 word tokens.
Decoding gives the words back (bucketed words as `<w123>`), joined by single spaces; generation scoring only looks
for the label word in the decoded text, so the spacing does not matter.
"""

from __future__ import annotations

import re
import zlib

SPECIALS = ("<pad>", "\n", "<context>", "</context>")
# bAbI qa1..qa5 (en and en-10k, every file) use exactly these words and marks; the prompt frame adds the last three.
BABI_WORDS = (
    ".", "?", "Bill", "Daniel", "Fred", "Jeff", "John", "Mary", "Sandra", "The", "What", "Where", "Who", "apple",
    "back", "bathroom", "bedroom", "before", "did", "discarded", "down", "dropped", "east", "football", "garden",
    "gave", "give", "got", "grabbed", "hallway", "handed", "is", "journeyed", "kitchen", "left", "milk", "moved",
    "north", "of", "office", "passed", "picked", "put", "received", "south", "the", "there", "to", "took",
    "travelled", "up", "was", "went", "west", "Question", "Answer", ":",
)
HASH_BUCKETS = 1024  # ids shared by every other word, by crc32 of the word
# `tokenizer=phrases`: bAbI's movement phrases as one token each (longest first), so "<person> <move> <place>" puts
# the place two tokens after the person whatever the verb (with single words it is 4 or 5 tokens after)
MOVE_PHRASES = ("went back to the", "journeyed to the", "travelled to the", "moved to the", "went to the")

_TOKEN_RE = re.compile(r"</?context>|\n|[A-Za-z]+|\d+|[^\w\s]")


class WordCodec:
    """Text <-> word ids: `len(SPECIALS) + len(BABI_WORDS)` fixed ids, then HASH_BUCKETS hashed ids."""

    def __init__(self, buckets: int = HASH_BUCKETS, phrases: bool = False):
        self.phrases = MOVE_PHRASES if phrases else ()
        self.fixed = {w: i for i, w in enumerate(SPECIALS + BABI_WORDS + self.phrases)}
        self._token_re = re.compile("|".join([rf"\b{re.escape(p)}\b" for p in self.phrases] + [_TOKEN_RE.pattern]))
        self.buckets = buckets
        self.vocab_size = len(self.fixed) + buckets
        self.pad_id = self.fixed["<pad>"]
        self.name = (f"words ({len(BABI_WORDS)} bAbI words + {len(self.phrases)} movement phrases + {buckets} hashed "
                     f"buckets for other words, vocab {self.vocab_size})")
        self._words = {i: w for w, i in self.fixed.items()}

    def token_id(self, word: str) -> int:
        fixed = self.fixed.get(word)
        if fixed is not None:
            return fixed
        return len(self.fixed) + zlib.crc32(word.encode("utf-8")) % self.buckets

    def encode(self, text: str) -> list[int]:
        return [self.token_id(w) for w in self._token_re.findall(text)]

    def encode_prompt(self, text: str) -> list[int]:
        return self.encode(text)

    def decode(self, ids) -> str:
        return " ".join(self._words.get(int(i), f"<w{int(i) - len(self.fixed)}>") for i in ids)
