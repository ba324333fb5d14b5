"""The lm-eval bridge: HarnessLM's three request types against direct references, lm-eval runs offline on local
custom tasks, and our wikitext scores against lm-eval's wikitext-style rolling log-likelihood."""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import pytest
import torch

from harness.adapter import build_model
from harness.errors import HarnessError
from harness.lm_eval_bridge import HarnessLM, main
try:  # `python -m pytest` puts the repo root on sys.path; plain `pytest` puts tests/ there
    from tests.test_wikitext import SHARED, ToyGRU, needs_wt2, reference_logprob, write_articles
except ImportError:
    from test_wikitext import SHARED, ToyGRU, needs_wt2, reference_logprob, write_articles

DOCS = [
    {"text": "The cat sat on the mat. It was a sunny day.", "question": "Q: 2+2 =", "choices": [" 4", " 5", " 22"],
     "label": 0, "answer": "4"},
    {"text": "Another short document, about dogs and cats.", "question": "Q: the sky is",
     "choices": [" blue", " green"], "label": 1, "answer": "blue"},
]



@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """No network: the HF offline switches, in the environment and in the already-imported libraries."""
    import datasets
    import huggingface_hub

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "harness-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf-datasets"))


def request(kind, *args):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


SMALL = {"depth": "1", "dim": "32", "heads": "2"}


def runner_checkpoint(out: Path, **kw) -> tuple[str, dict]:
    """(path, record) of a checkpoint written by the runner itself after 2 training steps: what `harness
    lm-eval --model_args checkpoint=results/checkpoints/RUN.pt` is given."""
    from harness.runner import RunConfig, run

    cfg = {"model": "transformer-pp", "task": "bytes", "steps": 2, "batch_size": 2, "seq_len": 32,
           "limit": 256, "eval_every": 0, "model_args": SMALL, "output_path": str(out), "progress": False,
           "update_leaderboard": False, **kw}
    record, _ = run(RunConfig(**cfg))
    return record["checkpoint"], record


def trained_model(path):
    """The checkpoint's model rebuilt by hand: the reference the bridge's model is compared with."""
    ckpt = torch.load(path, weights_only=True)
    model = build_model(ckpt["model_name"], ckpt["preset"], ckpt["vocab_size"], ckpt["overrides"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def write_task(folder: Path, name: str, body: str, data_file: Path) -> None:
    head = f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data_file}\ntest_split: test\n"
    (folder / f"{name}.yaml").write_text(head + textwrap.dedent(body))


def run_lm_eval(model, folder: Path, tasks, model_args=None):
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, task_manager=manager,
                                   bootstrap_iters=0, log_samples=True)


# -- the three request types, on a recurrent model, against a single full-sequence call ------------------------

@pytest.fixture
def gru_lm():
    torch.manual_seed(0)
    return HarnessLM(model=ToyGRU().double(), max_length=4, batch_size=2)  # segments of 4: several per text


def test_loglikelihood_equals_full_sequence_reference(gru_lm):
    model = gru_lm.model
    pairs = [("Q: 2+2 = ", "4"), ("", "hello world"), ("abc", "defghij")]
    got = gru_lm.loglikelihood([request("loglikelihood", c, x) for c, x in pairs], disable_tqdm=True)
    for (context, cont), (logprob, greedy) in zip(pairs, got):
        stripped = context.rstrip()  # lm-eval moves the context's trailing spaces to the continuation
        ctx = list(stripped.encode()) if stripped else [10]
        full = ctx + list((context[len(stripped):] + cont).encode())
        want = reference_logprob(model, full) - (reference_logprob(model, ctx) if len(ctx) > 1 else 0.0)
        assert logprob == pytest.approx(want, rel=1e-10)
        logits, _ = model(torch.tensor([full[:-1]]))
        argmax = logits[0, len(ctx) - 1:].argmax(-1).tolist()
        assert greedy == (argmax == full[len(ctx):])


def test_loglikelihood_rolling_carries_state_through_the_document(gru_lm):
    text = "A whole document, read with the state carried from its first byte to its last."
    (got,) = gru_lm.loglikelihood_rolling([request("loglikelihood_rolling", text)], disable_tqdm=True)
    assert got == pytest.approx(reference_logprob(gru_lm.model, [10, *text.encode()]), rel=1e-10)
    other_prefix = HarnessLM(model=gru_lm.model, max_length=4, prefix_token=0)
    (got0,) = other_prefix.loglikelihood_rolling([request("loglikelihood_rolling", text)], disable_tqdm=True)
    assert got0 == pytest.approx(reference_logprob(gru_lm.model, [0, *text.encode()]), rel=1e-10)


