"""Throughput benchmark: `harness bench --models all --preset tiny --seq-lens 256,1024,4096`.

Per model and sequence length, on random tokens of one batch (--batch-size x seq_len):
- training tokens/s: one forward + backward + AdamW step, timed after --warmup untimed steps, --repeats times;
- inference tokens/s: one no-grad forward, the same way;
- peak memory, per (model, seq_len):
  * on the CPU each (model, seq_len) is measured in a fresh child process (`python -c`, the same interpreter
    and sys.path; stdout and stderr shared) with the parent's torch thread count, so no row inherits memory
    that an earlier model left resident (RSS never falls after a model is freed). The child imports the model's module and runs a tiny warm-up op (loading the math
    and autograd libraries), reads its RSS (VmRSS, the baseline), builds the model, optimizer and batch, resets
    its RSS high-water mark (writes "5" to /proc/self/clear_refs) and runs the warmup and timed steps.
    `peak_mem_mb` = the child's VmHWM afterwards: the peak RSS during the steps (model, optimizer state,
    activations, plus the process's baseline). Where clear_refs cannot be written the reset is skipped and
    VmHWM is the child's whole-life peak; `mem_method` says which. `model_mem_mb` = peak_mem_mb minus the
    baseline: what the model, its gradients, optimizer state and activations cost. The child's pid is recorded
    in `pid`. An error in the child (out of memory, a length the model cannot take) comes back as the row's
    `error`; a child that dies (e.g. killed by the OOM killer) gives a row whose `error` says so.
  * `--in-process` measures in the bench process instead (the old mode; faster, but RSS left by earlier models
    can inflate later rows): the same clear_refs + VmHWM reading, or where that is unavailable the RSS sampled
    every millisecond by a thread (approximate: short peaks can be missed).
  * on CUDA, in-process: torch.cuda.max_memory_allocated over the steps (peak stats reset after building the
    model); `model_mem_mb` subtracts torch.cuda.memory_allocated before building it.
- MFU = model FLOP/s / measured peak FLOP/s. The peak is measured here: the best of several large matmuls
  (fp32 on the CPU, bf16 on CUDA). Model FLOPs per token (PaLM appendix B convention, with causal masking):
      training  6 N + 12 L d T_avg      inference  2 N + 4 L d T_avg
  with N = parameters outside embedding tables, and the attention term only for attention models (streaming
  "window"), L layers, width d, and T_avg the average number of keys a query attends to under the causal mask
  over a context of T tokens with window w = model.max_context (w = T when unbounded):
      T_avg = (1/T) sum_{t=1..T} min(t, w)  =  (T + 1) / 2 when T <= w,  (w (w + 1) / 2 + (T - w) w) / T otherwise.
  Recurrent models get 6N / 2N only, which undercounts their scan work, so their MFU is a lower bound.
Medians and spread (max - min over the repeats) are written to <output-dir>/bench.csv; the plot of tokens/s
against sequence length to <output-dir>/bench_tokens_per_s.png.

Compilation (`--compile off|on|both`): with `on` the measured model is torch.compile(model) (the runner's
`--compile`); `both` measures every (model, seq_len) eagerly and compiled, each in its own child process, and
prints the on/off ratios. Compilation happens in the first warm-up steps (the training graph, with its backward,
at the first training step; the no-grad graph at the first inference step), so the timed steps after the
warm-up are steady-state steps. `first_train_s` / `first_infer_s` are the first training / inference step's time
(compilation included when compiled), and `graph_breaks` is dynamo's graph-break count over the row (blank when
eager). On the CPU each compiled row's child gets an empty inductor cache of its own (`compile_cache` = empty), so
the first step's time is a cold compilation whatever earlier runs cached; in-process or on CUDA the process's
cache is used (`shared`). A compiled row needs --warmup >= 1.

Performance switches (`--switches prefetch,eval,amp`): each runs the real training loop (runner.run,
task `bytes` on --data-file, else the catalog's pg19 from $HARNESS_DATA_DIR or the cache, --switch-steps steps
at the preset's batch and length, no test scoring) with the switch off and on, and prints/writes steady-state
tokens/s to <output-dir>/switches.csv: each setting runs S and 2S steps and reports the extra tokens over the extra
time, which cancels one-off costs (model build, data loading); "train" is training-loop time (batch waits
included, evaluation excluded), "wall" includes periodic evaluation. prefetch = background batch prefetch (depth
2 vs 0); eval = validation every 5 steps with 4 batches vs only at the end; amp = bf16 autocast + TF32 (CUDA
only). Compilation is not a switch: its one-off cost (10-200 s on a CPU) varies from run to run by more than a
difference of S steps takes, so the S / 2S difference came out <= 0; `--compile both` measures it instead.
"""

