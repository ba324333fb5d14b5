"""`--model hf:<folder>`: Hugging Face models behind the adapter, on BABILong with their own tokenizer (offline:
the models are written by save_pretrained in the test, scripts/tiny_hf_model.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from tiny_hf_model import save_tiny_model

from harness.adapter import build_model
from harness.errors import HarnessError, UnknownNameError
from harness.registry import MODELS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "babilong"
SMALL = {"tasks": "qa1", "lengths": "0k,1k", "samples": "4", "long_samples": "2", "curve_samples": "2"}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def mamba(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("mamba2"), "mamba2")


def run_hf(folder, tmp_path, **kw):
    from harness.runner import RunConfig, run

    cfg = RunConfig(model=f"hf:{folder}", task="babilong", output_path=str(tmp_path), progress=False,
                    task_args=dict(SMALL), **kw)
    return run(cfg)


def test_hf_names_resolve_to_the_source_and_typos_still_suggest():
    entry = MODELS.resolve("hf:some/folder")
    assert entry.name == "hf:some/folder" and entry.meta["source"] == "some/folder"
    with pytest.raises(UnknownNameError, match="hf:<source>"):
        MODELS.resolve("titans-macc")
    with pytest.raises(UnknownNameError, match="names no source"):
        MODELS.resolve("hf:")


@pytest.mark.parametrize("kind", ["llama", "mamba2"])
def test_streamed_logits_equal_one_call(kind, llama, mamba):
    """Segment-by-segment scoring through the model's cache (KV for Llama, conv + SSM state for Mamba-2) gives
    the logits of one call, to 1e-4; Llama also past its 256-token window through the token-tail fallback,
    where the logits equal a call on the last window."""
    folder = llama if kind == "llama" else mamba
    model = build_model(f"hf:{folder}", vocab_size=67).eval()
    assert model.streaming == ("window" if kind == "llama" else "state")
    torch.manual_seed(0)
    ids = torch.randint(0, 67, (2, 200))
    with torch.no_grad():
        full, _ = model(ids)
        state, parts = None, []
        for start in range(0, 200, 48):
            logits, _, state = model(ids[:, start:start + 48], state=state)
            parts.append(logits)
        torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)
        if kind == "llama":
            assert "kv" in state
            more = torch.randint(0, 67, (2, 100))
            logits, _, state = model(more, state=state)  # 300 tokens: past the window, no key/value cache
            assert "kv" not in state and state["tokens"].shape[1] == 255
            stream = torch.cat([ids, more], 1)
            last, _ = model(stream[:, -256:])
            torch.testing.assert_close(logits[:, -1], last[:, -1], atol=1e-4, rtol=1e-4)


def test_scoring_a_pretrained_model_with_its_tokenizer_and_the_official_prompt(llama, tmp_path):
    _record, path = run_hf(llama, tmp_path, steps=0)
    stored = json.loads(path.read_text())
    info = stored["task_info"]
    assert stored["model"] == f"hf:{llama}" and stored["model_info"]["config"]["source"] == str(llama)
    assert info["model_tokens"].startswith(f"hf {llama}") and info["prompt"] == "official"
    assert info["scoring"].startswith("generate")
    assert info["evaluation"]["samples_scored"] == {"qa1/0k": 4, "qa1/1k": 2}
    assert stored["metrics"]["acc/qa1/0k"]["n"] == 4


def test_fine_tuning_a_pretrained_model_and_scoring_its_checkpoint(mamba, tmp_path):
    _record, path = run_hf(mamba, tmp_path, steps=3, batch_size=2, eval_every=3, eval_batches=1)
    stored = json.loads(path.read_text())
    assert stored["training"]["steps"] == 3 and stored["training"]["seq_len"] >= 128
    ckpt = Path(stored["checkpoint"])
    assert ckpt.is_file() and "hf-" in ckpt.name
    again, _ = run_hf(mamba, tmp_path / "again", checkpoint=str(ckpt))
    assert again["metrics"]["acc/qa1/0k"] == stored["metrics"]["acc/qa1/0k"]


def test_hf_models_run_only_on_tasks_that_take_their_tokenizer(llama, tmp_path):
    from harness.runner import RunConfig, run

    with pytest.raises(HarnessError, match="tasks for hf: models: babilong"):
        run(RunConfig(model=f"hf:{llama}", task="bytes", output_path=str(tmp_path), progress=False, steps=0))


def test_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(HarnessError, match="cannot load"):
        build_model(f"hf:{tmp_path / 'nothing'}", vocab_size=67)


def test_the_chat_template_frames_the_prompt(tmp_path):
    from tasks.babilong.codecs import HFCodec

    folder = save_tiny_model(tmp_path, "llama", chat=True)
    codec = HFCodec(str(folder))
    ids = codec.encode_prompt("Where is Mary?")
    assert codec.chat and codec.decode(ids).startswith("Where is Mary?") and codec.decode(ids).endswith("Answer :")
    plain = HFCodec(str(save_tiny_model(tmp_path / "plain", "llama")))
    assert plain.prefix == [plain.tokenizer.bos_token_id] and plain.encode_prompt("Mary")[0] == plain.prefix[0]


@pytest.mark.skipif(not (DATA / "babilong_prompts_and_labels.json").is_file(), reason="needs ../shared/data")
def test_official_prompts_are_the_benchmarks():
    from tasks.babilong import prompts

    data = json.loads((DATA / "babilong_prompts_and_labels.json").read_text())
    for name in ("TASK_TEMPLATE", "USER_TEMPLATE", "DEFAULT_TEMPLATE"):
        assert getattr(prompts, name) == data[name]
    for task, parts in prompts.DEFAULT_PROMPTS.items():
        assert parts == data["DEFAULT_PROMPTS"][task]


def test_sources_split_a_revision_and_keep_folders_offline(tmp_path):
    from harness.hf_source import hf_load_kwargs, split_hf_source

    assert split_hf_source("org/name@v1.0") == ("org/name", "v1.0")
    assert split_hf_source("org/name") == ("org/name", None)
    odd = tmp_path / "model@2"  # a folder whose name has an @ is a folder, not a revision
    odd.mkdir()
    assert split_hf_source(str(odd)) == (str(odd), None)
    assert hf_load_kwargs(str(odd), None) == {"local_files_only": True}
    assert hf_load_kwargs("org/name", "v1.0") == {"revision": "v1.0"}
    with pytest.raises(HarnessError, match="should read"):
        split_hf_source("org/name@")