def test_generate_until_is_greedy_and_stops(gru_lm):
    model, context = gru_lm.model, "The cat"
    ids = list(context.encode())
    for _ in range(12):  # reference: full recompute, argmax, no state
        logits, _ = model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    want = bytes(ids[len(context.encode()):]).decode("utf-8", errors="replace")
    (got,) = gru_lm.generate_until([request("generate_until", context, {"until": [], "max_gen_toks": 12})],
                                   disable_tqdm=True)
    assert got == want
    stop = want[3:5]
    (cut,) = gru_lm.generate_until([request("generate_until", context, {"until": [stop], "max_gen_toks": 12})],
                                   disable_tqdm=True)
    assert cut == want[:want.index(stop)]
    with pytest.raises(HarnessError):
        gru_lm.generate_until([request("generate_until", context, {"do_sample": True, "temperature": 0.7})])


def test_window_model_loglikelihood_truncates_like_hflm():
    torch.manual_seed(0)
    model = build_model("transformer-pp", "tiny", 256).double()
    lm = HarnessLM(model=model, max_length=8)
    (logprob, _), = lm.loglikelihood([request("loglikelihood", "a long context here", " end")], disable_tqdm=True)
    full = list(b"a long context here end")
    assert logprob == pytest.approx(reference_logprob(model, full[-9:]) - reference_logprob(model, full[-9:-4]),
                                    rel=1e-10)


# -- construction from model_args and checkpoints ----------------------------------------------------------------

def test_checkpoint_round_trip_and_bad_arguments(tmp_path, small_text):
    path, record = runner_checkpoint(tmp_path, data_file=str(small_text), seq_len=48)
    model = trained_model(path)
    lm = HarnessLM.create_from_arg_string(f"checkpoint={path}")
    assert lm.max_length == 48 == record["training"]["seq_len"]  # the training context, not the preset's 128
    assert lm.tok.kind == "bytes" and lm.tok.vocab_size == 256
    assert all(torch.equal(a, b) for a, b in zip(lm.model.state_dict().values(), model.state_dict().values()))
    fresh = HarnessLM.create_from_arg_string("name=tpp,preset=tiny,cfg.depth=1")
    assert fresh.max_length == 128 and fresh.model.config.depth == 1  # the tiny preset's seq_len
    for bad in (f"name=titans-nope,checkpoint={path}", f"checkpoint={tmp_path / 'missing.pt'}", "name=tpp,colour=red",
                f"name=gated-deltanet,checkpoint={path}",
                "preset=tiny", "name=tpp,dtype=float8", "name=tpp,max_length=99999"):
        with pytest.raises(HarnessError):
            HarnessLM.create_from_arg_string(bad)


def test_a_tokenizer_other_than_the_checkpoints_is_refused(tmp_path):
    """Same vocabulary size is not the same tokenizer: a BPE checkpoint scored with bytes, or with another BPE
    of its size, is refused in one line; the same file elsewhere is accepted."""
    import shutil

    from tasks.tokenizer import cached_bpe

    write_articles(tmp_path / "wikitext-2")
    path, _ = runner_checkpoint(tmp_path / "results", task="wikitext2", data_dir=str(tmp_path),
                                task_args={"vocab_size": 300, "train_split": "valid"})
    lm = HarnessLM.create_from_arg_string(f"checkpoint={path}")
    assert lm.tok.kind != "bytes" and lm.tok.vocab_size == 300 and lm.max_length == 32
    saved = torch.load(path, weights_only=True)["tokenizer"]
    copy = shutil.copy(saved, tmp_path / "copy.json")
    assert HarnessLM.create_from_arg_string(f"checkpoint={path},tokenizer={copy}").tok.vocab_size == 300
    other = cached_bpe([f"other text number {i}, about cats and the sea. " * 20 for i in range(50)], 300,
                       tmp_path / "other-bpe")
    for spec in ("bytes", other.path):
        with pytest.raises(HarnessError, match="trained with") as err:
            HarnessLM.create_from_arg_string(f"checkpoint={path},tokenizer={spec}")
        assert len(str(err.value).splitlines()) == 1


