"""The dataset catalog and `harness data ls | fetch | verify`: listing and checking a temporary cache, fetching
through a loopback HTTP server (a sha256 mismatch is refused and leaves nothing), the offline error, and the
default text of `harness regress` / `harness bench` found through $HARNESS_DATA_DIR or the cache."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from harness import data_catalog as dc
from harness.cli import main
from harness.errors import DataError, UnknownNameError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache and no $HARNESS_DATA_DIR: the lookup sees nothing of this machine's data."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    return tmp_path / "cache"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FILES = {"a.txt": b"alpha " * 100, "b.txt": b"beta " * 300}


@pytest.fixture
def toy(monkeypatch):
    """install(urls_base=None, files=FILES, **fields): put a small dataset `toy` (folder toy/) in the catalog."""
    def install(base: str | None = None, files: dict[str, bytes] = FILES, **fields) -> dc.Dataset:
        entries = tuple(dc.DataFile(name, sha256=sha(data), size=len(data),
                                    urls=(f"{base}/{name}",) if base else ()) for name, data in files.items())
        ds = dc.Dataset("toy", "a toy dataset", f"{base or 'nowhere'}/", "toy", entries, **fields)
        monkeypatch.setitem(dc.CATALOG, "toy", ds)
        return ds
    return install


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def error_of(err: str) -> str:
    """The CLI's error: one line `error: ...`, the last of stderr (download progress bars come before it)."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.endswith(lines[0] + "\n"), err
    return lines[0]


def row(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.split() and line.split()[0] == name)
    return re.split(r"\s{2,}", line)


# -- the catalog itself ---------------------------------------------------------------------------------------------

def test_every_entry_says_what_where_and_how_to_get_it():
    for ds in dc.CATALOG.values():
        assert ds.name and ds.description and ds.source, ds
        assert ds.hub_fetch is not None or ds.archive or all(f.urls for f in ds.files), ds.name
        for f in ds.files:
            assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256), (ds.name, f.path)
            assert not ds.archive or f.member, (ds.name, f.path)
    pg19 = dc.get("pg19")
    assert len(pg19.files) == 20 and all(f.sha256 and f.size for f in pg19.files)
    assert all("5e7ad504e1fe1797122bd3068875c02458ecd786" in f.urls[0] for f in pg19.files)  # pinned bytes
    babi = dc.get("babi")
    unhashed = [f.path for f in babi.files if not f.sha256]
    assert len(babi.files) == 80 and unhashed == ["en-10k/qa3_three-supporting-facts_train.txt"]
    assert dc.get("enwik8").files[0].sha256.startswith("2b49720e")
    assert dc.get("wikitext2").name == "wikitext-2-raw" and dc.get("GPT2").name == "gpt2-tokenizer"
    with pytest.raises(UnknownNameError, match="did you mean pg19"):
        dc.get("pg91")


def test_loaders_read_their_names_and_sources_from_the_catalog():
    from tasks import bytelevel, wikitext
    from tasks.babilong import sources
    from tasks.babilong.task import DEFAULT_LENGTHS

    assert bytelevel.ENWIK8_URL == dc.ENWIK8_URL and bytelevel.ENWIK8_SHA256 == dc.get("enwik8").files[0].sha256
    assert wikitext.WikiText2Task.subfolders[:2] == dc.folders("wikitext-2-raw")
    assert set(wikitext.KNOWN_FILES) == {f.sha256 for f in dc.get("wikitext-2").files if f.sha256}
    assert (sources.HF_EVAL, sources.HF_TRAIN) == dc.get("babilong").hub
    assert ",".join(dc.get("babilong").hub_configs) == DEFAULT_LENGTHS


# -- ls and verify ----------------------------------------------------------------------------------------------------

