"""WikiText tasks: article splitting, detokenizer, data sources, batches, and the scoring arithmetic."""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.adapter import LMAdapter
from harness.errors import DataError, HarnessError
from tasks import wikitext as wt
from tasks.doc_scoring import rolling_windows, score_items

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WT2 = SHARED / "wikitext-2"
needs_wt2 = pytest.mark.skipif(not (WT2 / "test.txt").is_file(), reason=f"{WT2} (shared WikiText-2 files) is absent")
LM_EVAL_PREPROCESS = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks" / "wikitext" / "preprocess_wikitext.py"


def lm_eval_preprocess():
    """lm-eval's own wikitext preprocessing module, loaded from its file (importing lm_eval.tasks is slow)."""
    spec = importlib.util.spec_from_file_location("lm_eval_preprocess_wikitext", LM_EVAL_PREPROCESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class ToyConfig:
    vocab_size: int = 256  # vocabulary
    dim: int = 8  # GRU width


class ToyGRU(LMAdapter):
    """A tiny recurrent LM: its state (the GRU hidden vector) really carries information across segments."""

    streaming = "state"

    def __init__(self, vocab_size=256, dim=8):
        super().__init__(ToyConfig(vocab_size, dim))
        self.emb = nn.Embedding(vocab_size, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, vocab_size)

    def forward_with_state(self, input_ids, state):
        h, new_state = self.rnn(self.emb(input_ids), state)
        return self.out(h), h.new_zeros(()), new_state


class FixedUnigram(LMAdapter):
    """Ignores its input: every position predicts softmax(logits), a fixed, known distribution."""

    streaming = "window"

    def __init__(self, logits: torch.Tensor):
        super().__init__(ToyConfig(len(logits), 1))
        self.register_buffer("logits", logits.double())

    def forward_with_state(self, input_ids, state):
        b, t = input_ids.shape
        return self.logits.expand(b, t, -1), self.logits.new_zeros(()), None



@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Tokenizers and token caches go to a per-session temporary folder, never the user's cache."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "harness-cache"))
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)


# -- text processing ------------------------------------------------------------------------------------------------

TOY_FILE = " \n = A = \n \n x , y \n = = Sub = = \n w \n = B = \n \n z \n"


def test_split_pages_on_level1_headings_only():
    pages = wt.split_pages(TOY_FILE)
    assert pages == [" = A = \n \n x , y \n = = Sub = = \n w ", " = B = \n \n z \n"]


@needs_wt2
def test_split_pages_real_files_match_document_level_counts():
    # EleutherAI/wikitext_document_level (the dataset lm-eval reads) has 62 test and 60 validation articles.
    for name, count in (("test.txt", 62), ("valid.txt", 60)):
        text = (WT2 / name).read_text(encoding="utf-8")
        pages = wt.split_pages(text)
        assert len(pages) == count
        assert pages[0].startswith(" = ") and "\n".join(pages) == text[len(" \n"):]  # only the leading blank dropped
        assert all(re.match(r"^ = [^=].* = $", p.split("\n")[0]) for p in pages)


@needs_wt2
def test_detokenizer_and_counts_equal_lm_evals_on_every_article():
    ref = lm_eval_preprocess()
    for name in ("test.txt", "valid.txt"):
        for page in wt.split_pages((WT2 / name).read_text(encoding="utf-8")):
            assert wt.wikitext_detokenizer(page) == ref.wikitext_detokenizer({"page": page})
            (_, words), (_, n_bytes), _ = ref.process_results({"page": page}, [0.0]).values()
            assert wt.count_words(page) == words and len(page.encode()) == n_bytes


def test_rolling_windows_equal_lm_evals():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    g = torch.Generator().manual_seed(0)
    for n in range(0, 30):
        tokens = torch.randint(0, 50, (n,), generator=g).tolist()
        for max_len in (1, 2, 3, 7):
            ref = [(a + b, len(b)) for a, b in map(make_disjoint_window, get_rolling_token_windows(tokens, 99, max_len, 1))]
            assert rolling_windows(tokens, 99, max_len) == ref


# -- data sources ---------------------------------------------------------------------------------------------------

def write_split_files(folder: Path, splits=("valid", "test"), text=TOY_FILE):
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        (folder / f"wiki.{split}.tokens").write_text(text, encoding="utf-8")