# -- lm-eval end to end, offline ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_simple_evaluate_offline_on_local_custom_tasks(tmp_path, small_text):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    write_task(tmp_path, "toy_rolling", """\
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{text}}"
        metric_list:
          - metric: word_perplexity
          - metric: bits_per_byte
        """, data)
    write_task(tmp_path, "toy_mc", """\
        output_type: multiple_choice
        doc_to_text: "{{question}}"
        doc_to_choice: "{{choices}}"
        doc_to_target: "{{label}}"
        metric_list:
          - metric: acc
        """, data)
    write_task(tmp_path, "toy_gen", """\
        output_type: generate_until
        doc_to_text: "{{question}}"
        doc_to_target: "{{answer}}"
        generation_kwargs:
          until: ["\\n"]
          max_gen_toks: 4
        metric_list:
          - metric: exact_match
        """, data)
    # the tiny preset's own model, trained 2 steps by the runner
    path, _ = runner_checkpoint(tmp_path / "results", data_file=str(small_text), model_args={})
    model = trained_model(path)
    out = run_lm_eval("harness", tmp_path, ["toy_rolling", "toy_mc", "toy_gen"], f"checkpoint={path},max_length=64")
    res = out["results"]
    # each document fits one window of 64 bytes, so lm-eval's rolling score is one full-sequence call
    lls = [reference_logprob(model.double(), [10, *d["text"].encode()]) for d in DOCS]
    words = sum(len(re.split(r"\s+", d["text"])) for d in DOCS)
    n_bytes = sum(len(d["text"].encode()) for d in DOCS)
    assert res["toy_rolling"]["word_perplexity,none"] == pytest.approx(math.exp(-sum(lls) / words), rel=1e-5)
    assert res["toy_rolling"]["bits_per_byte,none"] == pytest.approx(-sum(lls) / n_bytes / math.log(2), rel=1e-5)
    # multiple choice: the accuracy lm-eval reports is the argmax of our per-choice log-likelihoods
    picks = [max(range(len(s["resps"])), key=lambda i: s["resps"][i][0][0]) for s in out["samples"]["toy_mc"]]
    assert res["toy_mc"]["acc,none"] == pytest.approx(sum(p == d["label"] for p, d in zip(picks, DOCS)) / len(DOCS))
    assert 0.0 <= res["toy_gen"]["exact_match,none"] <= 1.0
    assert all(len(s["resps"][0][0]) <= 4 for s in out["samples"]["toy_gen"])  # at most 4 bytes generated


@needs_wt2
@pytest.mark.slow
def test_wikitext_scores_equal_lm_eval_rolling_loglikelihood_through_the_bridge(tmp_path):
    """Same articles, same BPE: our task's metrics == lm-eval's wikitext task (its own detokenizer, word/byte
    counting and aggregation) run through the bridge, for a window model and for a state model."""
    from tasks.wikitext import WikiText2Task, split_pages

    # three short real test articles (the whole test split would take minutes on a shared CPU)
    pages = split_pages((SHARED / "wikitext-2" / "test.txt").read_text(encoding="utf-8"))
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    (folder / "wiki.test.tokens").write_text("\n".join(pages[i] for i in (14, 29, 57)), encoding="utf-8")
    (folder / "wiki.valid.tokens").symlink_to(SHARED / "wikitext-2" / "valid.txt")
    task = WikiText2Task(data_dir=tmp_path, vocab_size=512, train_split="valid")
    assert task.pages["test"] == [pages[i] for i in (14, 29, 57)]
    limit, seq_len = 3, 64
    data = tmp_path / "pages.jsonl"
    data.write_text("".join(json.dumps({"page": p}) + "\n" for p in task.pages["test"][:limit]))
    (tmp_path / "preprocess_wikitext.py").write_text(
        "from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer  # noqa\n")
    write_task(tmp_path, "wikitext_local", """\
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: !function preprocess_wikitext.wikitext_detokenizer
        process_results: !function preprocess_wikitext.process_results
        metric_list:
          - metric: word_perplexity
          - metric: byte_perplexity
          - metric: bits_per_byte
        """, data)
    path, _ = runner_checkpoint(tmp_path / "results", task="wikitext2", data_dir=str(tmp_path), steps=1,
                                model_args={}, task_args={"vocab_size": 512, "train_split": "valid"})
    assert torch.load(path, weights_only=True)["tokenizer"] == str(Path(task.tokenizer_path).resolve())
    window_model = trained_model(path)
    torch.manual_seed(0)
    state_model = ToyGRU(task.vocab_size, 16)
    runs = [(window_model, "harness", f"checkpoint={path},max_length={seq_len},batch_size=8"),
            (state_model, HarnessLM(model=state_model, tokenizer=task.tokenizer_path, max_length=seq_len), None)]
    for model, lm, args in runs:
        ours = task.evaluate(model, device="cpu", seq_len=seq_len, batch_size=8, limit=limit, progress=False)
        theirs = run_lm_eval(lm, tmp_path, ["wikitext_local"], args)["results"]["wikitext_local"]
        for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
            assert theirs[f"{metric},none"] == pytest.approx(ours[metric].value, rel=1e-6), (model.streaming, metric)


@pytest.mark.slow
def test_main_runs_lm_evals_cli_with_the_harness_model_registered(tmp_path, small_text, capsys, monkeypatch):
    import functools

    import lm_eval.tasks

    # indexing lm-eval's thousands of built-in task YAMLs is what makes its CLI slow; only ours are needed here
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(lm_eval.tasks.TaskManager,
                                                                       include_defaults=False))
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    write_task(tmp_path, "toy_cli", """\
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{text}}"
        metric_list:
          - metric: word_perplexity
        """, data)
    path, _ = runner_checkpoint(tmp_path / "results", data_file=str(small_text))
    main(["run", "--model", "harness", "--model_args", f"checkpoint={path},max_length=32",
          "--tasks", "toy_cli",
          "--include_path", str(tmp_path), "--device", "cpu", "--batch_size", "2"])
    table = capsys.readouterr().out
    assert re.search(r"\|toy_cli\s*\|.*\|word_perplexity\|", table), table
