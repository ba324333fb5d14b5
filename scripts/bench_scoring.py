"""BABILong choice scoring time of a "window" attention model: the key/value-cache state vs the token-tail state.

    python scripts/bench_scoring.py                                  # transformer-pp tiny, 500 samples at 0k
    python scripts/bench_scoring.py --model moe --samples 100 --length 1k --threads 2

Trains nothing: the model is built at its preset with random (untrained) weights, which cost the same to run as
trained ones; the scores are meaningless as accuracy but the two paths must give the same ones. Samples come from
the built-in generator (`tasks.babilong.task.build(source="generator")`, default word tokenizer), split evenly
over qa1..qa5, and are scored as `BabilongTask.evaluate` scores them in its batched form: each task's samples
sorted by prompt length, cut into groups of even size <= eval_batch, streamed in lockstep (`stream_prompts`,
segments of `task.segment_length`) and each sample's candidates scored in one call (`score_candidates`).

Paths: "kv-cache" is the model as built (`kv_cache=True`, the default: a call costs its new tokens only);
"token-tail" is the same weights with `kv_cache=False` (every call re-reads the window, candidates re-read the
prompt). The table gives seconds and samples/s per path (sample building, encoding and a warm-up on the first
eval_batch samples are not timed), the largest |difference| of a candidate log-likelihood from the kv-cache
path's, and from the one-call reference `score_choices_full` on the first `--check` samples. Timings go here,
never into tests.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch

from harness.adapter import build_model
from tasks.babilong.common import TASKS
from tasks.babilong.streaming import argmax_first, score_candidates, score_choices_full, stream_prompts
from tasks.babilong.task import DEFAULT_EVAL_BATCH
from tasks.babilong.task import build as build_task


def score_all(model, task, cases, seg_len: int, eval_batch: int, device) -> list[list[float]]:
    """Candidate log-likelihoods of every case (task name, prompt ids), grouped as the task's batched path does."""
    scores: list[list[float] | None] = [None] * len(cases)
    for name in task.tasks:
        idx = sorted((i for i, c in enumerate(cases) if c[0] == name), key=lambda i: len(cases[i][1]))
        if not idx:
            continue
        n_groups = -(-len(idx) // eval_batch)
        bounds = [len(idx) * g // n_groups for g in range(n_groups + 1)]
        for lo, hi in itertools.pairwise(bounds):
            group = idx[lo:hi]
            for k, first, state in stream_prompts(model, [cases[i][1] for i in group], seg_len, device):
                scores[group[k]] = score_candidates(model, first, state, task._candidates[name], device)
    return scores


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="transformer-pp", help="a window model with a kv_cache switch")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--samples", type=int, default=500, help="in all, split evenly over --tasks")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--length", default="0k")
    ap.add_argument("--eval-batch", type=int, default=DEFAULT_EVAL_BATCH)
    ap.add_argument("--seq-len", type=int, default=128, help="the training context (segment_length's input)")
    ap.add_argument("--check", type=int, default=20, help="samples also scored with the one-call reference")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    names = args.tasks.split(",")
    per_task = -(-args.samples // len(names))
    task = build_task(source="generator", tasks=args.tasks, lengths=args.length, samples=per_task,
                      long_samples=per_task, seed=args.seed)
    length, tokens = task.lengths[0]
    cases = [(name, task.codec.encode(s.prompt())) for name in task.tasks
             for s in task.eval_samples(name, length, tokens, per_task)][:args.samples]

    torch.manual_seed(args.seed)
    models = {"kv-cache": build_model(args.model, args.preset, task.vocab_size, overrides={"kv_cache": True}),
              "token-tail": build_model(args.model, args.preset, task.vocab_size, overrides={"kv_cache": False})}
    models["token-tail"].load_state_dict(models["kv-cache"].state_dict())
    for m in models.values():
        m.to(args.device).eval()
    seg_len = task.segment_length(models["kv-cache"], args.seq_len)
    prompt_lengths = sorted(len(p) for _, p in cases)
    print(f"{args.model} {args.preset} (untrained), {len(cases)} samples at {length} ({', '.join(task.tasks)}), "
          f"prompt tokens {prompt_lengths[0]}..{prompt_lengths[-1]} (median {prompt_lengths[len(cases) // 2]}), "
          f"window {models['kv-cache'].max_context}, seg_len {seg_len}, eval_batch {args.eval_batch}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}")

    window = models["kv-cache"].max_context
    longest = max(len(p) + max(map(len, task._candidates[name])) for name, p in cases)
    if window and longest > window:  # past the window the two paths differ by design (adapter.py, "window")
        print(f"note: samples up to {longest} tokens exceed the {window}-token window; past it the two paths "
              f"window differently (kv-cache: by position, see the model's docstring; token-tail: strides of half "
              f"a window re-read), so their scores differ, and the one-call reference is skipped")
        args.check = 0
    reference = [score_choices_full(models["kv-cache"], p, task._candidates[name], args.device)
                 for name, p in cases[:args.check]]
    results = {}
    for path, model in models.items():
        score_all(model, task, cases[:args.eval_batch], seg_len, args.eval_batch, args.device)  # warm-up, untimed
        t0 = time.perf_counter()
        scores = score_all(model, task, cases, seg_len, args.eval_batch, args.device)
        results[path] = (time.perf_counter() - t0, scores)

    base = results["kv-cache"][1]
    print(f"\n| path | samples | seconds | samples/s | max abs score diff vs kv-cache | "
          f"max abs score diff vs one call ({len(reference)} samples) |")
    print("|---|---|---|---|---|---|")
    for path, (seconds, scores) in results.items():
        vs_full = max_diff(scores[:len(reference)], reference) if reference else float("nan")
        print(f"| {path} | {len(cases)} | {seconds:.1f} | {len(cases) / seconds:.1f} | "
              f"{max_diff(scores, base):.2e} | {vs_full:.2e} |")
    speedup = results["token-tail"][0] / results["kv-cache"][0]
    same = sum(argmax_first(a) == argmax_first(b) for a, b in zip(base, results["token-tail"][1]))
    print(f"\nspeed-up of kv-cache over token-tail: {speedup:.2f}x; same chosen label on {same}/{len(cases)} samples")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