def write_articles(folder: Path, counts=(("valid", 8), ("test", 3))) -> Path:
    """Small made-up WikiText files (articles of 6 lines of 40 words), for cheap end-to-end runs."""
    import random

    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "models", "read"]
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in counts:
        lines = [[" " + " ".join(rng.choice(words) for _ in range(40)) + " . \n" for _ in range(6)]
                 for _ in range(n)]
        articles = [f" = Article {i} = \n\n" + "".join(body) for i, body in enumerate(lines)]
        (folder / f"wiki.{split}.tokens").write_text("".join(articles), encoding="utf-8")
    return folder


def test_the_run_record_carries_what_evaluation_found(tmp_path):
    """describe() is recorded as of after evaluate(): the scoring mode and the articles scored."""
    import json

    from harness.runner import RunConfig, run

    write_articles(tmp_path / "wikitext-2")
    record, path = run(RunConfig(
        model="transformer-pp", task="wikitext2", steps=1, batch_size=2, seq_len=32, limit=2, eval_every=0,
        data_dir=str(tmp_path), task_args={"vocab_size": 300, "train_split": "valid"},
        model_args={"depth": "1", "dim": "32", "heads": "2"}, output_path=str(tmp_path / "results"),
        progress=False, update_leaderboard=False))
    scoring = json.loads(path.read_text())["task_info"]["scoring"]
    assert scoring["mode"] == "lm-eval rolling windows of 32 tokens (context_len=1)"
    assert scoring["documents"] == 2 and scoring["of_documents"] == 3 and scoring["seq_len"] == 32
    assert record["task_info"]["documents"] == {"valid": 8, "test": 3}  # the early describe() is kept too


def test_missing_train_split_trains_on_valid_loudly_or_refuses(tmp_path, capsys):
    write_split_files(tmp_path / "wikitext-2")
    with pytest.warns(UserWarning, match="TRAINED ON THE VALIDATION SPLIT"):
        task = wt.WikiText2Task(data_dir=tmp_path, tokenizer="bytes")
    assert task.train_split == "valid" and "NOTE" in capsys.readouterr().err
    assert any("TRAINED ON THE VALIDATION SPLIT" in n for n in task.describe()["notes"])
    with pytest.raises(DataError, match="train_split=valid"):
        wt.WikiText2Task(data_dir=tmp_path, tokenizer="bytes", train_split="train")
    explicit = wt.WikiText2Task(data_dir=tmp_path, tokenizer="bytes", train_split="valid")
    assert any("train_split=valid was asked for" in n for n in explicit.describe()["notes"])


def test_train_split_used_when_present(tmp_path):
    write_split_files(tmp_path, ("train", "valid", "test"))
    task = wt.WikiText103Task(data_dir=tmp_path, tokenizer="bytes")
    assert task.train_split == "train" and not any("VALIDATION" in n for n in task.describe()["notes"])


def test_offline_without_files_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        wt.WikiText103Task(data_dir=tmp_path / "empty", tokenizer="bytes")
    message = str(err.value)
    assert "\n" not in message and "offline" in message and "--data-dir/wikitext-103-raw" in message


@needs_wt2
def test_wikitext2_files_are_refused_as_wikitext103(tmp_path):
    (tmp_path / "wikitext-103").mkdir()
    for name in ("test.txt", "valid.txt"):
        (tmp_path / "wikitext-103" / name).write_bytes((WT2 / name).read_bytes())
    with pytest.raises(DataError, match="not wikitext103"):
        wt.WikiText103Task(data_dir=tmp_path, tokenizer="bytes")


@needs_wt2
def test_hf_rows_rebuild_the_original_file(monkeypatch):
    """The HF `wikitext` dataset has one row per line, blank lines as ''; load_hf must rebuild the file exactly."""
    import datasets

    text = (WT2 / "valid.txt").read_text(encoding="utf-8")
    rows = [line if line.strip() else "" for line in text.splitlines(keepends=True)]
    calls = []

    def fake_load_dataset(name, config, cache_dir=None):
        calls.append((name, config))
        return {split: {"text": rows} for split in ("train", "validation", "test")}

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    texts = wt.load_hf("wikitext-2-raw-v1")
    assert texts["valid"] == text and calls == [("Salesforce/wikitext", "wikitext-2-raw-v1")]


def test_bad_options_are_one_line_errors(tmp_path):
    write_split_files(tmp_path, ("train", "valid", "test"))
    for options in ({"source": "web"}, {"train_split": "test"}, {"detokenize": "maybe"},
                    {"tokenizer": "bytes", "vocab_size": 100}):
        with pytest.raises(HarnessError):
            wt.WikiText2Task(data_dir=tmp_path, **options)


# -- batches --------------------------------------------------------------------------------------------------------

