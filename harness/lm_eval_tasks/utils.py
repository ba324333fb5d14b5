"""Offline lm-eval tasks over local data: `wikitext2_local` and `wikitext103_local`.

They are lm-eval's own `wikitext` task (tasks/wikitext/wikitext.yaml: loglikelihood_rolling over whole articles,
word_perplexity / byte_perplexity / bits_per_byte, words and bytes counted on the original article, the model
reading `wikitext_detokenizer(article)`; both functions are lm-eval's own, imported below) with the dataset
`EleutherAI/wikitext_document_level` replaced by the WikiText files found the way `harness eval --task wikitext2`
finds them (`tasks.wikitext.find_local`: --data-dir, its wikitext-2/ or wikitext-103/ subfolders, $HARNESS_DATA_DIR,
the cache), cut into articles at the ` = Title = ` lines (`tasks.wikitext.split_pages`, the rule the document-level
dataset uses). Only the validation and test splits are read. The folder is given by `harness lm-eval --data-dir DIR`,
$HARNESS_DATA_DIR or lm-eval's `--metadata '{"data_dir": "DIR"}'`. Nothing is downloaded.
"""

from __future__ import annotations

import sys
import warnings

from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer  # noqa: F401

from harness.data import data_dirs
from harness.errors import DataError
from tasks.wikitext import WikiText2Task, WikiText103Task, _file_names, find_local, split_pages

HF_SPLITS = {"valid": "validation", "test": "test"}


def _load(task: type, name: str, data_dir=None, **_metadata):
    import datasets

    local = find_local(data_dir or None, task.subfolders)
    if local is None:
        searched = [str(d) for d in data_dirs(data_dir or None)]
        first, *others = _file_names("test")
        raise DataError(f"{name}: the test file {first} (or {', '.join(others)}) was not found in "
                        f"{', '.join(searched)} or their {'/, '.join(task.subfolders)}/ subfolders; pass "
                        f"--data-dir DIR (or set HARNESS_DATA_DIR)")
    _, files = local
    splits = {}
    for split, hf_split in HF_SPLITS.items():
        pages = split_pages(files[split].read_text(encoding="utf-8")) if split in files else []
        splits[hf_split] = datasets.Dataset.from_dict({"page": pages})
    if any("<unk>" in p for p in splits["test"]["page"]) or files["test"].suffix == ".tokens":
        warnings.warn(f"{name}: {files['test']} is the tokenized WikiText (with <unk>); lm-eval's wikitext reads the "
                      "raw files, so these perplexities are not comparable with published lm-eval numbers",
                      stacklevel=2)
    print(f"[{name}] {files['test']}: {len(splits['test'])} test articles", file=sys.stderr)
    return datasets.DatasetDict(splits)


def load_wikitext2(data_dir=None, **metadata):
    return _load(WikiText2Task, "wikitext2_local", data_dir, **metadata)


def load_wikitext103(data_dir=None, **metadata):
    return _load(WikiText103Task, "wikitext103_local", data_dir, **metadata)
