"""The dataset catalog behind `harness data ls | fetch NAME | verify [NAME]` and the loaders: what each dataset
is, where it comes from (URL or Hugging Face id), which files it has (sha256 and size where known) and where it
lives.

Where data is looked for (every loader, `ls`, `verify`, and the default text of `harness regress` / `harness
bench`): an explicit --data-dir / --data-file, then $HARNESS_DATA_DIR, then the cache ($HARNESS_CACHE, else
$XDG_CACHE_HOME/memory-harness, else ~/.cache/memory-harness; harness.data.data_dirs). `harness data fetch` writes
to its --data-dir when given, else to $HARNESS_DATA_DIR when set, else to the cache. Under every root a dataset
has a fixed folder (`pg19/`, `babi/en-10k/`, `wikitext-2-raw/`, `tokenizers/gpt2/`; enwik8 sits at the root), the
layout of CI's data folder, so that folder, the cache and a user's own folder are interchangeable.

Only `fetch` touches the network (and a loader's download of enwik8 when its file is absent), always because the
user asked for it. A download goes to a temporary file in the target folder, is checked (size and sha256 where
they are known) and only then renamed into place: a failed or rejected download leaves nothing behind.
"""

from __future__ import annotations

import difflib
import gzip
import os
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from harness.data import atomic_write_bytes, cache_dir, data_dirs, download, sha256_bytes, sha256_file
from harness.data_sums import known as known_sums
from harness.errors import DataError, UnknownNameError


@dataclass(frozen=True)
class DataFile:
    path: str  # where fetch writes it, relative to the dataset's folder
    sha256: str | None = None  # of the data itself: a .gz's content, a .zip's `zip_member`; None: not known
    size: int | None = None  # bytes of the data itself; None: not known
    urls: tuple[str, ...] = ()  # direct download, mirrors in order (empty: from the dataset's archive or hub)
    member: str | None = None  # its path inside the dataset's archive
    accept: tuple[str, ...] = ()  # names looked for, in this order (default: `path` alone)
    zip_member: str | None = None  # for a .zip name: the member holding the data

    @property
    def names(self) -> tuple[str, ...]:
        return self.accept or (self.path,)


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    source: str  # for people: where it comes from
    folder: str  # under a data root ("" is the root itself)
    files: tuple[DataFile, ...] = ()
    folders: tuple[str, ...] = ()  # other folder names the loaders accept, after `folder`
    archive: tuple[str, ...] = ()  # URLs (mirrors, in order) of an archive whose members are the files
    hub: tuple[str, ...] = ()  # Hugging Face dataset ids
    hub_configs: tuple[str, ...] = ()  # the configs `fetch` loads
    hub_fetch: Callable | None = None  # (dataset, folder, log) -> where the data went; hub-sourced entries
    manual: str = ""  # how to install it by hand; {folder} is filled in
    size_note: str = ""  # approximate download, for people

    @property
    def hub_only(self) -> bool:
        return not self.files


@dataclass
class Check:
    """One line of `harness data verify`."""
    name: str
    status: str  # ok / missing / mismatch
    path: str
    detail: str


# -- reading and checking data --------------------------------------------------------------------------------------

def read_data(path: str | os.PathLike, name: str | None = None, zip_member: str | None = None) -> bytes:
    """The data in a file: a .gz is gunzipped, a .zip's member read (by `name`'s suffix, else the path's)."""
    path = Path(path)
    suffix = Path(name or path.name).suffix
    try:
        if suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        if suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                return zf.read(zip_member or Path(name or path.name).stem)
        return path.read_bytes()
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _compare(n: int, digest_of: Callable[[], str], size: int | None, sha256: str | None, origin: str, what: str,
             source: str) -> None:
    if size is not None and n != size:
        raise DataError(f"{origin} holds {n:,} bytes, {what} has {size:,}: the file is truncated or not {what}; "
                        f"replace it with the original from {source}")
    if sha256:
        digest = digest_of()
        if digest != sha256:
            raise DataError(f"{origin} has sha256 {digest[:16]}..., {what} has {sha256[:16]}...: the file was "
                            f"altered; replace it with the original from {source}")


def check_bytes(data: bytes, size: int | None, sha256: str | None, origin: str, what: str, source: str) -> None:
    """Raise a one-line DataError when the data's size or sha256 is not the known one (None: not checked)."""
    _compare(len(data), lambda: sha256_bytes(data), size, sha256, origin, what, source)


def check_file(f: DataFile, path: str | os.PathLike, origin: str | None = None, name: str | None = None,
               what: str | None = None, source: str = "its source") -> None:
    """check_bytes on a file's data (`name`, default the path's, says its format); plain files are hashed in
    chunks, not read whole."""
    path = Path(path)
    name = name or path.name
    origin, what = origin or str(path), what or f.path
    if Path(name).suffix in (".gz", ".zip"):
        check_bytes(read_data(path, name, f.zip_member), f.size, f.sha256, origin, what, source)
    else:
        _compare(path.stat().st_size, lambda: sha256_file(path), f.size, f.sha256, origin, what, source)


# -- the catalog ----------------------------------------------------------------------------------------------------

ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"
WIKITEXT_HUB = ("Salesforce/wikitext", "wikitext")  # the second: the id before the move, tried when the first fails
WIKITEXT_SPLITS = {"train": "train", "valid": "validation", "test": "test"}  # file split -> HF split
BABILONG_EVAL = "RMT-team/babilong"
BABILONG_TRAIN = "RMT-team/babilong-train-5k-samples"
BABILONG_LENGTHS = ("0k", "1k", "2k", "4k", "8k")  # the task's default lengths (tasks/babilong/task.py)
BABI_URLS = ("https://dl.fbaipublicfiles.com/babi/tasks_1-20_v1-2.tar.gz",
             "http://www.thespermwhale.com/jaseweston/babi/tasks_1-20_v1-2.tar.gz",  # the page Facebook linked
             "https://s3.amazonaws.com/text-datasets/babi_tasks_1-20_v1-2.tar.gz")  # Keras' mirror
PG19_REPO = "https://raw.githubusercontent.com/tmgondal/Project-Gutenberg/5e7ad504e1fe1797122bd3068875c02458ecd786"
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"
PG19_BOOKS = ("10002", "10046", "10084", "10093", "10132", "10146", "10148", "10226", "10234", "10321", "10342",
              "10355", "10356", "10360", "10363", "10364", "10377", "10418", "10441", "10762")
# sha256 and size of WikiText-2 v1 (tokenized) valid/test, the files of pytorch/examples' word_language_model
WIKITEXT2_TOKENS = {"test": ("d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0", 1_256_449),
                    "valid": ("f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8", 1_121_681)}


def _known(path: str, **kw) -> dict:
    digest, size = known_sums().get(path, (None, None))
    return dict(sha256=digest, size=size, **kw)


def _babi_files() -> tuple[DataFile, ...]:
    names = sorted({p.split("/")[-1] for p in known_sums() if p.startswith("babi/en/")})
    return tuple(DataFile(f"{sub}/{n}", member=f"tasks_1-20_v1-2/{sub}/{n}", **_known(f"babi/{sub}/{n}"))
                 for sub in ("en-10k", "en") for n in names)


def _wikitext_files(kind: str, known: dict | None = None) -> tuple[DataFile, ...]:
    out = []
    for split in WIKITEXT_SPLITS:
        digest, size = (known or {}).get(split, (None, None))
        out.append(DataFile(f"wiki.{split}.{kind}", sha256=digest, size=size,
                            accept=(f"wiki.{split}.{kind}", f"{split}.txt")))
    return tuple(out)


def _fetch_wikitext(ds: Dataset, folder: Path, log) -> Path:
    config = ds.hub_configs[0]
    try:
        texts = wikitext_hf_texts(config)
    except DataError as exc:
        reason = "the Hugging Face Hub is offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE)" if str(exc) == "offline" \
            else f"loading {ds.hub[0]} config {config} from the Hugging Face Hub failed ({exc})"
        raise DataError(f"{ds.name}: {reason}; {manual_hint(ds, folder)}") from None
    blobs = {}
    for f in ds.files:
        split = f.path.split(".")[1]
        blobs[f.path] = texts[split].encode("utf-8")
        check_bytes(blobs[f.path], f.size, f.sha256, f"{f.path} rebuilt from {ds.hub[0]}/{config}", f.path,
                    f"{ds.hub[0]}/{config}")
    for f in ds.files:  # every file checked before any is written
        atomic_write_bytes(folder / f.path, blobs[f.path])
        log(f"{ds.name}: wrote {folder / f.path} ({len(blobs[f.path]):,} bytes)")
    return folder


def _fetch_hub_cache(ds: Dataset, folder: Path, log) -> Path:
    """Load every (dataset, config) once through `datasets`, which caches it where the task's loader reads it."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DataError(f"{ds.name}: the Hugging Face Hub is offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE); "
                        f"{manual_hint(ds, folder)}")
    for repo in ds.hub:
        for config in ds.hub_configs:
            try:
                babilong_hf_rows(repo, config)
            except Exception as exc:  # noqa: BLE001 (network, hub and cache errors come in many kinds)
                first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                raise DataError(f"{ds.name}: could not load {repo} config {config!r} from the Hugging Face Hub "
                                f"({first}); {manual_hint(ds, folder)}") from None
            log(f"{ds.name}: {repo} {config} cached in {hub_cache_path(repo)}")
    return hub_cache_path(ds.hub[0]).parent


def _wikitext_entry(name: str, description: str, config: str, files, size_note: str) -> Dataset:
    """A WikiText release: Hugging Face Salesforce/wikitext `config`, kept in folder `name` (or `config`)."""
    return Dataset(name, description, f"Hugging Face Salesforce/wikitext, config {config}", name, files,
                   folders=(config,), hub=WIKITEXT_HUB, hub_configs=(config,), hub_fetch=_fetch_wikitext,
                   size_note=size_note)


CATALOG: dict[str, Dataset] = {ds.name: ds for ds in (
    Dataset("enwik8", "Hutter-prize enwik8, the first 10^8 bytes of an English Wikipedia dump (task enwik8); "
            "size and sha256 are those of the 100,000,000 bytes (enwik8, enwik8.gz or enwik8.zip accepted)",
            ENWIK8_URL, "",
            (DataFile("enwik8.zip", sha256="2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8",
                      size=100_000_000, urls=(ENWIK8_URL,), accept=("enwik8", "enwik8.gz", "enwik8.zip"),
                      zip_member="enwik8"),),
            size_note="36 MB zip"),
    _wikitext_entry("wikitext-2-raw", "WikiText-2 raw (what lm-eval scores; task wikitext2 prefers it)", "wikitext-2-raw-v1",
                    _wikitext_files("raw"), "13 MB"),
    _wikitext_entry("wikitext-2", "WikiText-2 v1 tokenized (<unk>, @-@); valid/test sha256 known", "wikitext-2-v1",
                    _wikitext_files("tokens", WIKITEXT2_TOKENS), "13 MB"),
    _wikitext_entry("wikitext-103-raw", "WikiText-103 raw (what lm-eval scores; task wikitext103 prefers it)", "wikitext-103-raw-v1",
                    _wikitext_files("raw"), "540 MB"),
    _wikitext_entry("wikitext-103", "WikiText-103 v1 tokenized (<unk>, @-@)", "wikitext-103-v1",
                    _wikitext_files("tokens"), "520 MB"),
    Dataset("pg19", "20 Project Gutenberg books (Gutenberg files, not PG19-processed; 10146, 10321, 10356, 10762 "
            "are in PG19's test split): the default text of `harness regress` and `harness bench`, BABILong "
            "background text (the full PG19 corpus is Hugging Face deepmind/pg19, not fetched here)",
            f"GitHub tmgondal/Project-Gutenberg at commit 5e7ad50: {PG19_REPO}/<id>.txt", "pg19",
            tuple(DataFile(f"{b}.txt", urls=(f"{PG19_REPO}/{b}.txt",), **_known(f"pg19/{b}.txt"))
                  for b in PG19_BOOKS), folders=("books",), size_note="8.2 MB"),
    Dataset("babi", "bAbI tasks v1.2 (tasks_1-20_v1-2), en (1k) and en-10k: the facts of the BABILong builder",
            BABI_URLS[0], "babi", _babi_files(), folders=("tasks_1-20_v1-2",), archive=BABI_URLS,
            manual=f"download tasks_1-20_v1-2.tar.gz ({BABI_URLS[0]} or a mirror) and place its en/ and en-10k/ "
                   "folders in {folder}", size_note="12 MB archive"),
    Dataset("gpt2-tokenizer", "OpenAI's GPT-2 BPE files encoder.json + vocab.bpe (BABILong lengths, "
            "tokenizer=gpt2)", f"{GPT2_URL}/{{encoder.json,vocab.bpe}}", "tokenizers/gpt2",
            tuple(DataFile(n, urls=(f"{GPT2_URL}/{n}",), **_known(f"tokenizers/gpt2/{n}"))
                  for n in ("encoder.json", "vocab.bpe")), folders=("gpt2",), size_note="1.5 MB"),
    Dataset("babilong", "BABILong samples (task babilong, source=hf): the evaluation and training sets at the "
            "task's default lengths",
            f"Hugging Face {BABILONG_EVAL} and {BABILONG_TRAIN}", "", hub=(BABILONG_EVAL, BABILONG_TRAIN),
            hub_configs=BABILONG_LENGTHS, hub_fetch=_fetch_hub_cache,
            manual="copy a Hugging Face datasets cache ($HF_DATASETS_CACHE) holding it from a machine online, or "
                   "run the task offline with --task-arg source=builder or source=generator",
            size_note="lengths " + ",".join(BABILONG_LENGTHS)),
)}
ALIASES = {"wikitext2": "wikitext-2-raw", "wikitext103": "wikitext-103-raw", "gpt2": "gpt2-tokenizer",
           "tasks-1-20-v1-2": "babi"}


def names() -> list[str]:
    return list(CATALOG)


def get(name: str | Dataset) -> Dataset:
    if isinstance(name, Dataset):
        return name
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key in CATALOG:
        return CATALOG[key]
    close = difflib.get_close_matches(key, [*CATALOG, *ALIASES], n=3, cutoff=0.5)
    close = list(dict.fromkeys(ALIASES.get(c, c) for c in close))
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UnknownNameError(f"unknown dataset {name!r}; {hint}known datasets: {', '.join(CATALOG)}")


# -- where things are -----------------------------------------------------------------------------------------------

def fetch_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Where `fetch` writes: --data-dir, else $HARNESS_DATA_DIR, else the cache."""
    return Path(data_dir or os.environ.get("HARNESS_DATA_DIR") or cache_dir())


def folders(name: str) -> tuple[str, ...]:
    """The folder names a dataset is accepted under (relative to a data root), its own first."""
    ds = get(name)
    return (ds.folder, *ds.folders)


def _candidates(ds: Dataset, root: Path) -> list[Path]:
    return [root / f if f else root for f in (ds.folder, *ds.folders)]


def _target(ds: Dataset, data_dir=None) -> Path:
    """Where `fetch` would put the dataset: its folder, or its file for a dataset at the root (enwik8)."""
    root = fetch_root(data_dir)
    return root / ds.folder if ds.folder else root / ds.files[0].path


def present(f: DataFile, folder: Path) -> Path | None:
    """The first of the file's accepted names that exists in `folder`."""
    for n in f.names:
        if (folder / n).is_file():
            return folder / n
    return None


def locate(name: str, data_dir=None) -> Path | None:
    """The first folder (roots in lookup order, then the dataset's folder names) holding any of its files."""
    ds = get(name)
    for root in data_dirs(data_dir):
        for folder in _candidates(ds, root):
            if any(present(f, folder) for f in ds.files):
                return folder
    return None


def hub_cache_path(repo: str) -> Path:
    """Where `datasets` keeps a Hub dataset (its default cache, the one the task's loader uses)."""
    root = os.environ.get("HF_DATASETS_CACHE") or Path(
        os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    ) / "datasets"
    return Path(root).expanduser() / repo.replace("/", "___")