def test_batches_are_deterministic_shifted_windows_of_the_article_stream(tmp_path):
    write_split_files(tmp_path, ("train", "valid", "test"), TOY_FILE * 20)
    task = wt.WikiText2Task(data_dir=tmp_path, tokenizer="bytes")
    x, y = task.train_batch(3, 4, 16, seed=7)
    x2, y2 = task.train_batch(3, 4, 16, seed=7)
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(x[:, 1:], y[:, :-1])
    assert not torch.equal(x, task.train_batch(4, 4, 16, seed=7)[0])
    assert torch.equal(task.val_batch(0, 2, 16)[0], task.val_batch(0, 2, 16)[0])
    # the stream is the detokenized articles, each followed by the separator (newline for bytes)
    expected = "".join(wt.wikitext_detokenizer(p) + "\n" for p in wt.split_pages(TOY_FILE * 20))
    assert bytes(task.streams["train"].astype("uint8").tolist()).decode() == expected


# -- scoring arithmetic ---------------------------------------------------------------------------------------------

def toy_task(tmp_path):
    write_split_files(tmp_path, ("train", "valid", "test"), " \n = A = \n \n x , y \n = B = \n \n z \n")
    return wt.WikiText2Task(data_dir=tmp_path, tokenizer="bytes")


def test_metrics_hand_checked_with_a_uniform_model(tmp_path):
    task = toy_task(tmp_path)
    # By hand: articles " = A = \n \n x , y " (17 bytes; words by re.split: '', =, A, =, x, ',', y, '' -> 8) and
    # " = B = \n \n z \n" (14 bytes; 6 words). Detokenized: " = A =\n\nx, y " (13 tokens), " = B =\n\nz\n" (10).
    assert [wt.wikitext_detokenizer(p) for p in task.pages["test"]] == [" = A =\n\nx, y ", " = B =\n\nz\n"]
    m = task.evaluate(FixedUnigram(torch.zeros(256)), device="cpu", seq_len=4, batch_size=3, progress=False)
    c = math.log(256)  # NLL of every token under the uniform model; total 23c
    assert m["token_perplexity"].value == pytest.approx(256, rel=1e-12) and m["token_perplexity"].n == 23
    assert m["token_perplexity"].stderr == pytest.approx(0, abs=1e-9)  # every article has the same NLL per token
    # word: R = 23c/14; residuals 13c - 8R = -2c/14, 10c - 6R = +2c/14; se = sqrt(2 * 8c^2/196) / 14 = c/49
    assert m["word_perplexity"].value == pytest.approx(256 ** (23 / 14), rel=1e-12) and m["word_perplexity"].n == 14
    assert m["word_perplexity"].stderr == pytest.approx(256 ** (23 / 14) * c / 49, rel=1e-12)
    # bytes: R = 23c/31; residuals +-12c/31; se(R) = sqrt(2 * 288c^2/961) / 31 = 24c/961; in bits: 8 * 24/961
    assert m["bits_per_byte"].value == pytest.approx(184 / 31, rel=1e-12) and m["bits_per_byte"].n == 31
    assert m["bits_per_byte"].stderr == pytest.approx(192 / 961, rel=1e-12)
    assert m["byte_perplexity"].value == pytest.approx(2 ** (184 / 31), rel=1e-12)
    assert m["byte_perplexity"].stderr == pytest.approx(2 ** (184 / 31) * 24 * c / 961, rel=1e-12)
    assert task.primary_metric == "word_perplexity"


def test_metrics_with_a_known_non_uniform_distribution(tmp_path):
    task = toy_task(tmp_path)
    logits = torch.zeros(256, dtype=torch.float64)
    logits[ord(" ")] = math.log(3.0)  # p(space) = 3/258, every other byte 1/258
    m = task.evaluate(FixedUnigram(logits), device="cpu", seq_len=5, batch_size=2, limit=1, progress=False)
    # article A detokenized " = A =\n\nx, y ": 5 spaces, 8 other bytes; limit=1 scores only it (8 words, 17 bytes)
    nll = 5 * math.log(258 / 3) + 8 * math.log(258)
    assert m["token_perplexity"].value == pytest.approx(math.exp(nll / 13), rel=1e-12)
    assert m["word_perplexity"].value == pytest.approx(math.exp(nll / 8), rel=1e-12)
    assert m["bits_per_byte"].value == pytest.approx(nll / 17 / math.log(2), rel=1e-12)
    assert m["word_perplexity"].stderr is None  # one article: no clustered stderr
    assert task.describe()["scoring"]["documents"] == 1


