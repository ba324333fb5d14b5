"""Byte-level language modelling: `enwik8` (the Hutter-prize file, standard 90M/5M/5M split) and `bytes` (the
same task on any local text, split 90/5/5 by bytes). Vocabulary 256; the metric is bits per byte on the test
split, scored in consecutive windows of the training context length where every byte but the first is predicted
exactly once, with the byte before each window as its first input."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness import data_catalog
from harness.data import data_dirs, sha256_bytes
from harness.errors import DataError
from tasks.base import Metric, StreamTask, reject_unknown_options
from tasks.metrics import LN2, ratio_with_stderr

# The source, size, sha256 and accepted names live in the dataset catalog (`harness data ls`).
ENWIK8 = data_catalog.get("enwik8")
ENWIK8_FILE = ENWIK8.files[0]
ENWIK8_URL = ENWIK8_FILE.urls[0]
ENWIK8_SIZE = ENWIK8_FILE.size
ENWIK8_SHA256 = ENWIK8_FILE.sha256
ENWIK8_SPLIT = (90_000_000, 5_000_000, 5_000_000)  # train, valid, test, in file order
ENWIK8_NAMES = ENWIK8_FILE.names


def read_enwik8_file(path: Path) -> bytes:
    """The raw bytes of enwik8 from the plain file, a .gz or the original .zip."""
    try:
        return data_catalog.read_data(path, zip_member=ENWIK8_FILE.zip_member)
    except DataError as exc:
        raise DataError(f"cannot read enwik8 from {path}: {exc.__cause__ or exc}") from exc


def verify_enwik8(data: bytes, origin: str, size: int = ENWIK8_SIZE, sha256: str = ENWIK8_SHA256) -> None:
    data_catalog.check_bytes(data, size, sha256, origin, "enwik8", ENWIK8_URL)


def load_enwik8(data_dir: str | os.PathLike | None = None, url: str = ENWIK8_URL, size: int = ENWIK8_SIZE,
                sha256: str = ENWIK8_SHA256, allow_download: bool = True) -> tuple[bytes, dict]:
    """Find enwik8 (plain, .gz or .zip) in --data-dir, $HARNESS_DATA_DIR or the cache; otherwise download the
    original zip (data_catalog: checked before it is kept) into $HARNESS_DATA_DIR or the cache. The bytes are
    checked against the known size and sha256 before use."""
    searched = data_dirs(data_dir)
    for folder in searched:
        path = data_catalog.present(ENWIK8_FILE, folder)
        if path is not None:
            data = read_enwik8_file(path)
            verify_enwik8(data, str(path), size, sha256)
            return data, {"path": str(path), "downloaded": False}
    if not allow_download:
        raise DataError(f"enwik8 not found in {', '.join(map(str, searched))}; put enwik8, enwik8.gz or enwik8.zip "
                        f"in --data-dir (or $HARNESS_DATA_DIR), run `harness data fetch enwik8`, or go online to "
                        f"download {ENWIK8_URL}")
    spec = data_catalog.with_overrides(ENWIK8_FILE, size=size, sha256=sha256)
    try:
        dest = data_catalog.download_file(ENWIK8, spec, data_catalog.fetch_root(), urls=(url,))
    except DataError as exc:
        raise DataError(f"enwik8 not found in {', '.join(map(str, searched))} and the download failed: {exc} "
                        f"(or put enwik8, enwik8.gz or enwik8.zip in --data-dir)") from exc
    return read_enwik8_file(dest), {"path": str(dest), "downloaded": True, "url": url}


def split_enwik8(data: bytes, n_valid: int = ENWIK8_SPLIT[1], n_test: int = ENWIK8_SPLIT[2]):
    """The standard split: all but the last n_valid + n_test bytes train, then valid, then test."""
    n_train = len(data) - n_valid - n_test
    if n_train <= 0:
        raise DataError(f"{len(data):,} bytes are too few for a {n_valid:,}/{n_test:,} valid/test split")
    return data[:n_train], data[n_train:n_train + n_valid], data[n_train + n_valid:]


def read_text_source(path: str | os.PathLike) -> tuple[bytes, list[str]]:
    """A file's bytes, or the concatenated bytes of a folder's *.txt files in name order."""
    path = Path(path)
    if path.is_file():
        return path.read_bytes(), [path.name]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
        if not files:
            raise DataError(f"{path} holds no .txt files; --data-file takes a text file or a folder of .txt files")
        return b"".join(p.read_bytes() for p in files), [p.name for p in files]
    raise DataError(f"--data-file {path} does not exist; give a text file or a folder of .txt files")


class ByteLMTask(StreamTask):
    """Shared machinery of the byte-level tasks: batches by (seed, step), windowed BPB scoring."""

    primary_metric = "bpb"
    vocab_size = 256

    def __init__(self, train: bytes, valid: bytes, test: bytes, info: dict):
        self.splits = {name: np.frombuffer(buf, dtype=np.uint8) for name, buf in
                       (("train", train), ("valid", valid), ("test", test))}
        self.info = info

    def token_stream(self, split: str):
        return self.splits[split], f"the {split} split"

    @torch.no_grad()
    def evaluate(self, model, *, device, seq_len, batch_size, limit=None, progress=True):
        data = self.splits["test"]
        if limit is not None:
            data = data[:limit + 1]  # score `limit` bytes (the first byte is context only)
        n_scored = len(data) - 1
        if n_scored < 1:
            raise DataError("the test split is empty")
        tokens = torch.from_numpy(data.astype(np.int64))
        starts = list(range(0, n_scored, seq_len))
        sums, counts = [], []
        model.eval()
        bar = tqdm(total=n_scored, unit="B", unit_scale=True, desc="scoring test", disable=not progress)
        for i in range(0, len(starts), batch_size):
            group = starts[i:i + batch_size]
            full = [s for s in group if s + seq_len <= n_scored]
            batches = ([torch.stack([tokens[s:s + seq_len + 1] for s in full])] if full else []) + \
                      [tokens[s:n_scored + 1].unsqueeze(0) for s in group if s + seq_len > n_scored]
            for x in batches:
                x = x.to(device)
                logits, _ = model(x[:, :-1])
                nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                      reduction="none").view(x.shape[0], -1)
                sums.extend(nll.sum(dim=1).tolist())
                counts.extend([x.shape[1] - 1] * x.shape[0])
                bar.update((x.shape[1] - 1) * x.shape[0])
        bar.close()
        nats, nats_se = ratio_with_stderr(sums, counts)
        if not math.isfinite(nats):
            raise DataError("the test loss is not finite")
        return {
            "bpb": Metric(nats / LN2, None if nats_se is None else nats_se / LN2, n_scored),
            "nll": Metric(nats, nats_se, n_scored),  # nats per byte
        }

    def describe(self):
        return {"name": self.name, "split_bytes": {k: int(len(v)) for k, v in self.splits.items()}, **self.info}


class Enwik8Task(ByteLMTask):
    name = "enwik8"

    def __init__(self, data_dir=None, data_file=None, preset=None, **unknown):
        reject_unknown_options(self.name, unknown, ("data_dir",))
        data, found = load_enwik8(data_dir)
        super().__init__(*split_enwik8(data), {"source": "enwik8", "sha256": ENWIK8_SHA256, **found,
                                               "split": "90M/5M/5M (standard)"})


class BytesTask(ByteLMTask):
    name = "bytes"

    def __init__(self, data_file=None, data_dir=None, preset=None, **unknown):
        reject_unknown_options(self.name, unknown, ("data_file",))
        if data_file is None:
            raise DataError("task 'bytes' needs --data-file PATH (a text file or a folder of .txt files), "
                            "e.g. the folder `harness data fetch pg19` prints")
        data, files = read_text_source(data_file)
        n_valid = n_test = len(data) // 20
        super().__init__(*split_enwik8(data, n_valid, n_test),
                         {"source": str(Path(data_file).resolve()), "files": files, "sha256": sha256_bytes(data),
                          "split": "90/5/5 by bytes", "total_bytes": len(data)})


def build_enwik8(**options) -> Enwik8Task:
    return Enwik8Task(**options)


def build_bytes(**options) -> BytesTask:
    return BytesTask(**options)
