"""`harness bench` runs on a tiny configuration and writes its CSV and plot (no timing is asserted); the batch
prefetcher keeps the exact batch order, so training with and without it is bit-identical."""

import csv

import pytest
import torch

from harness.adapter import build_model
from harness.bench import COLUMNS, flops_per_token, main
from harness.prefetch import BatchPrefetcher
from harness.runner import RunConfig, run


def test_bench_writes_csv_and_plot(tmp_path):
    csv_path, plot_path = main(["transformer-pp"], preset="tiny", seq_lens=[16, 32], batch_size=1, warmup=1,
                               repeats=2, device="cpu", output_dir=str(tmp_path), log=lambda *_: None)
    with open(csv_path) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert [int(r["seq_len"]) for r in rows] == [16, 32] and not any(r["error"] for r in rows)
    assert all(float(r["train_tok_s"]) > 0 and float(r["infer_tok_s"]) > 0 and 0 < float(r["train_mfu"]) for r in rows)
    assert plot_path.read_bytes()[:4] == b"\x89PNG"


def test_flops_formula_for_attention_models():
    model = build_model("transformer-pp", "tiny", 256)
    n, train, infer, formula = flops_per_token(model, 128)
    assert n < model.num_parameters() and train > 6 * n and infer > 2 * n and "12*L*d*T" in formula


def test_prefetcher_order_and_errors():
    make = lambda i: (torch.tensor([i]), torch.tensor([i]))
    assert [s for s, _, _ in BatchPrefetcher(make, 3, 9, depth=2)] == list(range(3, 9))

    def broken(i):
        if i == 4:
            raise ValueError("bad batch 4")
        return make(i)
    with pytest.raises(ValueError, match="bad batch 4"):
        list(BatchPrefetcher(broken, 0, 9, depth=2))


def test_prefetch_does_not_change_training(tmp_path, small_text):
    kw = dict(model="transformer-pp", task="bytes", steps=6, batch_size=4, seq_len=16, limit=256, eval_every=0,
              checkpoint_every=0, model_args={"depth": "1", "dim": "32", "heads": "2"}, progress=False,
              data_file=str(small_text), update_leaderboard=False)
    a, _ = run(RunConfig(**kw, prefetch=0, output_path=str(tmp_path / "a")))
    b, _ = run(RunConfig(**kw, prefetch=3, output_path=str(tmp_path / "b")))
    assert a["training"]["curve"] == b["training"]["curve"] and a["metrics"] == b["metrics"]
    assert a["run_id"] == b["run_id"]