def _hub_cached(repo: str, config: str) -> bool:
    folder = hub_cache_path(repo) / config
    return folder.is_dir() and any(folder.rglob("*.arrow"))


def manual_hint(ds: Dataset, folder: Path, files: list[DataFile] | tuple[DataFile, ...] | None = None) -> str:
    """How to install a dataset by hand, in one clause."""
    if ds.manual:
        return "to install it by hand, " + ds.manual.format(folder=folder)
    files = list(files if files is not None else ds.files)
    return f"to install it by hand, place {_some([f.path for f in files], 4)} (from {ds.source}) in {folder}"


def require(name: str, data_dir=None, alternative: str = "") -> Path:
    """The folder holding every file of the dataset (checked by name and size), found in lookup order; else a
    one-line DataError saying where it was looked for and how to get it."""
    ds = get(name)
    folder = locate(ds.name, data_dir)
    tail = f"run `harness data fetch {ds.name}`" + (f" or {alternative}" if alternative else "")
    if folder is None:
        where = ", ".join(_describe_roots(data_dir))
        raise DataError(f"{ds.name} not found (looked in {where}); {tail}")
    missing, wrong = [], []
    for f in ds.files:
        path = present(f, folder)
        if path is None:
            missing.append(f.path)
        elif f.size is not None and path.suffix not in (".gz", ".zip") and path.stat().st_size != f.size:
            wrong.append(f.path)
    if missing or wrong:
        problems = [f"missing {_some(missing)}"] if missing else []
        problems += [f"wrong size: {_some(wrong)}"] if wrong else []
        raise DataError(f"{ds.name} in {folder} is incomplete ({'; '.join(problems)}); {tail}")
    return folder


