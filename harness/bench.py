"""Throughput benchmark: `harness bench --models all --preset tiny --seq-lens 256,1024,4096`.

Per model and sequence length, on random tokens of one batch (--batch-size x seq_len):
- training tokens/s: one forward + backward + AdamW step, timed after --warmup untimed steps, --repeats times;
- inference tokens/s: one no-grad forward, the same way;
- peak memory: on CUDA torch.cuda.max_memory_allocated over the measured steps; on the CPU the peak resident set
  size sampled every millisecond by a thread while the steps run (approximate: short peaks can be missed);
- MFU = model FLOP/s / measured peak FLOP/s. The peak is measured here: the best of several large matmuls
  (fp32 on the CPU, bf16 on CUDA). Model FLOPs per token (PaLM appendix B convention, non-causal):
      training  6 N + 12 L d T_eff      inference  2 N + 4 L d T_eff
  with N = parameters outside embedding tables, and the attention term only for attention models (streaming
  "window"), L layers, width d, T_eff = min(T, model.max_context). Recurrent models get 6N / 2N only, which
  undercounts their scan work, so their MFU is a lower bound.
Medians and spread (max - min over the repeats) are written to <output-dir>/bench.csv; the plot of tokens/s
against sequence length to <output-dir>/bench_tokens_per_s.png.

Performance switches (`--switches compile,prefetch,eval,amp`): each runs the real training loop (runner.run,
task `bytes` on ../shared/data/pg19, --switch-steps steps at the preset's batch and length, no test scoring)
with the switch off and on, and prints/writes steady-state tokens/s to <output-dir>/switches.csv: each setting
runs S and 2S steps and reports the extra tokens over the extra time, which cancels one-off costs (compilation,
model build, data loading); "train" is training-loop time (batch waits included, evaluation excluded), "wall"
includes periodic evaluation. compile = torch.compile; prefetch = background batch prefetch (depth
2 vs 0); eval = validation every 5 steps with 4 batches vs only at the end; amp = bf16 autocast + TF32 (CUDA
only).
"""

from __future__ import annotations

import csv
import os
import statistics
import threading
import time
from pathlib import Path

import torch

from harness.adapter import build_model
from harness.errors import HarnessError
from harness.registry import MODELS
from harness.runner import resolve_device

COLUMNS = ["model", "preset", "device", "seq_len", "batch_size", "params", "flops_params", "train_tok_s",
           "train_tok_s_spread", "infer_tok_s", "infer_tok_s_spread", "peak_mem_mb", "mem_method", "train_mfu",
           "infer_mfu", "peak_flops", "flops_formula", "repeats", "error"]
SWITCH_COLUMNS = ["model", "preset", "device", "switch", "state", "steps", "train_tok_s", "wall_tok_s"]
SWITCHES = ("compile", "prefetch", "eval", "amp")


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


def flops_per_token(model, seq_len: int) -> tuple[int, float, float, str]:
    """(N, training FLOPs/token, inference FLOPs/token, formula used)."""
    n = model.num_parameters(exclude_embeddings=True)
    cfg = model.config
    layers = next((getattr(cfg, k) for k in ("depth", "n_layers", "num_layers", "layers") if hasattr(cfg, k)), None)
    width = next((getattr(cfg, k) for k in ("dim", "d_model", "hidden_size", "width") if hasattr(cfg, k)), None)
    if type(model).streaming == "window" and layers and width:
        t_eff = min(seq_len, model.max_context or seq_len)
        return (n, 6 * n + 12 * layers * width * t_eff, 2 * n + 4 * layers * width * t_eff,
                f"6N+12*L*d*T (L={layers}, d={width}, T={t_eff})")
    return n, 6 * n, 2 * n, "6N (no attention term)"


