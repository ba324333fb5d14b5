"""The offline lm-eval tasks shipped in harness/lm_eval_tasks (`harness lm-eval --data-dir DIR --tasks
wikitext2_local`): lm-eval's `wikitext` task over the local WikiText files, run through the bridge on a checkpoint
written by `harness eval`, with every network call refused."""

from __future__ import annotations

import ast
import functools
import json
import math
import re
from pathlib import Path

import pytest

from harness.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WT2_TEST = SHARED / "wikitext-2" / "test.txt"
needs_wt2 = pytest.mark.skipif(not WT2_TEST.is_file(), reason=f"{WT2_TEST} (shared WikiText-2 files) is absent")


@pytest.fixture
def offline_env(monkeypatch, tmp_path_factory, no_network):
    """conftest's socket guard, with the HF offline switches off (online as far as the environment says) and no
    cache or $HARNESS_DATA_DIR that could stand in for the local files; returns the guard's list of calls."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HARNESS_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("HARNESS_CACHE", str(base / "harness-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(base / "hf-datasets"))
    return no_network


@pytest.fixture
def only_local_tasks(monkeypatch):
    """lm-eval's CLI without its thousands of built-in task YAMLs (indexing them is what makes it slow): what is
    left is what the bridge adds, harness/lm_eval_tasks."""
    import lm_eval.tasks

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(lm_eval.tasks.TaskManager,
                                                                       include_defaults=False))


def harness_eval_checkpoint(tmp_path: Path, text: Path) -> str:
    """A checkpoint written by `harness eval --steps 2` (bytes, a small Transformer++)."""
    out = tmp_path / "results"
    main(["eval", "--model", "tpp", "--task", "bytes", "--data-file", str(text), "--steps", "2", "--batch-size", "2",
          "--seq-len", "32", "--model-arg", "depth=1", "--model-arg", "dim=32", "--model-arg", "heads=2",
          "--output_path", str(out), "--no-progress", "--no-leaderboard"])
    (path,) = (out / "checkpoints").glob("*.pt")
    return str(path)


@needs_wt2
@pytest.mark.slow
def test_wikitext2_local_runs_offline_and_reproduces_lm_evals_wikitext(tmp_path, small_text, offline_env,
                                                                       only_local_tasks):
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    from harness.lm_eval_bridge import HarnessLM
    from tasks.wikitext import WikiText2Task, count_words, split_pages

    checkpoint = harness_eval_checkpoint(tmp_path, small_text)
    limit, seq_len = 3, 64
    main(["lm-eval", "--model", "harness", "--model_args", f"checkpoint={checkpoint},max_length={seq_len}",  # README's
          "--data-dir", str(SHARED), "--tasks", "wikitext2_local", "--limit", str(limit), "--device", "cpu",
          "--batch_size", "8", "--output_path", str(tmp_path / "lm-eval"), "--log_samples"])
    assert offline_env == []
    (results_file,) = (tmp_path / "lm-eval").rglob("results_*.json")
    (samples_file,) = (tmp_path / "lm-eval").rglob("samples_wikitext2_local_*.jsonl")
    res = json.loads(results_file.read_text())["results"]["wikitext2_local"]
    metrics = {m: res[f"{m},none"] for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")}
    assert all(math.isfinite(v) and v > 0 for v in metrics.values()), metrics

    # the documents are the test file's articles (EleutherAI/wikitext_document_level's split), and the text scored
    # is lm-eval's own detokenizer of each
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    pages = split_pages(WT2_TEST.read_text(encoding="utf-8"))[:limit]
    docs = [s["doc"] if isinstance(s["doc"], dict) else ast.literal_eval(s["doc"]) for s in samples]  # str in 0.4.13
    assert [d["page"] for d in docs] == pages
    assert [s["target"] for s in samples] == [wikitext_detokenizer({"page": p}) for p in pages]

    # lm-eval's wikitext formulas from the same per-article log-likelihoods: words and bytes of the original page
    lls = [float(s["resps"][0][0]) for s in samples]
    words = [len(re.split(r"\s+", p)) for p in pages]
    n_bytes = [len(p.encode("utf-8")) for p in pages]
    assert metrics["word_perplexity"] == pytest.approx(math.exp(-sum(lls) / sum(words)), rel=1e-9)
    assert metrics["byte_perplexity"] == pytest.approx(math.exp(-sum(lls) / sum(n_bytes)), rel=1e-9)
    assert metrics["bits_per_byte"] == pytest.approx(-sum(lls) / sum(n_bytes) / math.log(2), rel=1e-9)

    # and the harness' own `--task wikitext2` scoring of the same articles with the same model gives the same numbers
    lm = HarnessLM.create_from_arg_string(f"checkpoint={checkpoint},max_length={seq_len}")
    task = WikiText2Task(data_dir=SHARED, tokenizer="bytes", train_split="valid")
    assert [count_words(p) for p in task.pages["test"][:limit]] == words
    ours = task.evaluate(lm.model, device="cpu", seq_len=seq_len, batch_size=8, limit=limit, progress=False)
    for name, value in metrics.items():
        assert value == pytest.approx(ours[name].value, rel=1e-5), name
    print(f"wikitext2_local, {limit} articles, {sum(words)} words: " +
          ", ".join(f"{k} {v:.6g}" for k, v in metrics.items()))


@needs_wt2
def test_wikitext103_local_reads_its_file_or_names_the_missing_one(tmp_path, small_text, offline_env,
                                                                    only_local_tasks, capsys):
    from harness.lm_eval_bridge import task_manager
    from harness.lm_eval_tasks.utils import load_wikitext2, load_wikitext103

    assert {"wikitext2_local", "wikitext103_local"} <= set(task_manager(include_defaults=False).all_tasks)
    checkpoint = harness_eval_checkpoint(tmp_path, small_text)
    with pytest.raises(SystemExit) as code:
        main(["lm-eval", "--model", "harness", "--model_args", f"checkpoint={checkpoint}", "--data-dir",
              str(tmp_path), "--tasks", "wikitext103_local", "--limit", "1", "--device", "cpu"])
    assert code.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: wikitext103_local: the test file wiki.test.raw") and "--data-dir" in error, error
    # WikiText-103's validation and test articles are WikiText-2's: the same file in a wikitext-103/ folder
    (tmp_path / "wikitext-103").mkdir()
    (tmp_path / "wikitext-103" / "wiki.test.tokens").symlink_to(WT2_TEST)
    wt103 = load_wikitext103(data_dir=str(tmp_path))
    assert wt103["test"]["page"] == load_wikitext2(data_dir=str(SHARED))["test"]["page"]
    assert len(wt103["test"]) == 62 and len(wt103["validation"]) == 0
    assert offline_env == []