from __future__ import annotations

import csv
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

from harness.adapter import build_model
from harness.errors import HarnessError
from harness.registry import MODELS
from harness.runner import resolve_device

COLUMNS = ["model", "preset", "device", "seq_len", "batch_size", "params", "flops_params", "train_tok_s",
           "train_tok_s_spread", "infer_tok_s", "infer_tok_s_spread", "peak_mem_mb", "model_mem_mb", "mem_method",
           "train_mfu", "infer_mfu", "peak_flops", "flops_formula", "repeats", "compile", "compile_cache",
           "first_train_s", "first_infer_s", "graph_breaks", "pid", "error"]
SWITCH_COLUMNS = ["model", "preset", "device", "switch", "state", "steps", "train_tok_s", "wall_tok_s"]
SWITCHES = ("prefetch", "eval", "amp")
COMPILE_COLUMNS = ["model", "seq_len", "train_tok_s_off", "train_tok_s_on", "train_speedup", "infer_tok_s_off",
                   "infer_tok_s_on", "infer_speedup", "first_train_s_off", "first_train_s_on", "model_mem_mb_off",
                   "model_mem_mb_on", "graph_breaks", "error"]
COMPILE_MODES = {"off": (False,), "on": (True,), "both": (False, True)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, n: int | None = None, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n matmul (fp32 on the CPU, bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = n or (8192 if device.type == "cuda" else 1024)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


class _RssSampler:
    """Peak resident set size (MB) while active, sampled from /proc/self/statm."""

    def __init__(self):
        self.peak, self._stop = 0.0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page / 2 ** 20

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _proc_status_mb(key: str) -> float:
    """A memory line of /proc/self/status ("VmRSS", "VmHWM"; kB there) in MB (2**20 bytes)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {key} in /proc/self/status")


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 1024)


def _rss_now_mb() -> float:
    try:
        return _proc_status_mb("VmRSS")
    except OSError:
        return _maxrss_mb()  # no /proc: the peak so far stands in for the current RSS


def _rss_peak_mb() -> float:
    try:
        return _proc_status_mb("VmHWM")
    except OSError:
        return _maxrss_mb()


def _reset_rss_peak() -> bool:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS; False where the kernel does not let us."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def attended_length(seq_len: int, window: int | None) -> float:
    """Average number of keys a query attends to under the causal mask over seq_len tokens with a sliding window:
    (1/T) sum_{t=1..T} min(t, w); w = None (or w >= T) gives (T + 1) / 2."""
    t, w = seq_len, min(window or seq_len, seq_len)
    return (w * (w + 1) / 2 + (t - w) * w) / t


def flops_per_token(model, seq_len: int) -> tuple[int, float, float, str]:
    """(N, training FLOPs/token, inference FLOPs/token, formula used); see the module docstring."""
    n = model.num_parameters(exclude_embeddings=True)
    cfg = model.config
    layers = next((getattr(cfg, k) for k in ("depth", "n_layers", "num_layers", "layers") if hasattr(cfg, k)), None)
    width = next((getattr(cfg, k) for k in ("dim", "d_model", "hidden_size", "width") if hasattr(cfg, k)), None)
    if type(model).streaming == "window" and layers and width:
        window = model.max_context
        t_avg = attended_length(seq_len, window)
        formula = (f"6N+12*L*d*T_avg, causal T_avg=mean_t min(t,w) (L={layers}, d={width}, T={seq_len}, "
                   f"w={window}, T_avg={t_avg:g})")
        return n, 6 * n + 12 * layers * width * t_avg, 2 * n + 4 * layers * width * t_avg, formula
    return n, 6 * n, 2 * n, "6N (no attention term)"


def _time(fn, warmup: int, repeats: int, device) -> tuple[float, list[float]]:
    """(time of the first call, times of the `repeats` calls after `warmup` untimed ones); the first call is
    the first warm-up call (or the first timed one when warmup is 0)."""
    first = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        first = time.perf_counter() - t0 if first is None else first
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return (times[0] if first is None else first), times


def _warm_libraries() -> None:
    """A tiny forward/backward/AdamW step, so the libraries it loads are in the baseline RSS, not the model's."""
    layer = torch.nn.Linear(8, 8)
    opt = torch.optim.AdamW(layer.parameters())
    layer(torch.randn(2, 8)).square().mean().backward()
    opt.step()


def _base_row(name, preset, seq_len, batch_size, repeats, device, peak_flops, compiled=False) -> dict:
    return {"model": name, "preset": preset, "device": str(device), "seq_len": seq_len, "batch_size": batch_size,
            "peak_flops": f"{peak_flops:.4g}", "repeats": repeats, "compile": "on" if compiled else "off",
            "compile_cache": "shared" if compiled else "", "pid": os.getpid(), "error": ""}


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def _measure(name, preset, seq_len, batch_size, warmup, repeats, device, peak_flops, model_args=None,
             in_child=False, compiled=False) -> dict:
    """One (model, seq_len) row, measured in this process (a child of the bench when in_child)."""
    row = _base_row(name, preset, seq_len, batch_size, repeats, device, peak_flops, compiled)
    try:
        if compiled:
            import torch._dynamo as dynamo
            from torch._dynamo.utils import counters

            dynamo.reset()  # no graphs or counts from an earlier row of this process
            counters.clear()
        MODELS.load(MODELS.resolve(name).name)  # the model's imports are not the model's memory
        if device.type == "cuda":
            base = torch.cuda.memory_allocated(device) / 2 ** 20
        else:
            _warm_libraries()
            base = _rss_now_mb()
        torch.manual_seed(0)
        model = build_model(name, preset, 256, model_args).to(device)
        n, train_fpt, infer_fpt, formula = flops_per_token(model, seq_len)
        row.update(params=model.num_parameters(), flops_params=n, flops_formula=formula)
        ids = torch.randint(0, 256, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(0)).to(device)
        x, y = ids[:, :-1], ids[:, 1:]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        forward = torch.compile(model) if compiled else model  # as the runner's --compile
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else \
            (lambda: torch.autocast("cpu", enabled=False))

        def train_step():
            with autocast():
                logits, aux = forward(x)
                loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            (loss + aux).backward()
            opt.step()

        @torch.no_grad()
        def infer_step():
            with autocast():
                forward(x)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            train_t = _time(train_step, warmup, repeats, device)
            infer_t = _time(infer_step, warmup, repeats, device)
            peak, method = torch.cuda.max_memory_allocated(device) / 2 ** 20, "cuda.max_memory_allocated"
        else:
            where = "child process" if in_child else "in-process (earlier models' memory may stay resident)"
            if _reset_rss_peak():
                train_t = _time(train_step, warmup, repeats, device)
                infer_t = _time(infer_step, warmup, repeats, device)
                peak, method = _rss_peak_mb(), f"{where}: VmHWM over the steps (reset via clear_refs)"
            elif in_child:
                train_t = _time(train_step, warmup, repeats, device)
                infer_t = _time(infer_step, warmup, repeats, device)
                peak, method = _rss_peak_mb(), f"{where}: VmHWM of the whole child (clear_refs unavailable)"
            else:
                with _RssSampler() as rss:
                    train_t = _time(train_step, warmup, repeats, device)
                    infer_t = _time(infer_step, warmup, repeats, device)
                peak, method = rss.peak, f"{where}: peak RSS sampled at 1 ms (approx.)"
        (first_train, train_t), (first_infer, infer_t) = train_t, infer_t
        tokens = batch_size * seq_len
        tr = [tokens / t for t in train_t]
        inf = [tokens / t for t in infer_t]
        row.update(first_train_s=f"{first_train:.3f}", first_infer_s=f"{first_infer:.3f}",
                   graph_breaks=_graph_breaks() if compiled else "")
        row.update(train_tok_s=f"{statistics.median(tr):.1f}", train_tok_s_spread=f"{max(tr) - min(tr):.1f}",
                   infer_tok_s=f"{statistics.median(inf):.1f}", infer_tok_s_spread=f"{max(inf) - min(inf):.1f}",
                   peak_mem_mb=f"{peak:.1f}", model_mem_mb=f"{peak - base:.1f}", mem_method=method,
                   train_mfu=f"{statistics.median(tr) * train_fpt / peak_flops:.4f}",
                   infer_mfu=f"{statistics.median(inf) * infer_fpt / peak_flops:.4f}")
    except (RuntimeError, HarnessError) as exc:  # e.g. out of memory, or a length the model cannot take
        row["error"] = str(exc).splitlines()[0][:200]
    except Exception as exc:  # compiled rows: dynamo and inductor failures come in many types
        if not compiled:
            raise
        row["error"] = f"torch.compile: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


class ChildDied(HarnessError):
    """The child process ended without an answer (killed, e.g. by the out-of-memory killer, or crashed)."""


class ChildError(Exception):
    """An exception from the child that could not be sent back as itself; carries its traceback text."""


_CHILD_CODE = ("import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); "
               "from harness.bench import _child_main; _child_main(int(sys.argv[1]))")


def _child_main(result_fd: int) -> None:
    """The child's side of call_in_child: the job comes on stdin, the answer goes to result_fd."""
    threads, fn, args, kwargs = pickle.load(sys.stdin.buffer)
    torch.set_num_threads(threads)
    try:
        result = ("ok", fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        result = ("raise", exc, traceback.format_exc())
    try:
        data = pickle.dumps(result)
    except Exception:  # noqa: BLE001 (pickling an unpicklable result or exception raises many kinds)
        data = pickle.dumps(("raise", ChildError(result[-1] if result[0] == "raise" else "unpicklable result"), ""))
    with os.fdopen(result_fd, "wb") as f:
        f.write(data)


def call_in_child(fn, *args, child_env: dict | None = None, **kwargs):
    """fn(*args, **kwargs) in a fresh Python process (`python -c`, this interpreter and sys.path, stdout and
    stderr shared) with this process's torch thread count and environment (plus child_env). Returns its result
    or re-raises its exception here; raises ChildDied when the child ends without answering. fn must be
    importable by name (module level)."""
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD_CODE, str(write_fd)], stdin=subprocess.PIPE,
                                pass_fds=(write_fd,), env={**os.environ, **(child_env or {})})
    finally:
        os.close(write_fd)  # only the child holds the writing end now: the read below ends when it exits
    try:
        proc.stdin.write(pickle.dumps(list(sys.path)) + pickle.dumps((torch.get_num_threads(), fn, args, kwargs)))
        proc.stdin.close()
    except BrokenPipeError:  # the child is already gone; its exit status says why
        pass
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    code = proc.wait()
    try:
        message = pickle.loads(data) if data else None
    except Exception as exc:  # noqa: BLE001 (unpickling a truncated or odd answer raises many kinds)
        if code == 0:
            raise ChildError(f"child's answer could not be read: {exc!r}") from None
        message = None  # it died while writing
    if message is None:
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
            if -code == signal.SIGKILL:
                how += " (out of memory?)"
        else:
            how = f"exited with status {code}"
        raise ChildDied(f"child process {proc.pid} {how} before reporting")
    if message[0] == "raise":
        raise message[1]
    return message[1]


def bench_one(name, preset, seq_len, batch_size, warmup, repeats, device, peak_flops, model_args=None,
              in_process=False, compiled=False) -> dict:
    """One row of bench.csv. On the CPU (unless in_process) it is measured in a fresh child process."""
    if in_process or device.type != "cpu":
        return _measure(name, preset, seq_len, batch_size, warmup, repeats, device, peak_flops, model_args,
                        compiled=compiled)
    try:
        if not compiled:
            return call_in_child(_measure, name, preset, seq_len, batch_size, warmup, repeats, device, peak_flops,
                                 model_args, in_child=True)
        # an empty inductor cache of its own: the first step pays the whole compilation, as on a fresh machine,
        # whatever earlier runs left in the shared cache
        with tempfile.TemporaryDirectory(prefix="bench-inductor-") as cache:
            row = call_in_child(_measure, name, preset, seq_len, batch_size, warmup, repeats, device, peak_flops,
                                model_args, in_child=True, compiled=True,
                                child_env={"TORCHINDUCTOR_CACHE_DIR": cache})
            row["compile_cache"] = "empty"
            return row
    except ChildDied as exc:
        row = _base_row(name, preset, seq_len, batch_size, repeats, device, peak_flops, compiled)
        row.update(pid="", error=str(exc)[:200])
        return row


def check_switches(switches) -> None:
    if "compile" in switches:
        raise HarnessError("compile is not a --switches entry: measure it with --compile both (eager and compiled "
                           "steps timed after a warm-up that includes compilation)")
    unknown = sorted(set(switches) - set(SWITCHES))
    if unknown:
        raise HarnessError(f"unknown switch(es) {', '.join(unknown)}; known: {', '.join(SWITCHES)}")


def switch_runs(models, preset, switches, steps, device_name, data_file) -> list[dict]:
    from harness.data_catalog import default_text
    from harness.runner import RunConfig, run

    check_switches(switches)
    data = str(default_text(data_file))  # --data-file, else pg19 from $HARNESS_DATA_DIR or the cache
    device = resolve_device(device_name)
    rows = []
    for model in models:
        for switch in switches:
            if switch == "amp" and device.type != "cuda":
                print(f"note: switch amp measured on CUDA only; skipped on {device}")
                continue
            for state in ("off", "on"):
                on = state == "on"
                kw = dict(compile=False, prefetch=0 if switch == "prefetch" else 2, eval_every=0, eval_batches=4,
                          amp=True)
                if switch == "prefetch":
                    kw["prefetch"] = 2 if on else 0
                elif switch == "eval":
                    kw["eval_every"] = 5 if on else 0
                elif switch == "amp":
                    kw["amp"] = on
                runs = []
                for n_steps in (steps, 2 * steps):  # the difference cancels one-off costs (start-up, data loading)
                    with tempfile.TemporaryDirectory() as tmp:
                        cfg = RunConfig(model=model, task="bytes", preset=preset, steps=n_steps, data_file=data,
                                        device=device_name, output_path=tmp, update_leaderboard=False,
                                        progress=False, test=False, checkpoint_every=0, **kw)
                        runs.append(run(cfg)[0])
                (short, long_), extra = runs, runs[1]["training"]["tokens_seen"] - runs[0]["training"]["tokens_seen"]
                d_train = long_["training"]["train_time_s"] - short["training"]["train_time_s"]
                d_wall = long_["wall_time_s"] - short["wall_time_s"]
                rows.append({"model": model, "preset": preset, "device": str(device), "switch": switch,
                             "state": state, "steps": f"{steps}->{2 * steps}",
                             "train_tok_s": round(extra / d_train, 1) if d_train > 0 else float("nan"),
                             "wall_tok_s": round(extra / d_wall, 1) if d_wall > 0 else float("nan")})
                print(f"  {model:<18} {switch:<9} {state:<3}  train {rows[-1]['train_tok_s']:>10,.0f} tok/s   "
                      f"wall {rows[-1]['wall_tok_s']:>10,.0f} tok/s")
    return rows


def _log_row(row: dict, log) -> None:
    tag = f"{row['model']:<18} T={row['seq_len']:<6}" + (" compiled" if row["compile"] == "on" else "")
    if row["error"]:
        log(f"  {tag} error: {row['error']}")
        return
    log(f"  {tag} train {float(row['train_tok_s']):>10,.0f} tok/s "
        f"(±{float(row['train_tok_s_spread']) / 2:,.0f})  infer {float(row['infer_tok_s']):>10,.0f} "
        f"tok/s  mem {float(row['peak_mem_mb']):>8,.0f} MB (model {float(row['model_mem_mb']):,.0f})  "
        f"MFU train {float(row['train_mfu']):.2%} infer {float(row['infer_mfu']):.2%}")


def compile_table(rows: list[dict]) -> list[dict]:
    """One row per (model, seq_len) measured both ways: compiled / eager median tokens/s (training, inference),
    the first step's time each way, and the compiled run's graph breaks. A side that failed leaves the ratios
    blank and names its error."""
    pairs: dict[tuple, dict] = {}
    for r in rows:
        pairs.setdefault((r["model"], r["seq_len"]), {})[r["compile"]] = r
    out = []
    for (model, seq_len), both in pairs.items():
        off, on = both.get("off"), both.get("on")
        if off is None or on is None:
            continue
        row = {"model": model, "seq_len": seq_len, "error": "; ".join(
            f"{side}: {r['error']}" for side, r in (("eager", off), ("compiled", on)) if r["error"])}
        if not row["error"]:
            row.update(train_tok_s_off=off["train_tok_s"], train_tok_s_on=on["train_tok_s"],
                       train_speedup=f"{float(on['train_tok_s']) / float(off['train_tok_s']):.2f}",
                       infer_tok_s_off=off["infer_tok_s"], infer_tok_s_on=on["infer_tok_s"],
                       infer_speedup=f"{float(on['infer_tok_s']) / float(off['infer_tok_s']):.2f}",
                       first_train_s_off=off["first_train_s"], first_train_s_on=on["first_train_s"],
                       model_mem_mb_off=off["model_mem_mb"], model_mem_mb_on=on["model_mem_mb"],
                       graph_breaks=on["graph_breaks"])
        out.append(row)
    return out


def _write_csv(path: Path, columns, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for model in sorted({r["model"] for r in rows}):
        pts = sorted((r for r in rows if r["model"] == model and not r["error"]), key=lambda r: r["seq_len"])
        if not pts:
            continue
        for ax, key in zip(axes, ("train_tok_s", "infer_tok_s")):
            ax.plot([r["seq_len"] for r in pts], [float(r[key]) for r in pts], marker="o", label=model)
    for ax, title in zip(axes, ("training (fwd+bwd+step)", "inference (forward)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("tokens/s (median)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(models, preset="tiny", seq_lens=(256, 1024, 4096), batch_size=1, warmup=2, repeats=5, device="auto",
         switches=(), switch_steps=20, data_file=None, output_dir="results/bench", log=print, model_args=None,
         in_process=False, compile_mode="off") -> tuple[Path, ...]:
    if warmup < 0 or repeats < 1 or batch_size < 1 or min(seq_lens) < 1:
        raise HarnessError("--warmup must be >= 0, --repeats, --batch-size and --seq-lens >= 1")
    if compile_mode not in COMPILE_MODES:
        raise HarnessError(f"--compile takes off, on or both, got {compile_mode!r}")
    if compile_mode != "off" and warmup < 1:
        raise HarnessError("--compile on/both needs --warmup >= 1: compilation happens in the first steps, which "
                           "must not be timed")
    check_switches(switches)  # before any row is measured
    names = MODELS.names() if models in (["all"], "all") else [MODELS.resolve(m).name for m in models]
    dev = resolve_device(device)
    out = Path(output_dir)
    peak = matmul_peak_flops(dev)
    log(f"device {dev}, {torch.get_num_threads()} threads; measured matmul peak "
        f"{peak / 1e9:,.1f} GFLOP/s ({'bf16' if dev.type == 'cuda' else 'fp32'})")
    rows = []
    for name in names:
        for seq_len in seq_lens:
            for compiled in COMPILE_MODES[compile_mode]:
                row = bench_one(name, preset, seq_len, batch_size, warmup, repeats, dev, peak, model_args, in_process,
                                compiled)
                rows.append(row)
                _log_row(row, log)
    csv_path = out / "bench.csv"
    _write_csv(csv_path, COLUMNS, rows)
    plot_path = plot([r for r in rows if r["compile"] == "off"] or rows, out / "bench_tokens_per_s.png")
    log(f"bench -> {csv_path}\nplot -> {plot_path}")
    paths = (csv_path, plot_path)
    if compile_mode == "both":
        table_path = out / "compile.csv"
        table = compile_table(rows)
        _write_csv(table_path, COMPILE_COLUMNS, table)
        log("compiled / eager (median tokens/s after the warm-up):")
        for r in table:
            if r["error"]:
                log(f"  {r['model']:<18} T={r['seq_len']:<6} {r['error']}")
            else:
                log(f"  {r['model']:<18} T={r['seq_len']:<6} train {r['train_speedup']}x  infer {r['infer_speedup']}x"
                    f"  first step {r['first_train_s_on']} s (eager {r['first_train_s_off']} s)  "
                    f"graph breaks {r['graph_breaks']}")
        log(f"compile on/off -> {table_path}")
        paths += (table_path,)
    if switches:
        log("performance switches (off vs on):")
        srows = switch_runs(names, preset, list(switches), switch_steps, device, data_file)
        switch_path = out / "switches.csv"
        _write_csv(switch_path, SWITCH_COLUMNS, srows)
        log(f"switches -> {switch_path}")
        paths += (switch_path,)
    return paths
