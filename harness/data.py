"""Where data lives, and fetching it: data directories, the download cache, checksums, atomic writes."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import time
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


STALE_TEMP_S = 3600  # a temp file untouched this long, whose writer cannot be checked, is from a dead write


def _temp_prefix(path: Path) -> str:
    """.NAME.tmp-HOST-PID-: names the writer, so that the next write can tell a dead writer's leftover from a
    live one's file in progress."""
    return f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process, alive
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writes of `path` left behind (.NAME.tmp-HOST-PID-XXXX, and the older .NAME.XXXX): a
    file of a dead process on this host, or one untouched for STALE_TEMP_S when its writer cannot be checked.
    A write in progress (a live process, this one included) is left alone. Returns the removed paths."""
    path = Path(path)
    mine = re.compile(rf"^\.{re.escape(path.name)}\.tmp-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+(\.part)?$")
    legacy = re.compile(rf"^\.{re.escape(path.name)}\.[a-z0-9_]{{8}}(\.part)?$")
    host, removed = socket.gethostname(), []
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return removed
    for tmp in candidates:
        found = mine.match(tmp.name)
        if not found and not legacy.match(tmp.name):
            continue
        try:
            if found and found["host"] == host:
                stale = int(found["pid"]) != os.getpid() and not _pid_alive(int(found["pid"]))
            else:
                stale = time.time() - tmp.stat().st_mtime > STALE_TEMP_S
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see a partial file. Temp files
    that killed writes of the same target left behind are removed first (remove_stale_temps)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
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


def download(url: str, dest: str | os.PathLike, timeout: float = 30.0, check=None) -> Path:
    """Fetch `url` to `dest` with a progress bar; the file appears only when complete and, with `check` (called
    with the finished temporary file), only when `check` returns without raising: a rejected download leaves
    nothing behind. Network failures raise DataError naming the URL."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(dest), suffix=".part", dir=dest.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; data files are meant to be shared
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"could not download {url}: {exc}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest

