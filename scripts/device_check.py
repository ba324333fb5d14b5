"""GPU readiness check (issue 21): one table that says whether every model trains on a CUDA device and whether the
CUDA kernel paths agree with the CPU reference paths.

    bash scripts/device_check.sh              # on a GPU machine: installs the `cuda` extra, then runs this
    python scripts/device_check.py --dry-run  # anywhere: every step on the CPU, tiny preset, a few steps

Checks (each one row of the table; `status` is ok / FAIL / skipped, `detail` says why):
- train/<model>: `--steps` AdamW steps at `--preset` (small) on one sequence of `--seq-len` (4096) random tokens,
  bf16 autocast on CUDA (float32 on the CPU), the loss finite at every step; tokens/s over the second half of the
  steps, MFU against the measured bf16 matmul peak (harness.bench: 6N + attention FLOPs per token, a lower bound
  for recurrent models), peak memory (torch.cuda.max_memory_allocated; the process's RSS high-water mark on CPU).
- kernel/<model>: the same weights and tokens through the model on the device (where mamba-ssm, causal-conv1d or
  flash-linear-attention take over when installed) and on the CPU in float32 (the PyTorch reference path);
  max |logit difference| / max |reference logit| <= KERNEL_RTOL, TF32 off.
- titans-memory: the chunk-parallel memory (models/titans/ops.py memory_parallel, float32 on the device) against
  the token-by-token recurrence (memory_naive, float64 on the CPU), max abs difference <= MEMORY_ATOL.

`--dry-run` runs every step on the CPU (the device rows compare the CPU with itself), so the script is tested in CI.
The table is printed and written to <output-dir>/device_check.csv; the exit status is 1 if any row failed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.adapter import build_model
from harness.bench import _reset_rss_peak, _rss_peak_mb, flops_per_token, matmul_peak_flops
from harness.registry import MODELS

KERNEL_RTOL = 2e-3  # fp32 kernels vs the PyTorch path: different summation orders and chunkings
MEMORY_ATOL = 1e-4  # fp32 chunk-parallel memory vs the float64 recurrence, inputs of unit scale
KERNEL_MODELS = {"mamba2": ("mamba_ssm", "causal_conv1d"), "gated-deltanet": ("fla",)}
VOCAB = 256
COLUMNS = ("check", "status", "tokens_per_s", "mfu_pct", "peak_mem_mb", "max_rel_diff", "detail")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_row(name: str, preset: str, seq_len: int, steps: int, device: torch.device, peak_flops: float) -> dict:
    row = {"check": f"train/{name}"}
    torch.manual_seed(0)
    model = build_model(name, preset, vocab_size=VOCAB).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    tokens = torch.randint(0, VOCAB, (1, seq_len + 1), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_rss_peak()
    times = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, aux = model(tokens[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)) + aux
        if not torch.isfinite(loss):
            return {**row, "status": "FAIL", "detail": f"loss {float(loss)} at step {step}"}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    tokens_per_s = seq_len / statistics.median(times[len(times) // 2:])
    _, train_flops, _, _ = flops_per_token(model, seq_len)
    peak_mb = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else _rss_peak_mb())
    return {**row, "status": "ok", "tokens_per_s": f"{tokens_per_s:.0f}",
            "mfu_pct": f"{100 * tokens_per_s * train_flops / peak_flops:.1f}", "peak_mem_mb": f"{peak_mb:.0f}",
            "detail": f"{steps} steps, final loss {float(loss.detach()):.3f}"}


@torch.no_grad()
def kernel_row(name: str, device: torch.device) -> dict:
    """The model on the device (kernels where installed) against the CPU float32 path, same weights and tokens."""
    kernels = [m for m in KERNEL_MODELS.get(name, ()) if importlib.util.find_spec(m) is not None]
    path = (f"kernels: {', '.join(kernels)}" if kernels and device.type == "cuda" else "PyTorch path on "
            f"{device.type} (kernels {'not installed' if not kernels else 'need CUDA'})")
    torch.manual_seed(0)
    reference = build_model(name, "tiny", vocab_size=VOCAB).eval()
    tokens = torch.randint(0, VOCAB, (2, 256))
    expected, _ = reference(tokens)
    on_device = build_model(name, "tiny", vocab_size=VOCAB).eval()
    on_device.load_state_dict(reference.state_dict())
    got, _ = on_device.to(device)(tokens.to(device))
    rel = float((got.float().cpu() - expected).abs().max() / expected.abs().max())
    return {"check": f"kernel/{name}", "status": "ok" if rel <= KERNEL_RTOL else "FAIL",
            "max_rel_diff": f"{rel:.2e}", "detail": f"{path}; tolerance {KERNEL_RTOL:g}"}


def memory_row(device: torch.device) -> dict:
    from models.titans.objectives import make_bias, make_retention
    from models.titans.ops import memory_naive, memory_parallel

    g = torch.Generator().manual_seed(0)
    B, H, T, D, chunk = 2, 2, 64, 16, 16
    rand = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)
    inputs = {"q": F.normalize(rand(B, H, T, D), dim=-1), "k": F.normalize(rand(B, H, T, D), dim=-1),
              "v": rand(B, H, T, D), "theta": torch.rand(B, H, T, dtype=torch.float64, generator=g) * 0.3,
              "log_keep": torch.log(1 - 0.2 * torch.rand(B, H, T, dtype=torch.float64, generator=g)),
              "log_eta": torch.log(torch.rand(B, H, T, dtype=torch.float64, generator=g))}
    weights = [rand(B, H, D, 2 * D) / D ** 0.5, rand(B, H, 2 * D, D) / (2 * D) ** 0.5]
    bias, retention = make_bias("l2"), make_retention("decay", scale=2.0)

    def run(fn, dtype, dev):
        cast = {k: v.to(dev, dtype) for k, v in inputs.items()}
        ws = [w.to(dev, dtype) for w in weights]
        state = {"A": ws, "S": [torch.zeros_like(w) for w in ws], "G": ws, "pos": 0}
        y, _ = fn(cast["q"], cast["k"], cast["v"], cast["theta"], cast["log_keep"], cast["log_eta"], state, chunk,
                  bias, retention)
        return y.double().cpu()

    diff = float((run(memory_parallel, torch.float32, device) - run(memory_naive, torch.float64,
                                                                      torch.device("cpu"))).abs().max())
    return {"check": "titans-memory", "status": "ok" if diff <= MEMORY_ATOL else "FAIL",
            "max_rel_diff": f"{diff:.2e}", "detail": f"fp32 on {device.type} vs float64 recurrence (max abs "
                                                     f"difference; tolerance {MEMORY_ATOL:g})"}


def guarded(check: str, fn, *args) -> dict:
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - one failing model must not hide the others' rows
        traceback.print_exc(file=sys.stderr)
        return {"check": check, "status": "FAIL", "detail": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU: tiny preset, short run")
    parser.add_argument("--models", default="all", help="comma-separated registered names, or all")
    parser.add_argument("--preset", default=None, help="default: small (tiny with --dry-run)")
    parser.add_argument("--seq-len", type=int, default=None, help="default: 4096 (64 with --dry-run)")
    parser.add_argument("--steps", type=int, default=None, help="default: 50 (2 with --dry-run)")
    parser.add_argument("--output-dir", default="results/device_check")
    args = parser.parse_args(argv)
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # kernel rows in fp32
    else:
        print("no CUDA device: run on a GPU machine, or use --dry-run to check every step on the CPU", file=sys.stderr)
        return 2
    preset = args.preset or ("tiny" if args.dry_run else "small")
    seq_len = args.seq_len or (64 if args.dry_run else 4096)
    steps = args.steps or (2 if args.dry_run else 50)
    names = MODELS.names() if args.models == "all" else [MODELS.resolve(n).name for n in args.models.split(",")]
    peak = matmul_peak_flops(device)  # fp32 on the CPU, bf16 on CUDA
    rows = [guarded(f"train/{n}", train_row, n, preset, seq_len, steps, device, peak) for n in names]
    rows += [guarded(f"kernel/{n}", kernel_row, n, device) for n in names if n in KERNEL_MODELS]
    rows.append(guarded("titans-memory", memory_row, device))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "device_check.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: r.get(c, "") for c in COLUMNS} for r in rows)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"device check on {name}: preset {preset}, seq_len {seq_len}, {steps} steps, peak {peak / 1e12:.1f} "
          f"TFLOP/s measured")
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in COLUMNS}
    print("  ".join(c.ljust(widths[c]) for c in COLUMNS))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in COLUMNS))
    print(f"table -> {out / 'device_check.csv'}")
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