def _some(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _describe_roots(data_dir) -> list[str]:
    out = [f"--data-dir {data_dir}"] if data_dir else []
    env = os.environ.get("HARNESS_DATA_DIR")
    out.append(f"$HARNESS_DATA_DIR={env}" if env else "$HARNESS_DATA_DIR (unset)")
    out.append(f"the cache {cache_dir()}")
    return out


def default_text(data_file: str | os.PathLike | None = None, flag: str = "--data-file") -> Path:
    """The byte-level text `harness regress` and `harness bench --switches` use: --data-file when given, else the
    pg19 books found by the data lookup ($HARNESS_DATA_DIR, then the cache)."""
    if data_file:
        return Path(data_file)
    return require("pg19", alternative=f"pass {flag} PATH (a text file or a folder of .txt files)")


# -- status: ls and verify ------------------------------------------------------------------------------------------

def listing(data_dir=None) -> list[dict]:
    """Per dataset: name, description, source, state (cached / partial / not cached), files found, where."""
    rows = []
    for ds in CATALOG.values():
        if ds.hub_only:
            have = [f"{r} {c}" for r in ds.hub for c in ds.hub_configs if _hub_cached(r, c)]
            total = len(ds.hub) * len(ds.hub_configs)
            where = str(hub_cache_path(ds.hub[0]).parent)
            found = len(have)
        else:
            folder = locate(ds.name, data_dir)
            total = len(ds.files)
            found = sum(present(f, folder) is not None for f in ds.files) if folder else 0
            where = str(folder) if folder else str(_target(ds, data_dir))
        state = "cached" if found == total else "partial" if found else "not cached"
        rows.append({"name": ds.name, "state": state, "files": f"{found}/{total}", "where": where,
                     "description": ds.description, "source": ds.source, "size": ds.size_note})
    return rows


def verify(name: str | None = None, data_dir=None) -> list[Check]:
    """Check what is present: every file's size and sha256 where known. One Check per dataset."""
    return [verify_one(ds, data_dir) for ds in ([get(name)] if name else CATALOG.values())]


def verify_one(ds: Dataset, data_dir=None) -> Check:
    if ds.hub_only:
        missing = [f"{r} {c}" for r in ds.hub for c in ds.hub_configs if not _hub_cached(r, c)]
        path = str(hub_cache_path(ds.hub[0]).parent)
        if missing:
            return Check(ds.name, "missing", path, f"not in the datasets cache: {_some(missing, 4)}; "
                         f"harness data fetch {ds.name}")
        return Check(ds.name, "ok", path, f"{len(ds.hub) * len(ds.hub_configs)} configs cached (checksums are "
                     "the datasets library's)")
    folder = locate(ds.name, data_dir)
    if folder is None:
        return Check(ds.name, "missing", str(_target(ds, data_dir)), f"not found; harness data fetch {ds.name}")
    missing, bad, unknown = [], [], []
    for f in ds.files:
        path = present(f, folder)
        if path is None:
            missing.append(f.path)
            continue
        if f.sha256 is None:
            unknown.append(f.path)
        try:
            check_file(f, path, origin=path.name, what="the original")
        except DataError as exc:
            bad.append(str(exc).split(";")[0])
        except OSError as exc:
            bad.append(f"cannot read {path.name}: {exc}")
    if bad:
        return Check(ds.name, "mismatch", str(folder), f"{len(bad)} of {len(ds.files)} files: {bad[0]}"
                     + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    if missing:
        return Check(ds.name, "missing", str(folder), f"{len(missing)} of {len(ds.files)} files missing: "
                     f"{_some(missing)}; harness data fetch {ds.name}")
    note = f"; {len(unknown)} without a known sha256 (presence only)" if unknown else ""
    return Check(ds.name, "ok", str(folder), f"{len(ds.files)} files, size and sha256 checked{note}")


# -- fetching -------------------------------------------------------------------------------------------------------

def download_file(ds: Dataset, f: DataFile, folder: Path, urls: tuple[str, ...] | None = None,
                  still_needed: list[DataFile] | None = None) -> Path:
    """Download one file (mirrors in order) to folder/f.path; it appears only once checked. A one-line DataError
    names what went wrong and the files (`still_needed`, default this one) to put there by hand."""
    dest = folder / f.path
    errors = []
    for url in urls or f.urls:
        try:
            return download(url, dest, check=lambda tmp, u=url: check_file(
                f, tmp, origin=f"the download from {u}", name=f.path, what=f.zip_member or f.path, source=u))
        except DataError as exc:
            errors.append(str(exc))
    raise DataError(f"{ds.name}: {'; '.join(errors) or 'no URL known'}; "
                    f"{manual_hint(ds, folder, still_needed or [f])}")


def _read_members(archive: Path, wanted: list[str]) -> dict[str, bytes]:
    out = {}
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zf:
                present_names = set(zf.namelist())
                out = {m: zf.read(m) for m in wanted if m in present_names}
        else:
            with tarfile.open(archive, "r:*") as tf:
                for m in wanted:
                    try:
                        member = tf.getmember(m)
                    except KeyError:
                        continue
                    handle = tf.extractfile(member)
                    if handle is not None:
                        out[m] = handle.read()
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read the archive {archive.name}: {exc}") from exc
    return out


def _fetch_archive(ds: Dataset, folder: Path, todo: list[DataFile], log) -> None:
    """Download the archive (mirrors in order) next to the folder, check every wanted member, then write them."""
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in ds.archive:
        with tempfile.TemporaryDirectory(prefix=f".{ds.name}-download-", dir=folder) as tmp:
            try:
                archive = download(url, Path(tmp) / url.rsplit("/", 1)[-1])
                blobs = _read_members(archive, [f.member for f in todo])
                absent = [f.member for f in todo if f.member not in blobs]
                if absent:
                    raise DataError(f"{url} has no {_some(absent)}")
                for f in todo:
                    check_bytes(blobs[f.member], f.size, f.sha256, f"{f.member} in {url}", f.path, url)
            except DataError as exc:
                errors.append(str(exc))
                continue
        for f in todo:  # every member checked before any file is written
            atomic_write_bytes(folder / f.path, blobs[f.member])
        log(f"{ds.name}: {len(todo)} files from {url}")
        return
    raise DataError(f"{ds.name}: {'; '.join(errors)}; {manual_hint(ds, folder)}")


def fetch(name: str, data_dir=None, *, force: bool = False, log=print) -> Path:
    """Download a dataset into --data-dir / $HARNESS_DATA_DIR / the cache (fetch_root), check it, and return the
    folder it is in. Files already there that pass their check are kept (unless `force`)."""
    ds = get(name)
    root = fetch_root(data_dir)
    folder = _candidates(ds, root)[0]
    if ds.hub_only:
        return ds.hub_fetch(ds, folder, log)
    todo = []
    for f in ds.files:
        found = present(f, folder)
        if found is not None and not force:
            try:
                check_file(f, found)
                continue
            except DataError as exc:
                if found != folder / f.path:
                    log(f"warning: {exc.args[0].split(';')[0]}; remove {found}: it is looked for before "
                        f"{folder / f.path}")
        todo.append(f)
    if not todo:
        log(f"{ds.name}: already in {folder} (every file checked)")
        return folder
    if ds.hub_fetch is not None:
        ds.hub_fetch(ds, folder, log)
    elif ds.archive:
        _fetch_archive(ds, folder, todo, log)
    else:
        for i, f in enumerate(todo, 1):
            download_file(ds, f, folder, still_needed=todo[i - 1:])
            log(f"{ds.name}: [{i}/{len(todo)}] {folder / f.path}")
    log(f"{ds.name} -> {folder}")
    return folder


# -- Hugging Face loaders (the tasks call these) --------------------------------------------------------------------

def wikitext_hf_texts(config: str, hub_names: tuple[str, ...] = WIKITEXT_HUB) -> dict[str, str]:
    """Each WikiText split's file text rebuilt from the line-per-row HF dataset (its empty rows are the files'
    ' ' lines), cached under the harness cache."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DataError("offline")
    import datasets

    errors = []
    for name in hub_names:
        try:
            ds = datasets.load_dataset(name, config, cache_dir=str(cache_dir() / "hf-datasets"))
        except Exception as exc:  # noqa: BLE001 (network, hub and cache errors come in many kinds)
            errors.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        return {split: "".join(row if row else " \n" for row in ds[hf]["text"])
                for split, hf in WIKITEXT_SPLITS.items()}
    raise DataError("; ".join(errors))


def babilong_hf_rows(repo: str, config: str, split: str | None = None):
    """A BABILong dataset (all splits, or one) through `datasets`' default cache."""
    import datasets

    return datasets.load_dataset(repo, config, split=split) if split else datasets.load_dataset(repo, config)


def with_overrides(f: DataFile, **changes) -> DataFile:
    return replace(f, **{k: v for k, v in changes.items() if v is not None})


# -- printing -------------------------------------------------------------------------------------------------------

def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(str(c).ljust(w) for c, w in zip(r, widths)), str(r[-1])]).rstrip()
                     for r in (header, *rows))


def lookup_note(data_dir=None) -> str:
    return (f"looked for in: {', '.join(_describe_roots(data_dir))} (in this order); "
            f"`harness data fetch` writes to {fetch_root(data_dir)}")


def format_listing(rows: list[dict], data_dir=None) -> str:
    table = _table(("name", "cached", "files", "size", "where"),
                   [(r["name"], r["state"], r["files"], r["size"], r["where"]) for r in rows])
    about = "\n".join(f"  {r['name']}: {r['description']}. Source: {r['source']}" for r in rows)
    return f"{table}\n\n{about}\n\n{lookup_note(data_dir)}"


def format_checks(checks: list[Check]) -> str:
    return _table(("name", "status", "path", "detail"), [(c.name, c.status, c.path, c.detail) for c in checks])