@torch.no_grad()
def reference_logprob(model, tokens):
    """One full-sequence call, no segments: sum of log p(tokens[i+1] | tokens[:i+1])."""
    ids = torch.tensor([tokens])
    logits, _ = model(ids[:, :-1])
    return float(torch.log_softmax(logits.double(), -1)[0].gather(-1, ids[0, 1:, None]).sum())


def test_state_models_carry_state_through_the_article(tmp_path):
    write_split_files(tmp_path, ("train", "valid", "test"), TOY_FILE * 3)
    task = wt.WikiText2Task(data_dir=tmp_path, tokenizer="bytes")
    torch.manual_seed(0)
    model = ToyGRU().double()
    got, mode = task.document_logprobs(model, device="cpu", seq_len=7, batch_size=2)
    assert mode.startswith("state carried")
    want = [reference_logprob(model, [task.tokenizer.eot_id, *d]) for d in task.doc_tokens["test"]]
    assert got == pytest.approx(want, rel=1e-10)
    # restarting the state at every segment would give a different number: the test can tell
    cut = [sum(reference_logprob(model, ([task.tokenizer.eot_id, *d])[s:s + 8]) for s in range(0, len(d), 7))
           for d in task.doc_tokens["test"]]
    assert abs(sum(cut) - sum(want)) > 1e-3
    again, _ = task.document_logprobs(model, device="cpu", seq_len=50, batch_size=1)
    assert again == pytest.approx(want, rel=1e-10)


def test_right_padding_does_not_change_scores():
    torch.manual_seed(1)
    model = ToyGRU().double()
    items = [([1, 2, 3, 4, 5, 6, 7], 6), ([9, 8, 7], 1), ([5, 5], 1)]
    for stream in (True, False):
        batched = score_items(model, items, stream=stream, seq_len=6 if not stream else 4, batch_size=3)
        single = score_items(model, items, stream=stream, seq_len=6 if not stream else 4, batch_size=1)
        assert [r["logprob"] for r in batched] == pytest.approx([r["logprob"] for r in single], rel=1e-12)
    full = reference_logprob(model, items[0][0])
    assert score_items(model, items[:1], stream=True, seq_len=2, batch_size=1)[0]["logprob"] == pytest.approx(full)


# -- tokenizers -----------------------------------------------------------------------------------------------------

def test_bpe_is_trained_deterministically_cached_and_reloadable(tmp_path):
    from tasks.tokenizer import cached_bpe, load_tokenizer, train_bpe

    texts = [wt.wikitext_detokenizer(p) for p in wt.split_pages(TOY_FILE * 3)] + ["the cat sat on the mat " * 5]
    a = train_bpe(texts, 300, tmp_path / "a.json")
    train_bpe(texts, 300, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert a.eot_id == 0 and a.vocab_size <= 300
    sample = "the cat sat, z = 3"
    assert a.decode(a.encode(sample)) == sample
    cached = cached_bpe(texts, 300, tmp_path / "cache")
    assert cached_bpe(texts, 300, tmp_path / "cache").path == cached.path
    assert load_tokenizer(cached.path).encode(sample) == a.encode(sample)
    # the same tokenizer as a Hugging Face folder, read with AutoTokenizer(local_files_only=True)
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "a.json"), eos_token="<|endoftext|>").save_pretrained(
        tmp_path / "hf")
    hf = load_tokenizer(tmp_path / "hf")
    assert hf.encode(sample) == a.encode(sample) and hf.eot_id == 0
    with pytest.raises(HarnessError):
        load_tokenizer(tmp_path / "missing")


@needs_wt2
@pytest.mark.slow
def test_real_wikitext2_bpe_task_end_to_end(tmp_path):
    task = wt.WikiText2Task(data_dir=SHARED, vocab_size=512, train_split="valid")
    info = task.describe()
    assert info["variant"].startswith("tokenized") and info["documents"] == {"valid": 60, "test": 62}
    assert info["tokenizer"]["kind"] == "bpe" and task.vocab_size == 512 and task.tokenizer_path
    assert info["files"]["test"]["identified_as"] == "wikitext-2 wiki.test.tokens"
    torch.manual_seed(0)
    m = task.evaluate(ToyGRU(512), device="cpu", seq_len=64, batch_size=2, limit=2, progress=False)
    assert set(m) == {"token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"}
    assert all(math.isfinite(v.value) and v.stderr is not None and v.stderr > 0 for v in m.values())
    # an untrained model is close to uniform over 512 tokens
    assert 300 < m["token_perplexity"].value < 900
