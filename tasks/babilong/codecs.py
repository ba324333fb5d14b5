"""Text <-> token ids for BABILong (`--task-arg tokenizer=...`).

- `words` / `phrases` (words.py): one id per bAbI word, for models trained from scratch (the default);
- `bytes`: UTF-8 bytes, vocabulary 256;
- `gpt2`: GPT-2 BPE from the data folder's tokenizer files (the benchmark's length unit);
- `hf:<repo-id-or-folder>[@revision]`: a Hugging Face tokenizer (`AutoTokenizer`), which `--model hf:...` sets to
  the model's own. Its prompts start with the special tokens the tokenizer adds itself (a Llama BOS), or, where the
  tokenizer has a chat template, go in as one user message with the generation prompt after it, as the
  benchmark's evaluation scripts do for instruction-tuned models.

Every codec has `encode(text)`, `decode(ids)`, `encode_prompt(text)` (encode plus what starts a prompt),
`vocab_size`, `pad_id` and `name` (recorded in the run record); HFCodec adds `stop_ids` (end of a generated answer).
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import DataError, HarnessError
from harness.hf_source import hf_load_kwargs, split_hf_source
from tasks.babilong.words import WordCodec


class ByteCodec:
    name, vocab_size, pad_id = "bytes (UTF-8, vocab 256)", 256, ord("\n")

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_prompt(self, text: str) -> list[int]:
        return self.encode(text)

    def decode(self, ids) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class GPT2Codec:
    def __init__(self, folder: Path):
        from tasks.babilong.builder import GPT2Counter

        self.counter = GPT2Counter(folder)
        self.name, self.vocab_size, self.pad_id = f"gpt2 ({folder})", 50257, 50256

    def encode(self, text):
        return self.counter.encode(text)

    def encode_prompt(self, text):
        return self.encode(text)

    def decode(self, ids):
        return self.counter.decode(ids)


class HFCodec:
    """A Hugging Face tokenizer behind the codec interface."""

    def __init__(self, spec: str):
        from transformers import AutoTokenizer

        source, revision = split_hf_source(spec)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **hf_load_kwargs(source, revision))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot load the tokenizer of {spec!r}: {str(exc).strip().splitlines()[0]}") from exc
        tok = self.tokenizer
        self.vocab_size = len(tok)
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        self.stop_ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()  # generation ends there
        self.chat = bool(getattr(tok, "chat_template", None))
        # the special tokens the tokenizer puts before a text by itself (e.g. Llama's BOS), found by comparing
        self.prefix = self._own_prefix()
        self.name = (f"hf {spec} ({type(tok).__name__}, vocab {self.vocab_size}"
                     + (", chat template" if self.chat else "") + ")")

    def _own_prefix(self) -> list[int]:
        probe = "Mary went to the kitchen."
        plain = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(probe)["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return list(full[:start])
        return []

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, text: str) -> list[int]:
        if self.chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
            return self.encode(text)  # the template writes its own special tokens as text
        return self.prefix + self.encode(text)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def make_codec(tokenizer: str, files, tokenizer_dir):
    """The codec for the task's `tokenizer` option (files: the builder files found in the data folder, or None)."""
    if tokenizer == "bytes":
        return ByteCodec()
    if tokenizer == "gpt2":
        folder = Path(tokenizer_dir) if tokenizer_dir else (files[2] if files else None)
        if folder is None:
            raise DataError("tokenizer=gpt2 needs the GPT-2 files (encoder.json + vocab.bpe): give "
                            "--data-dir with tokenizers/gpt2 or --task-arg tokenizer_dir=DIR")
        return GPT2Codec(folder)
    if tokenizer in ("words", "phrases"):
        return WordCodec(phrases=tokenizer == "phrases")
    if tokenizer.startswith("hf:") and len(tokenizer) > 3:
        return HFCodec(tokenizer[3:])
    raise HarnessError(f"BABILong tokenizer {tokenizer!r} is not one of bytes, gpt2, words, phrases, "
                       f"hf:<repo-id-or-folder>")
