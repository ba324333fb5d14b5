"""The chunked gated delta rule on the CPU: the harness' `chunk_gated_delta_rule_torch` against transformers'
`torch_chunk_gated_delta_rule` (Qwen3-Next), at the shapes the gated-deltanet presets run, forward and
forward + backward, with the largest difference between their outputs.

    python scripts/bench_gated_delta.py                 # tiny and small training shapes, 2 threads
    python scripts/bench_gated_delta.py --threads 1 --repeats 10

Prints one table; the figures decide which implementation baselines/gated_deltanet/ops.py uses on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from baselines.gated_deltanet.ops import chunk_gated_delta_rule_torch

# (name, batch, tokens, heads, head dim): the presets' per-layer shapes in training (tiny: the CPU budgets' 32 x 128;
# small: one 1,024-token sequence, as `harness bench --preset small --seq-lens 1024`)
SHAPES = (("tiny", 32, 128, 2, 64), ("tiny T=1024", 4, 1024, 2, 64), ("small", 1, 1024, 4, 128))


def library():
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

    return lambda q, k, v, g, beta: torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64)


def inputs(b, t, h, d, grad):
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, t, h, d) for _ in range(3))
    k = F.normalize(k, dim=-1)  # the layer feeds l2-normalised keys and queries
    q = F.normalize(q, dim=-1)
    g = -F.softplus(torch.randn(b, t, h))  # log decay <= 0
    beta = torch.rand(b, t, h)
    return [x.requires_grad_(grad) for x in (q, k, v, g, beta)]


def timed(fn, args, backward, repeats):
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        out = fn(*args)[0]
        if backward:
            out.sum().backward()
        if i:  # the first call warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours = lambda q, k, v, g, beta: chunk_gated_delta_rule_torch(q, k, v, g, beta, chunk_size=64)
    theirs = library()
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} calls, chunk 64, float32")
    print(f"{'shape':<13}{'B x T x H x D':>18}{'pass':>10}{'harness ms':>12}{'transformers ms':>17}{'ratio':>8}"
          f"{'max |diff|':>12}")
    for name, b, t, h, d in SHAPES:
        with torch.no_grad():
            x = inputs(b, t, h, d, False)
            diff = (ours(*x)[0] - theirs(*x)[0]).abs().max().item()
        for backward in (False, True):
            x = inputs(b, t, h, d, backward)
            ctx = torch.enable_grad() if backward else torch.no_grad()
            with ctx:
                ms_ours = timed(ours, x, backward, args.repeats)
                ms_theirs = timed(theirs, x, backward, args.repeats)
            print(f"{name:<13}{f'{b} x {t} x {h} x {d}':>18}{'fwd+bwd' if backward else 'fwd':>10}{ms_ours:>12.1f}"
                  f"{ms_theirs:>17.1f}{ms_theirs / ms_ours:>8.2f}{diff:>12.1e}")
    print("ratio = transformers / harness time (above 1: the harness' version is faster)")


if __name__ == "__main__":
    main()