def test_ls_and_verify_on_a_temporary_cache(cache, toy, capsys, no_network):
    toy()
    code, out, _ = run_cli(capsys, "data", "ls")
    assert code == 0 and row(out, "toy")[:3] == ["toy", "not cached", "0/2"] and str(cache) in out
    code, out, _ = run_cli(capsys, "data", "verify")
    assert code == 0 and row(out, "toy")[:3] == ["toy", "missing", str(cache / "toy")]
    assert row(out, "pg19")[1] == "missing"  # every catalog entry is listed

    (cache / "toy").mkdir(parents=True)
    (cache / "toy" / "a.txt").write_bytes(FILES["a.txt"])
    code, out, _ = run_cli(capsys, "data", "ls")
    assert row(out, "toy")[1:3] == ["partial", "1/2"]
    code, out, _ = run_cli(capsys, "data", "verify", "toy")
    assert code == 1 and row(out, "toy")[1] == "missing" and "b.txt" in out  # named and not ok: exit 1

    (cache / "toy" / "b.txt").write_bytes(FILES["b.txt"])
    code, out, _ = run_cli(capsys, "data", "verify", "toy")
    assert code == 0 and row(out, "toy")[1:3] == ["ok", str(cache / "toy")]
    code, out, _ = run_cli(capsys, "data", "ls")
    assert row(out, "toy")[1:3] == ["cached", "2/2"]

    (cache / "toy" / "b.txt").write_bytes(FILES["b.txt"].upper())  # same size, other bytes
    code, out, _ = run_cli(capsys, "data", "verify")
    assert code == 1 and row(out, "toy")[1] == "mismatch" and "sha256" in row(out, "toy")[3]
    assert no_network == []


def test_verify_reads_the_ci_data_folder_through_harness_data_dir(shared_data, cache, monkeypatch, capsys,
                                                                  no_network):
    """The recorded sizes and sha256 are those of the real files (pg19, GPT-2, bAbI), which CI's folder holds."""
    monkeypatch.setenv("HARNESS_DATA_DIR", str(shared_data))
    code, out, _ = run_cli(capsys, "data", "verify")
    assert code == 0
    assert row(out, "pg19")[1:3] == ["ok", str(shared_data / "pg19")]
    assert row(out, "gpt2-tokenizer")[1] == "ok"
    babi = row(out, "babi")
    assert babi[1] == "missing" and "1 of 80" in babi[3] and "qa3_three-supporting-facts_train" in babi[3]
    assert row(out, "wikitext-2")[1] == "missing" and "wiki.train.tokens" in row(out, "wikitext-2")[3]
    assert no_network == []


# -- fetch ----------------------------------------------------------------------------------------------------------

def test_fetch_through_loopback_writes_checks_and_says_where(cache, toy, tmp_path, serve_folder, capsys):
    served = tmp_path / "served"
    served.mkdir()
    for name, data in FILES.items():
        (served / name).write_bytes(data)
    toy(serve_folder(served).base_url)
    code, out, err = run_cli(capsys, "data", "fetch", "toy")
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in (cache / "toy").iterdir()} == FILES  # and nothing else
    assert f"toy -> {cache / 'toy'}" in out
    code, out, _ = run_cli(capsys, "data", "fetch", "toy")  # already there: checked, not downloaded again
    assert code == 0 and "already in" in out
    code, out, _ = run_cli(capsys, "data", "verify", "toy")
    assert code == 0 and row(out, "toy")[1] == "ok"


def test_fetch_refuses_a_sha256_mismatch_and_leaves_no_file(cache, toy, tmp_path, serve_folder, capsys):
    served = tmp_path / "served"
    served.mkdir()
    (served / "a.txt").write_bytes(FILES["a.txt"])
    (served / "b.txt").write_bytes(FILES["b.txt"].upper())  # right size, wrong bytes
    toy(serve_folder(served).base_url)
    code, _, err = run_cli(capsys, "data", "fetch", "toy", "--data-dir", str(tmp_path / "target"))
    err = error_of(err)
    assert code == 2 and "b.txt" in err and "sha256" in err and "altered" in err
    assert str(tmp_path / "target" / "toy") in err
    left = sorted(p.name for p in (tmp_path / "target" / "toy").iterdir())
    assert left == ["a.txt"]  # the good file is kept; of the bad one not even a temporary file


def test_fetch_of_an_archive_checks_every_member_before_writing(cache, tmp_path, serve_folder, monkeypatch, capsys):
    def archive(path, files):
        with tarfile.open(path, "w:gz") as tf:
            for name, data in files.items():
                info = tarfile.TarInfo(f"pack/{name}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

    served = tmp_path / "served"
    served.mkdir()
    archive(served / "good.tar.gz", FILES)
    archive(served / "bad.tar.gz", {**FILES, "b.txt": b"x" * len(FILES["b.txt"])})
    base = serve_folder(served).base_url
    files = tuple(dc.DataFile(n, sha256=sha(d), size=len(d), member=f"pack/{n}") for n, d in FILES.items())

    def install(name):
        ds = dc.Dataset("toy", "toy archive", f"{base}/{name}", "toy", files, archive=(f"{base}/{name}",))
        monkeypatch.setitem(dc.CATALOG, "toy", ds)

    install("bad.tar.gz")
    code, _, err = run_cli(capsys, "data", "fetch", "toy")
    assert code == 2 and "pack/b.txt" in error_of(err) and "altered" in err
    assert not (cache / "toy").exists() or not any((cache / "toy").iterdir())  # nothing, not even a.txt
    install("good.tar.gz")
    code, _, err = run_cli(capsys, "data", "fetch", "toy")
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in (cache / "toy").iterdir()} == FILES


def test_offline_fetch_is_one_line_naming_the_files_and_where(cache, monkeypatch, capsys, no_network):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code, _, err = run_cli(capsys, "data", "fetch", "pg19")
    err = error_of(err)
    assert code == 2 and "name resolution" in err and "10002.txt" in err and f"in {cache / 'pg19'}" in err
    assert not (cache / "pg19").exists() or not any((cache / "pg19").iterdir())
    code, _, err = run_cli(capsys, "data", "fetch", "babi")  # an archive: where to put its folders
    err = error_of(err)
    assert code == 2 and "en-10k/" in err and str(cache / "babi") in err
    assert no_network == []


def test_unknown_name_fails_before_anything_is_fetched(cache, capsys, no_network):
    code, _, err = run_cli(capsys, "data", "fetch", "pg19", "enwik9")
    assert code == 2 and "unknown dataset 'enwik9'" in err and no_network == []


def test_wikitext_fetch_rebuilds_the_files_and_checks_the_known_hashes(shared_data, cache, monkeypatch):
    """wikitext-2 (tokenized) from Hub rows: valid/test must equal the published files; altered rows are refused."""
    import datasets

    texts = {s: (shared_data / "wikitext-2" / f"{s}.txt").read_text(encoding="utf-8") for s in ("valid", "test")}
    texts["train"] = texts["valid"]

    def rows(text):
        return [line if line.strip() else "" for line in text.splitlines(keepends=True)]

    def fake(name, config, cache_dir=None):
        return {hf: {"text": rows(texts[s])} for s, hf in dc.WIKITEXT_SPLITS.items()}

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    texts["test"] = texts["test"].replace(" the ", " teh ", 1)
    with pytest.raises(DataError, match="wiki.test.tokens.*altered"):
        dc.fetch("wikitext-2", log=lambda line: None)
    assert not (cache / "wikitext-2").exists()  # no file written, not even the good ones
    texts["test"] = (shared_data / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    folder = dc.fetch("wikitext-2", log=lambda line: None)
    assert (folder / "wiki.valid.tokens").read_bytes() == (shared_data / "wikitext-2" / "valid.txt").read_bytes()
    assert dc.verify("wikitext-2")[0].status == "ok"
    from tasks import wikitext

    task = wikitext.WikiText2Task(source="local", tokenizer="bytes")  # the loader finds the fetched files
    assert task.info["folder"] == str(cache / "wikitext-2") and task.train_split == "train"


def test_babilong_fetch_loads_each_default_config_and_is_one_line_offline(cache, monkeypatch):
    calls = []
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(dc, "babilong_hf_rows", lambda repo, config, split=None: calls.append((repo, config)))
    dc.fetch("babilong", log=lambda line: None)
    assert calls == [(r, c) for r in (dc.BABILONG_EVAL, dc.BABILONG_TRAIN) for c in dc.BABILONG_LENGTHS]
    assert dc.verify("babilong")[0].status == "missing"  # status comes from the datasets cache's folders
    for repo, config in calls:  # the layout `datasets` writes: <cache>/<owner>___<name>/<config>/<version>/<hash>
        arrow = dc.hub_cache_path(repo) / config / "0.0.0" / "abc" / "babilong-qa1.arrow"
        arrow.parent.mkdir(parents=True)
        arrow.write_bytes(b"")
    assert dc.verify("babilong")[0].status == "ok"
    assert next(r for r in dc.listing() if r["name"] == "babilong")["state"] == "cached"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        dc.fetch("babilong", log=lambda line: None)
    assert "offline" in str(err.value) and "\n" not in str(err.value)


# -- the default text of regress and bench --------------------------------------------------------------------------

def test_regress_and_bench_find_their_text_through_harness_data_dir(shared_data, cache, monkeypatch, small_text):
    from harness import regress

    monkeypatch.setenv("HARNESS_DATA_DIR", str(shared_data))  # what .ci/run does
    cases, _ = regress.ci_suite(["transformer-pp"], None)
    assert cases[0].run_args["data_file"] == str(shared_data / "pg19")
    assert dc.default_text(None) == shared_data / "pg19"
    cases, _ = regress.ci_suite(["transformer-pp"], str(small_text))  # the flag wins
    assert cases[0].run_args["data_file"] == str(small_text)


def test_regress_and_bench_default_text_from_the_cache_after_a_fetch(cache, tmp_path, serve_folder, shared_data,
                                                                      monkeypatch, capsys):
    """`harness data fetch pg19` (served here from a loopback copy) is what regress and bench then read."""
    from harness import regress

    base = serve_folder(shared_data / "pg19").base_url
    pg19 = dc.get("pg19")
    monkeypatch.setitem(dc.CATALOG, "pg19", replace(pg19, files=tuple(
        replace(f, urls=(f"{base}/{f.path}",)) for f in pg19.files)))
    code, _, err = run_cli(capsys, "data", "fetch", "pg19")
    assert code == 0, err
    cases, _ = regress.ci_suite(["transformer-pp"], None)
    assert cases[0].run_args["data_file"] == str(cache / "pg19")
    (cache / "pg19" / "10002.txt").unlink()
    with pytest.raises(DataError, match=r"incomplete \(missing 10002.txt\).*harness data fetch pg19"):
        regress.ci_suite(["transformer-pp"], None)


def test_without_data_regress_and_bench_fail_in_one_line_saying_how_to_get_it(cache, monkeypatch, capsys,
                                                                              no_network):
    from harness import bench, regress

    with pytest.raises(DataError) as err:
        regress.ci_suite(["transformer-pp"], None)
    message = str(err.value)
    assert "\n" not in message and "harness data fetch pg19" in message and "--data-file" in message
    assert "$HARNESS_DATA_DIR (unset)" in message and str(cache) in message
    code, _, stderr = run_cli(capsys, "regress", "--suite", "ci")
    assert code == 2 and "harness data fetch pg19" in error_of(stderr)

    monkeypatch.setattr("harness.runner.run", lambda cfg: pytest.fail("bench ran without data"))
    with pytest.raises(DataError, match="harness data fetch pg19"):
        bench.switch_runs(["transformer-pp"], "tiny", ["prefetch"], 2, "cpu", None)
    assert no_network == []


def test_bench_switch_runs_use_the_looked_up_text(shared_data, cache, monkeypatch):
    from harness import bench

    seen = []

    def fake_run(cfg):
        seen.append(cfg.data_file)
        return {"training": {"tokens_seen": cfg.steps * 10, "train_time_s": cfg.steps}, "wall_time_s": cfg.steps}, None

    monkeypatch.setenv("HARNESS_DATA_DIR", str(shared_data))
    monkeypatch.setattr("harness.runner.run", fake_run)
    bench.switch_runs(["transformer-pp"], "tiny", ["prefetch"], 2, "cpu", None)
    assert seen and set(seen) == {str(shared_data / "pg19")}
