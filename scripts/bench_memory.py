"""Training throughput (tokens/s of forward + backward + AdamW step) on the CPU:

  1. our neural-memory layer (models.titans.memory.NeuralMemory) against titans-pytorch's NeuralMemory at the
     same width, heads, chunk size, momentum + decay and a depth-2 memory MLP (expansion 2);
  2. titans-mac tiny against transformer-pp tiny (the harness's tiny training shape, batch 16 x 128 tokens).

Pair 1 runs at every chunk size of --chunks (default 16, 32, 64; the tiny preset's is 16). The two libraries
give "chunk size" different work: here every token's write updates the memory state (per-token momentum and
decay, each token read after its own write; the chunk only fixes the weights the gradients are taken at), while
titans-pytorch sums a chunk's gradients into one update (momentum and decay scanned over chunks) and reads
with one set of weights per chunk. Our cost per token is about constant in the chunk size; theirs falls as the
chunk grows, so the ratio is reported per chunk size, not as one number.

The two sides of each pair are timed in alternating rounds (the machine may be shared) and the medians are
printed. titans-pytorch is an optional `bench` extra: install it in a separate environment and run this script
with that environment's python, e.g.
    /work/venv-bench/bin/python scripts/bench_memory.py
Without it, pair 1 is reported as not measured (nothing is substituted).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.adapter import build_model
from models.titans.memory import NeuralMemory


def _contiguous_params(module):
    # titans-pytorch's per-head learned memory weights are stride-0 expanded views; AdamW needs real storage.
    for p in module.parameters():
        if not p.is_contiguous() or 0 in p.stride():
            p.data = p.data.contiguous()


class Side:
    """A model with its optimizer and a fixed batch; `steps(n)` runs n training steps, returns seconds."""

    def __init__(self, name, model, make_batch, loss_fn, tokens_per_step):
        _contiguous_params(model)
        self.name, self.model, self.loss_fn, self.tokens = name, model, loss_fn, tokens_per_step
        self.batch = make_batch()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def steps(self, n):
        """Runs n steps; returns (wall seconds, this process's CPU seconds). With 1 thread the CPU time leaves
        out the time spent waiting for a core on a shared machine."""
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            loss = self.loss_fn(self.model, self.batch)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return time.perf_counter() - start, time.process_time() - cpu


def alternate(a: Side, b: Side, rounds: int, steps: int, warmup: int = 2):
    a.steps(warmup), b.steps(warmup)
    rates = {a.name: [], b.name: []}
    cpu_rates = {a.name: [], b.name: []}
    for r in range(rounds):
        order = (a, b) if r % 2 == 0 else (b, a)
        for side in order:
            wall, cpu = side.steps(steps)
            rates[side.name].append(side.tokens * steps / wall)
            cpu_rates[side.name].append(side.tokens * steps / cpu)
    return {k: statistics.median(v) for k, v in rates.items()}, rates, cpu_rates


def report(med, raw, cpu, a, b, target):
    """Wall-clock medians (the headline), plus the median of the per-round ratios (each round times both sides
    back to back), the ratio of CPU-time medians and the ratio of each side's fastest round. On a shared machine
    the other users' load can slow the two sides unequally (on the 2-core development machine it slowed ours
    about twice as much as titans-pytorch's), so the fastest rounds tell what a quiet machine gives and the
    medians what this one gave."""
    for k, v in med.items():
        print(f"  {k:20s} median {v:10.0f} tokens/s   rounds: {', '.join(f'{x:.0f}' for x in raw[k])}")
    paired = [x / y for x, y in zip(raw[a], raw[b])]
    cpu_ratio = statistics.median(cpu[a]) / statistics.median(cpu[b])
    print(f"  ratio {a} / {b} = {med[a] / med[b]:.2f}  (target >= {target}); per-round ratios: median "
          f"{statistics.median(paired):.2f}, range {min(paired):.2f}-{max(paired):.2f}; "
          f"CPU-time medians: {statistics.median(cpu[a]):.0f} vs {statistics.median(cpu[b]):.0f} tokens/s, "
          f"ratio {cpu_ratio:.2f}; fastest rounds: {max(raw[a]):.0f} vs {max(raw[b]):.0f} tokens/s, "
          f"ratio {max(raw[a]) / max(raw[b]):.2f}")


def memory_pair(args, chunk):
    try:
        from titans_pytorch import NeuralMemory as RefMemory
    except ImportError:
        print("pair 1: titans-pytorch is not installed in this environment; not measured")
        return None
    dim, heads, B, T = args.dim, args.heads, args.batch, args.seq
    torch.manual_seed(0)
    ours = NeuralMemory(dim, heads, depth=2, expansion=2, chunk_size=chunk, momentum=True, decay=True)
    theirs = RefMemory(dim=dim, dim_head=dim // heads, heads=heads, chunk_size=chunk, momentum=True,
                       default_model_kwargs={"depth": 2, "expansion_factor": 2.0})
    make = lambda: torch.randn(B, T, dim)
    a = Side("ours", ours, make, lambda m, x: m(x)[0].pow(2).mean(), B * T)
    b = Side("titans-pytorch", theirs, make, lambda m, x: m(x)[0].pow(2).mean(), B * T)
    print(f"pair 1: memory layer dim={dim} heads={heads} chunk={chunk} depth-2 MLP, batch {B} x {T} tokens; "
          f"params ours {sum(p.numel() for p in ours.parameters())}, "
          f"titans-pytorch {sum(p.numel() for p in theirs.parameters())}")
    med, raw, cpu = alternate(a, b, args.rounds, args.steps)
    report(med, raw, cpu, "ours", "titans-pytorch", 2)
    return med


def model_pair(args):
    B, T = 16, 128
    torch.manual_seed(0)
    ce = torch.nn.functional.cross_entropy

    def loss(m, batch):
        logits, aux = m(batch[0])
        return ce(logits.reshape(-1, logits.shape[-1]), batch[1].reshape(-1)) + aux

    make = lambda: (torch.randint(0, 256, (B, T)), torch.randint(0, 256, (B, T)))
    a = Side("titans-mac tiny", build_model("titans-mac", "tiny", 256), make, loss, B * T)
    b = Side("transformer-pp tiny", build_model("transformer-pp", "tiny", 256), make, loss, B * T)
    print(f"pair 2: LMs at preset tiny, batch {B} x {T} tokens; "
          f"params titans-mac {a.model.num_parameters()}, "
          f"transformer-pp {b.model.num_parameters()}")
    med, raw, cpu = alternate(a, b, args.rounds, args.steps)
    report(med, raw, cpu, "titans-mac tiny", "transformer-pp tiny", 0.5)
    return med


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest when shared)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per side")
    ap.add_argument("--steps", type=int, default=3, help="training steps per round")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--chunks", default="16,32,64", help="comma-separated chunk sizes for pair 1")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--only", choices=["memory", "models"], default=None, help="run one pair only")
    args = ap.parse_args()
    try:
        chunks = [int(c) for c in args.chunks.split(",")]
    except ValueError:
        ap.error(f"--chunks takes comma-separated positive integers, got {args.chunks!r}")
    if any(c < 1 or args.seq % c for c in chunks):
        ap.error(f"every chunk size must be >= 1 and divide --seq {args.seq}; got {args.chunks}")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds x {args.steps} steps")
    if args.only in (None, "memory"):
        rows = []
        for chunk in chunks:
            med = memory_pair(args, chunk)
            if med is None:
                break
            rows.append((chunk, med["ours"], med["titans-pytorch"]))
        if len(rows) > 1:
            print("pair 1 summary (wall-clock medians, tokens/s):")
            for chunk, ours, theirs in rows:
                print(f"  chunk {chunk:3d}: ours {ours:8.0f}  titans-pytorch {theirs:8.0f}  ratio {ours / theirs:.2f}")
    if args.only in (None, "models"):
        model_pair(args)


if __name__ == "__main__":
    main()
