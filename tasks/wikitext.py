"""WikiText-103 and WikiText-2 language modelling (Merity et al., 2016, "Pointer Sentinel Mixture Models"),
scored the way lm-eval's `wikitext` task scores it.

Data: the Hugging Face dataset `wikitext` (`wikitext-103-raw-v1` / `wikitext-2-raw-v1`) when online, or the
original files `wiki.{train,valid,test}.raw` / `.tokens` (pytorch/examples' `{train,valid,test}.txt` names too)
from --data-dir, --data-dir/wikitext-103 (wikitext-2 for `wikitext2`), $HARNESS_DATA_DIR or the cache.

Documents: a split's text is cut into articles at their level-1 heading lines (` = Title = `) exactly as
`EleutherAI/wikitext_document_level` does (the dataset lm-eval's task reads). As in lm-eval, the text a model
reads and is scored on is the *detokenized* article (`wikitext_detokenizer`: "@-@" -> "-", " , " -> ", ", ...),
while words and bytes are counted on the original article text:
    word_perplexity = exp(sum NLL / sum words),  words = len(re.split(r"\\s+", page))
    byte_perplexity = exp(sum NLL / sum bytes),  bits_per_byte = sum NLL / (ln 2 * sum bytes),  bytes = UTF-8
    token_perplexity = exp(sum NLL / sum tokens)   (tokens of the detokenized article)
Each article is scored as one whole: models with streaming "state" read it in segments of seq_len tokens with
their state carried from the article's first token to its last; other models use lm-eval's rolling windows of
seq_len tokens (`tasks.doc_scoring.rolling_windows`). The first token is conditioned on the tokenizer's separator
token (the BPE's <|endoftext|>; newline for bytes), which is also what separates articles in training.
Standard errors are clustered over articles (tasks.metrics.ratio_with_stderr) and carried through exp by the
delta method: se(exp(x)) = exp(x) * se(x).
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from harness import data_catalog
from harness.data import atomic_write_bytes, cache_dir, data_dirs, sha256_bytes
from harness.errors import DataError, HarnessError
from tasks.base import Metric, StreamTask, reject_unknown_options
from tasks.doc_scoring import rolling_windows, score_items
from tasks.metrics import LN2, ratio_with_stderr
from tasks.tokenizer import cached_bpe, load_tokenizer

SPLITS = ("train", "valid", "test")
HF_SPLIT_NAMES = data_catalog.WIKITEXT_SPLITS
# sha256 of the published WikiText-2 (v1, tokenized) files, from the dataset catalog (`harness data ls`).
KNOWN_FILES = {f.sha256: f"wikitext-2 {f.path}" for f in data_catalog.get("wikitext-2").files if f.sha256}
DEFAULT_VOCAB = {"tiny": 4096, "small": 16384, "medium": 32768, "large": 32768}


# -- text processing, as lm-eval / EleutherAI/wikitext_document_level do it ----------------------------------------

def split_pages(text: str) -> list[str]:
    """Articles of a WikiText file: a new one starts at every level-1 heading line ` = Title = ` (level-2+ headings
    ` = = Section = = ` do not split). Lines keep their original spacing; pages are the lines joined by newlines.
    Same rule as `EleutherAI/wikitext_document_level` (empty leading pages are dropped, the last page is kept)."""
    pages, current = [], []
    for line in text.split("\n"):
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" ="):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    pages.append("\n".join(current))
    return pages


def wikitext_detokenizer(string: str) -> str:
    """Undo WikiText's tokenisation (lm-eval `tasks/wikitext/preprocess_wikitext.py`, rule for rule)."""
    # contractions
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    # number separators
    string = string.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    # punctuation
    for mark in (":", ";", ".", "!", "?", ","):
        string = string.replace(f" {mark} ", f"{mark} ")
    # brackets and quotes lose their inner padding
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    # miscellaneous
    string = string.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n").replace("\n ", "\n")
    string = string.replace(" N ", " 1 ")
    string = string.replace(" 's", "'s")
    return string


def count_words(page: str) -> int:
    """lm-eval's word count: on the original page, before detokenization."""
    return len(re.split(r"\s+", page))


# -- finding the data -----------------------------------------------------------------------------------------------

def _file_names(split: str) -> tuple[str, ...]:
    return (f"wiki.{split}.raw", f"wiki.{split}.tokens", f"{split}.txt")


def find_local(data_dir, subfolders: tuple[str, ...]) -> tuple[Path, dict[str, Path]] | None:
    """The first folder (each searched dir, then its known subfolders) holding a test split; its split files."""
    for base in data_dirs(data_dir):
        for folder in (base, *(base / s for s in subfolders)):
            if not folder.is_dir():
                continue
            found = {}
            for split in SPLITS:
                for name in _file_names(split):
                    if (folder / name).is_file():
                        found[split] = folder / name
                        break
            if "test" in found:
                return folder, found
    return None


# Each split's text rebuilt from the line-per-row HF dataset (its empty rows are the files' ' ' lines); the same
# function writes the files of `harness data fetch wikitext-2-raw` etc.
load_hf = data_catalog.wikitext_hf_texts


# -- the task ---------------------------------------------------------------------------------------------------------

class WikiTextTask(StreamTask):
    primary_metric = "word_perplexity"
    hf_config = ""
    subfolders: tuple[str, ...] = ()

    def __init__(self, data_dir=None, source: str = "auto", train_split: str = "auto", tokenizer: str = "bpe",
                 vocab_size: int | None = None, preset: str | None = None, detokenize: bool = True,
                 prefix_token: int | None = None, data_file=None, **unknown):
        reject_unknown_options(self.name, unknown, ("data_dir", "source", "train_split", "tokenizer",
                                                    "vocab_size", "detokenize", "prefix_token"))
        if source not in ("auto", "local", "hf"):
            raise HarnessError(f"{self.name}: source={source!r}; accepted: auto, local, hf")
        if train_split not in ("auto", "train", "valid"):
            raise HarnessError(f"{self.name}: train_split={train_split!r}; accepted: auto, train, valid")
        self.detokenize = _as_bool(detokenize, "detokenize")
        self.info: dict = {}
        self.notes: list[str] = []
        texts = self._load_texts(data_dir, source)
        self.train_split = self._choose_train_split(texts, train_split)
        self.pages = {split: split_pages(text) for split, text in texts.items()}
        self.docs = {split: [self._model_text(p) for p in pages] for split, pages in self.pages.items()}
        self.tokenizer = self._make_tokenizer(tokenizer, vocab_size, preset, prefix_token)
        self.vocab_size = self.tokenizer.vocab_size
        self.tokenizer_path = self.tokenizer.path  # for the runner's checkpoint ("tokenizer" key)
        self.doc_tokens = {split: self.tokenizer.encode_batch(self.docs[split]) for split in ("valid", "test")}
        self.streams = {"train": self._stream(self.train_split), "valid": self._stream("valid")}
        self.last_scoring: dict = {}

    # -- data --------------------------------------------------------------------------------------------------
    def _load_texts(self, data_dir, source: str) -> dict[str, str]:
        local = find_local(data_dir, self.subfolders) if source != "hf" else None
        if local is not None:
            folder, files = local
            texts = {}
            for split, path in files.items():
                raw = path.read_bytes()
                digest = sha256_bytes(raw)
                known = KNOWN_FILES.get(digest)
                if known and not known.startswith(self.name.replace("wikitext", "wikitext-")):
                    raise DataError(f"{path} is the {known} file, not {self.name}; point --data-dir at "
                                    f"{self.name} files or use task wikitext2")
                texts[split] = raw.decode("utf-8")
                self.info.setdefault("files", {})[split] = {"path": str(path), "sha256": digest,
                                                             **({"identified_as": known} if known else {})}
            tokenized = any("<unk>" in t for t in texts.values()) or any(p.suffix == ".tokens" for p in files.values())
            self.info.update(source="local", folder=str(folder),
                             variant="tokenized (v1, with <unk>)" if tokenized else "raw")
            if tokenized:
                self.notes.append("the tokenized WikiText files (with <unk>) were used; lm-eval's wikitext task uses "
                                  "the raw files, so perplexities are not comparable with published lm-eval numbers")
            return texts
        searched = ", ".join(str(d) for d in data_dirs(data_dir))
        where = (f"put wiki.{{train,valid,test}}.raw (or .tokens) in --data-dir or --data-dir/{self.subfolders[0]} "
                 f"(searched {searched}), or run `harness data fetch {self.subfolders[0]}`")
        if source == "local":
            raise DataError(f"{self.name}: no wiki.test.raw / wiki.test.tokens / test.txt found; {where}")
        try:
            texts = load_hf(self.hf_config)
        except DataError as exc:
            reason = "the Hugging Face Hub is offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE)" if str(exc) == "offline" \
                else f"loading wikitext/{self.hf_config} from the Hugging Face Hub failed ({exc})"
            raise DataError(f"{self.name}: no local files and {reason}; {where}") from None
        self.info.update(source="huggingface", dataset=f"wikitext/{self.hf_config}", variant="raw",
                         sha256={s: sha256_bytes(t.encode("utf-8")) for s, t in texts.items()})
        return texts

    def _choose_train_split(self, texts: dict[str, str], wanted: str) -> str:
        if "valid" not in texts:
            raise DataError(f"{self.name}: found a test split but no validation split (wiki.valid.*)")
        if wanted == "train" and "train" not in texts:
            raise DataError(f"{self.name}: train_split=train but no wiki.train.* was found "
                            f"({self.info.get('folder', 'HF')}); add it, or pass train_split=valid to train on the "
                            f"validation split (recorded in the results)")
        if wanted == "valid" or "train" not in texts:
            note = ("TRAINED ON THE VALIDATION SPLIT: " + ("no train split was found, so the model trains on the "
                    "validation articles" if wanted == "auto" else "train_split=valid was asked for") +
                    "; the test split stays held out but validation losses are not held-out numbers")
            self.notes.append(note)
            if wanted == "auto":
                warnings.warn(f"{self.name}: {note}", stacklevel=3)
                print(f"[{self.name}] NOTE: {note}", file=sys.stderr)
            return "valid"
        return "train"

    def _model_text(self, page: str) -> str:
        return wikitext_detokenizer(page) if self.detokenize else page

    def _make_tokenizer(self, spec: str, vocab_size, preset, prefix_token):
        if str(spec).lower() != "bpe":
            if vocab_size is not None:
                raise HarnessError(f"{self.name}: vocab_size applies to the default BPE only; the tokenizer "
                                   f"{spec!r} fixes its own vocabulary")
            return load_tokenizer(spec, prefix_token)
        if prefix_token is not None:
            raise HarnessError(f"{self.name}: prefix_token applies to tokenizer=bytes or a tokenizer path; the default "
                               f"BPE always uses its <|endoftext|> token")
        size = int(vocab_size) if vocab_size is not None else DEFAULT_VOCAB.get(str(preset), DEFAULT_VOCAB["tiny"])
        folder = cache_dir() / "wikitext-tokenizers"
        tok = cached_bpe(self.docs[self.train_split], size, folder)
        self.info["tokenizer_trained_on"] = f"{self.train_split} split ({'detokenized' if self.detokenize else 'as is'})"
        return tok

    def _stream(self, split: str) -> np.ndarray:
        """The split's articles, each followed by the separator token, as one token array (cached on disk)."""
        docs = self.docs[split]
        key = sha256_bytes(("\x00".join(docs) + repr(self.tokenizer.describe())).encode("utf-8"))[:20]
        path = cache_dir() / "wikitext-tokens" / f"{self.name}-{split}-{key}.npy"
        if path.is_file():
            return np.load(path)
        eot, parts = self.tokenizer.eot_id, []
        for start in range(0, len(docs), 1024):  # chunks: WikiText-103's train split is ~120M tokens
            tokens = self.doc_tokens[split][start:start + 1024] if split in self.doc_tokens else \
                self.tokenizer.encode_batch(docs[start:start + 1024])
            parts.append(np.fromiter((t for doc in tokens for t in (*doc, eot)), dtype=np.int32))
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        if split == "train" and len(flat) > 5_000_000:  # only big splits are worth a cache file
            import io
            buf = io.BytesIO()
            np.save(buf, flat)
            atomic_write_bytes(path, buf.getvalue())
        return flat

    # -- batches ---------------------------------------------------------------------------------------------------
    def token_stream(self, split: str):
        return self.streams[split], f"{self.name}: the {split} stream"

    # -- scoring ---------------------------------------------------------------------------------------------------
    def document_logprobs(self, model, *, device, seq_len: int, batch_size: int, limit: int | None = None,
                          split: str = "test", progress: bool = False) -> tuple[list[float], str]:
        """Log-likelihood (nats) of each of the first `limit` articles, and the scoring mode used."""
        docs = self.doc_tokens[split][:limit] if limit is not None else self.doc_tokens[split]
        eot = self.tokenizer.eot_id
        if model.vocab_size < self.vocab_size:
            raise HarnessError(f"the model's vocabulary ({model.vocab_size}) is smaller than the tokenizer's "
                               f"({self.vocab_size})")
        stream = getattr(model, "streaming", "none") == "state"
        if stream:
            items, owner = [([eot, *d], len(d)) for d in docs if d], [i for i, d in enumerate(docs) if d]
            mode = f"state carried through each article in segments of {seq_len} tokens"
        else:
            max_ctx = getattr(model, "max_context", None)
            if max_ctx is not None and seq_len > max_ctx:
                raise HarnessError(f"seq_len {seq_len} exceeds the model's context of {max_ctx} tokens")
            items, owner = [], []
            for i, d in enumerate(docs):
                windows = rolling_windows(d, eot, seq_len)
                items += windows
                owner += [i] * len(windows)
            mode = f"lm-eval rolling windows of {seq_len} tokens (context_len=1)"
        scored = score_items(model, items, stream=stream, seq_len=seq_len, batch_size=batch_size, device=device,
                             progress=progress, desc=f"scoring {self.name} {split}")
        logprobs = [0.0] * len(docs)
        for i, res in zip(owner, scored):
            logprobs[i] += res["logprob"]
        return logprobs, mode

    def evaluate(self, model, *, device, seq_len, batch_size, limit=None, progress=True):
        if limit is not None and int(limit) < 1:
            raise HarnessError(f"{self.name}: limit counts articles and must be >= 1, got {limit}")
        logprobs, mode = self.document_logprobs(model, device=device, seq_len=seq_len, batch_size=batch_size,
                                                limit=limit, progress=progress)
        n_docs = len(logprobs)
        pages = self.pages["test"][:n_docs]
        nll = [-lp for lp in logprobs]
        tokens = [len(d) for d in self.doc_tokens["test"][:n_docs]]
        words = [count_words(p) for p in pages]
        n_bytes = [len(p.encode("utf-8")) for p in pages]
        self.last_scoring = {"mode": mode, "documents": n_docs, "of_documents": len(self.pages["test"]),
                             "seq_len": seq_len, "streaming": getattr(model, "streaming", "none")}
        return compute_metrics(nll, tokens, words, n_bytes)

    def describe(self):
        return {
            "name": self.name,
            **self.info,
            "train_split": self.train_split,
            "notes": list(self.notes),
            "documents": {s: len(p) for s, p in self.pages.items()},
            "stream_tokens": {s: int(len(a)) for s, a in self.streams.items()},
            "tokenizer": self.tokenizer.describe(),
            "detokenize": self.detokenize,
            "scoring": {"documents_as": "EleutherAI/wikitext_document_level articles", "text_scored":
                        "wikitext_detokenizer(page)" if self.detokenize else "page as is",
                        "words_and_bytes_counted_on": "the original page (as lm-eval)",
                        "limit_counts": "articles", **self.last_scoring},
        }


def compute_metrics(nll, tokens, words, n_bytes) -> dict[str, Metric]:
    """Corpus metrics from per-article NLL sums (nats) and unit counts, with article-clustered stderrs."""
    if sum(tokens) == 0:
        raise DataError("nothing was scored (no tokens)")
    out = {}
    for name, units in (("token_perplexity", tokens), ("word_perplexity", words), ("byte_perplexity", n_bytes)):
        rate, se = ratio_with_stderr(nll, units)
        value = math.exp(rate)
        out[name] = Metric(value, None if se is None else value * se, int(sum(units)))
    rate, se = ratio_with_stderr(nll, n_bytes)
    out["bits_per_byte"] = Metric(rate / LN2, None if se is None else se / LN2, int(sum(n_bytes)))
    return out


def _as_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise HarnessError(f"{name}={value!r}; accepted: true or false")


class WikiText103Task(WikiTextTask):
    name = "wikitext103"
    hf_config = data_catalog.get("wikitext-103-raw").hub_configs[0]
    subfolders = (*data_catalog.folders("wikitext-103-raw"), *data_catalog.folders("wikitext-103"))


class WikiText2Task(WikiTextTask):
    name = "wikitext2"
    hf_config = data_catalog.get("wikitext-2-raw").hub_configs[0]
    subfolders = (*data_catalog.folders("wikitext-2-raw"), *data_catalog.folders("wikitext-2"))


def build_wikitext103(**options) -> WikiText103Task:
    return WikiText103Task(**options)


def build_wikitext2(**options) -> WikiText2Task:
    return WikiText2Task(**options)