def _time(fn, warmup: int, repeats: int, device) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def bench_one(name, preset, seq_len, batch_size, warmup, repeats, device, peak_flops) -> dict:
    row = {"model": name, "preset": preset, "device": str(device), "seq_len": seq_len, "batch_size": batch_size,
           "peak_flops": f"{peak_flops:.4g}", "repeats": repeats, "error": ""}
    try:
        torch.manual_seed(0)
        model = build_model(name, preset, 256).to(device)
        n, train_fpt, infer_fpt, formula = flops_per_token(model, seq_len)
        row.update(params=model.num_parameters(), flops_params=n, flops_formula=formula)
        ids = torch.randint(0, 256, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(0)).to(device)
        x, y = ids[:, :-1], ids[:, 1:]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else \
            (lambda: torch.autocast("cpu", enabled=False))

        def train_step():
            with autocast():
                logits, aux = model(x)
                loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            (loss + aux).backward()
            opt.step()

        @torch.no_grad()
        def infer_step():
            with autocast():
                model(x)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            train_t = _time(train_step, warmup, repeats, device)
            infer_t = _time(infer_step, warmup, repeats, device)
            peak, method = torch.cuda.max_memory_allocated(device) / 2 ** 20, "cuda.max_memory_allocated"
        else:
            with _RssSampler() as rss:
                train_t = _time(train_step, warmup, repeats, device)
                infer_t = _time(infer_step, warmup, repeats, device)
            peak, method = rss.peak, "peak RSS sampled at 1 ms (approx.)"
        tokens = batch_size * seq_len
        tr = [tokens / t for t in train_t]
        inf = [tokens / t for t in infer_t]
        row.update(train_tok_s=f"{statistics.median(tr):.1f}", train_tok_s_spread=f"{max(tr) - min(tr):.1f}",
                   infer_tok_s=f"{statistics.median(inf):.1f}", infer_tok_s_spread=f"{max(inf) - min(inf):.1f}",
                   peak_mem_mb=f"{peak:.1f}", mem_method=method,
                   train_mfu=f"{statistics.median(tr) * train_fpt / peak_flops:.4f}",
                   infer_mfu=f"{statistics.median(inf) * infer_fpt / peak_flops:.4f}")
    except (RuntimeError, HarnessError) as exc:  # e.g. out of memory, or a length the model cannot take
        row["error"] = str(exc).splitlines()[0][:200]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def switch_runs(models, preset, switches, steps, device_name, data_file) -> list[dict]:
    import tempfile

    from harness.regress import DEFAULT_DATA
    from harness.runner import RunConfig, run

    unknown = sorted(set(switches) - set(SWITCHES))
    if unknown:
        raise HarnessError(f"unknown switch(es) {', '.join(unknown)}; known: {', '.join(SWITCHES)}")
    data = data_file or str(DEFAULT_DATA)
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
                if switch == "compile":
                    kw["compile"] = on
                elif switch == "prefetch":
                    kw["prefetch"] = 2 if on else 0
                elif switch == "eval":
                    kw["eval_every"] = 5 if on else 0
                elif switch == "amp":
                    kw["amp"] = on
                runs = []
                for n_steps in (steps, 2 * steps):  # the difference cancels one-off costs (compilation, start-up)
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
         switches=(), switch_steps=20, data_file=None, output_dir="results/bench", log=print) -> tuple[Path, ...]:
    if warmup < 0 or repeats < 1 or batch_size < 1 or min(seq_lens) < 1:
        raise HarnessError("--warmup must be >= 0, --repeats, --batch-size and --seq-lens >= 1")
    names = MODELS.names() if models in (["all"], "all") else [MODELS.resolve(m).name for m in models]
    dev = resolve_device(device)
    out = Path(output_dir)
    peak = matmul_peak_flops(dev)
    log(f"device {dev}, {torch.get_num_threads()} threads; measured matmul peak "
        f"{peak / 1e9:,.1f} GFLOP/s ({'bf16' if dev.type == 'cuda' else 'fp32'})")
    rows = []
    for name in names:
        for seq_len in seq_lens:
            row = bench_one(name, preset, seq_len, batch_size, warmup, repeats, dev, peak)
            rows.append(row)
            if row["error"]:
                log(f"  {name:<18} T={seq_len:<6} error: {row['error']}")
            else:
                log(f"  {name:<18} T={seq_len:<6} train {float(row['train_tok_s']):>10,.0f} tok/s "
                    f"(±{float(row['train_tok_s_spread']) / 2:,.0f})  infer {float(row['infer_tok_s']):>10,.0f} "
                    f"tok/s  mem {float(row['peak_mem_mb']):>8,.0f} MB  MFU train {float(row['train_mfu']):.2%} "
                    f"infer {float(row['infer_mfu']):.2%}")
    csv_path = out / "bench.csv"
    _write_csv(csv_path, COLUMNS, rows)
    plot_path = plot(rows, out / "bench_tokens_per_s.png")
    log(f"bench -> {csv_path}\nplot -> {plot_path}")
    paths = (csv_path, plot_path)
    if switches:
        log("performance switches (off vs on):")
        srows = switch_runs(names, preset, list(switches), switch_steps, device, data_file)
        switch_path = out / "switches.csv"
        _write_csv(switch_path, SWITCH_COLUMNS, srows)
        log(f"switches -> {switch_path}")
        paths += (switch_path,)
    return paths
