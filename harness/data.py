"""Where data lives, and fetching it: data directories, the download cache, checksums, atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from harness.errors import DataError


def data_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    """Folders searched for local data files: --data-dir, then $HARNESS_DATA_DIR, then the download cache."""
    dirs = [Path(d) for d in (data_dir, os.environ.get("HARNESS_DATA_DIR")) if d]
    return dirs + [cache_dir()]


def cache_dir() -> Path:
    """Download cache: $HARNESS_CACHE, else $XDG_CACHE_HOME/memory-harness, else ~/.cache/memory-harness."""
    root = os.environ.get("HARNESS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "memory-harness"
    return Path(root)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download(url: str, dest: str | os.PathLike, timeout: float = 30.0) -> Path:
    """Fetch `url` to `dest` with a progress bar; the file appears only when complete. Network failures raise
    DataError naming the URL."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"could not download {url}: {exc}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest

