from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs its tiny shapes on one intra-op thread: faster and steadier on CI's 2 shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (CI has it beside the clone)")
    return SHARED_DATA


@pytest.fixture
def small_text(tmp_path) -> Path:
    """A deterministic ~40 KB text file for fast end-to-end runs."""
    words = ("the quick brown fox jumps over the lazy dog while memory models read long books and "
             "remember every fact they see ").split()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(words), (8000,), generator=g).tolist()
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(words[i] for i in idx))
    return path


@pytest.fixture
def interrupt_loss_at(monkeypatch):
    """arm(n): the runner's loss raises KeyboardInterrupt on its n-th call (a run killed mid-step, after whatever
    checkpoints came before); returns a function that puts the real loss back."""
    from harness import runner

    def arm(n: int):
        original, calls = runner.lm_loss, {"n": 0}

        def interrupted(*args, **kw):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return original(*args, **kw)

        monkeypatch.setattr(runner, "lm_loss", interrupted)
        return lambda: monkeypatch.setattr(runner, "lm_loss", original)

    return arm


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connect and name lookup is recorded and fails loudly (not as an OSError a probe would
    swallow); the test asserts the returned list stays empty."""
    import socket

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise RuntimeError(f"network call {args!r}")

    for name in ("getaddrinfo", "create_connection", "gethostbyname"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return calls


@pytest.fixture
def serve_folder():
    """serve(folder) -> a loopback HTTP server (127.0.0.1, a free port) serving the folder's files, its address in
    `.base_url`; every server is shut down after the test. Download tests reach only these."""
    import http.server
    import threading
    from functools import partial

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    servers = []

    def serve(folder):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
        server.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
