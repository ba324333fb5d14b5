"""Text tokenizers for the tokenised-text tasks and the lm-eval bridge.

Three kinds, one small interface (`encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `eot_id`):
  - ByteTokenizer: UTF-8 bytes, vocabulary 256 (what the byte-level tasks train on). It has no special token;
    its document separator / scoring prefix is the newline byte, so documents joined by it read like the file.
  - A byte-level BPE trained with the `tokenizers` library (GPT-2 style pre-tokenisation, one special token
    `<|endoftext|>` = id 0 that separates documents and conditions the first token of each one), saved as a
    `tokenizer.json`. Training is deterministic in (text, vocab size).
  - Any Hugging Face tokenizer from a local path: a `tokenizer.json` file (tokenizers.Tokenizer.from_file) or a
    folder AutoTokenizer can read (local_files_only=True). Its eos (else bos) token is the separator/prefix.

Texts are encoded without special tokens, as lm-eval's HF model does for causal LMs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.data import atomic_write_bytes, sha256_bytes, sha256_file
from harness.errors import HarnessError

EOT = "<|endoftext|>"
_SPECIAL_CANDIDATES = (EOT, "</s>", "<eos>", "<|end_of_text|>", "<s>", "<bos>")


class ByteTokenizer:
    kind = "bytes"
    vocab_size = 256
    eot_is_special = False
    path = None

    def __init__(self, eot_id: int | None = None):
        self.eot_id = 10 if eot_id is None else int(eot_id)  # "\n": a 256-symbol vocabulary has no special token
        if not 0 <= self.eot_id < 256:
            raise HarnessError(f"prefix_token {eot_id} is not a byte (0..255)")

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def describe(self) -> dict:
        return {"kind": "bytes", "vocab_size": 256, "separator_and_prefix_id": self.eot_id}


class FastTokenizer:
    """A `tokenizers.Tokenizer` (a trained BPE or a tokenizer.json given by path)."""

    def __init__(self, tok, path: str | None, kind: str, eot_id: int | None = None):
        self.tok = tok
        self.path = path
        self.kind = kind
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        if eot_id is None:
            eot_id = next((tok.token_to_id(t) for t in _SPECIAL_CANDIDATES if tok.token_to_id(t) is not None), None)
        if eot_id is None:
            raise HarnessError(f"tokenizer {path} has none of the tokens {', '.join(_SPECIAL_CANDIDATES)} to separate "
                               f"documents; pass prefix_token=ID")
        self.eot_id = int(eot_id)
        self.eot_is_special = True

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def describe(self) -> dict:
        info = {"kind": self.kind, "vocab_size": self.vocab_size, "separator_and_prefix_id": self.eot_id}
        if self.path:
            info.update(path=str(self.path), sha256=sha256_file(self.path) if Path(self.path).is_file() else None)
        return info


class AutoTokenizerWrapper:
    """A transformers tokenizer read from a local folder."""

    kind = "hf"

    def __init__(self, tok, path: str, eot_id: int | None = None):
        self.tok = tok
        self.path = path
        self.vocab_size = len(tok)
        if eot_id is None:
            eot_id = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
        if eot_id is None:
            raise HarnessError(f"tokenizer {path} has no eos or bos token to separate documents; pass prefix_token=ID")
        self.eot_id = int(eot_id)
        self.eot_is_special = True

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.tok(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([int(i) for i in ids])

    def describe(self) -> dict:
        return {"kind": "hf", "path": str(self.path), "class": type(self.tok).__name__, "vocab_size": self.vocab_size,
                "separator_and_prefix_id": self.eot_id}


def load_tokenizer(spec: str | os.PathLike | None, prefix_token: int | None = None):
    """'bytes' (or None) -> ByteTokenizer; a tokenizer.json file or a folder holding one -> FastTokenizer;
    any other folder -> transformers.AutoTokenizer with local_files_only=True."""
    if spec is None or str(spec).lower() in ("bytes", "byte", "none"):
        return ByteTokenizer(prefix_token)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".json":
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise HarnessError(f"cannot read tokenizer file {path}: {exc}") from exc
        return FastTokenizer(tok, str(path), "tokenizer.json", prefix_token)
    if path.is_dir():
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 (transformers raises many kinds)
            if (path / "tokenizer.json").is_file():
                return load_tokenizer(path / "tokenizer.json", prefix_token)
            raise HarnessError(f"cannot load a Hugging Face tokenizer from {path}: {exc}") from exc
        return AutoTokenizerWrapper(tok, str(path), prefix_token)
    raise HarnessError(f"tokenizer {spec!r} not found: give 'bytes', a tokenizer.json file or a local folder with a "
                       f"Hugging Face tokenizer")


def train_bpe(texts: list[str], vocab_size: int, dest: str | os.PathLike) -> FastTokenizer:
    """Train a byte-level BPE on `texts` and save it (atomically) to `dest` as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise HarnessError(f"BPE vocab_size must be at least 258 (256 bytes + {EOT} + one merge), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer=trainer)
    atomic_write_bytes(dest, tok.to_str().encode("utf-8"))
    return FastTokenizer(Tokenizer.from_file(str(dest)), str(dest), "bpe", tok.token_to_id(EOT))


def cached_bpe(texts: list[str], vocab_size: int, cache_folder: str | os.PathLike) -> FastTokenizer:
    """The BPE for (texts, vocab_size), trained once and cached under `cache_folder`, keyed by a hash of the text."""
    key = sha256_bytes(json.dumps([vocab_size, len(texts)]).encode() + "\x00".join(texts).encode("utf-8"))[:16]
    dest = Path(cache_folder) / f"bpe-{vocab_size}-{key}.json"
    if dest.is_file():
        from tokenizers import Tokenizer

        return FastTokenizer(Tokenizer.from_file(str(dest)), str(dest), "bpe")
    return train_bpe(texts, vocab_size, dest)
