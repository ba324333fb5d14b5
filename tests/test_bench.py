"""`harness bench` runs on a tiny configuration and writes its CSV and plot (no timing is asserted); on the CPU
each (model, seq_len) is measured in its own child process, so peak memory is per model; the MFU attention term
is causal; the batch prefetcher keeps the exact batch order, so training with and without it is bit-identical."""

import csv
import math
import os

import pytest
import torch
from click.testing import CliRunner

from harness import bench
from harness.adapter import build_model
from harness.bench import COLUMNS, ChildDied, attended_length, bench_one, call_in_child, flops_per_token, main
from harness.cli import cli
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
    # the default on the CPU: one fresh child process per (model, seq_len)
    pids = [int(r["pid"]) for r in rows]
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert all(r["mem_method"].startswith("child process") and float(r["model_mem_mb"]) > 0 for r in rows)


def test_cpu_peak_memory_is_per_model():
    """A big model first, then a small one: the small one's row must not inherit the big one's memory."""
    cpu = torch.device("cpu")
    big, small = (bench_one("transformer-pp", "tiny", 32, 1, 0, 1, cpu, 1e10, args)
                  for args in ({"dim": 512, "depth": 2, "heads": 4}, {"dim": 32, "depth": 1, "heads": 2}))
    assert not big["error"] and not small["error"]
    assert big["params"] > 100 * small["params"]
    for row in (big, small):
        assert math.isfinite(float(row["model_mem_mb"])) and 0 < float(row["model_mem_mb"]) < float(row["peak_mem_mb"])
    # AdamW on 8.5M float32 parameters alone holds 8.5M x 16 bytes (weights, grads, 2 moments) = 130 MB
    assert float(big["model_mem_mb"]) > 100 > 4 * float(small["model_mem_mb"])
    assert big["pid"] != small["pid"] and os.getpid() not in (big["pid"], small["pid"])


def test_child_errors_and_deaths_become_row_errors(monkeypatch):
    cpu = torch.device("cpu")
    row = bench_one("transformer-pp", "tiny", 16, 1, 0, 1, cpu, 1e10, {"no_such_setting": 1})
    assert row["error"].startswith("unknown model setting(s) no_such_setting") and row["pid"] != os.getpid()
    with pytest.raises(ChildDied, match="killed by SIGABRT"):
        call_in_child(os.abort)

    def killed(*args, **kwargs):
        raise ChildDied("child process 123 was killed by SIGKILL (out of memory?) before reporting")
    monkeypatch.setattr(bench, "call_in_child", killed)
    row = bench_one("transformer-pp", "tiny", 16, 1, 0, 1, cpu, 1e10)
    assert row["model"] == "transformer-pp" and "killed by SIGKILL" in row["error"]


def test_child_gets_the_parent_thread_count():
    torch.set_num_threads(2)  # the conftest fixture restores it
    assert call_in_child(torch.get_num_threads) == 2


def test_cli_in_process(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--models", "transformer-pp", "--seq-lens", "16", "--warmup", "0",
                                      "--repeats", "1", "--device", "cpu", "--model-arg", "depth=1",
                                      "--output-dir", str(tmp_path), "--in-process"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "bench.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert not row["error"] and int(row["pid"]) == os.getpid() and row["mem_method"].startswith("in-process")
    assert float(row["peak_mem_mb"]) > 0 and "L=1" in row["flops_formula"]


def test_flops_formula_for_attention_models():
    model = build_model("transformer-pp", "tiny", 256)
    n, train, infer, formula = flops_per_token(model, 128)
    assert n < model.num_parameters() and train > 6 * n and infer > 2 * n and "12*L*d*T" in formula


def test_attention_flops_are_causal():
    # transformer-pp tiny: L=4, d=128, max_context 4096. Causal over T=128: keys per query average 129/2 = 64.5.
    model = build_model("transformer-pp", "tiny", 256)
    n, train, infer, _ = flops_per_token(model, 128)
    assert train == 6 * n + 12 * 4 * 128 * 64.5 and infer == 2 * n + 4 * 4 * 128 * 64.5
    # Window w=16 over T=64: positions 1..16 see t keys (sum 136), positions 17..64 see 16 (48*16=768) -> 904/64.
    windowed = build_model("transformer-pp", "tiny", 256, {"max_seq_len": 16})
    n, train, infer, formula = flops_per_token(windowed, 64)
    assert train == 6 * n + 12 * 4 * 128 * 14.125 and infer == 2 * n + 4 * 4 * 128 * 14.125
    assert "w=16" in formula and "T_avg=14.125" in formula
    for t, w in [(1, None), (7, 7), (7, 3), (100, 1), (100, 99), (33, 200)]:
        assert attended_length(t, w) == pytest.approx(sum(min(i, w or t) for i in range(1, t + 1)) / t)
    # recurrent models keep 6N / 2N
    n, train, infer, formula = flops_per_token(build_model("titans-lmm", "tiny", 256), 128)
    assert (train, infer) == (6 * n, 2 * n) and "no attention" in formula


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


def test_compile_both_measures_eager_and_compiled_after_the_warmup(tmp_path):
    """`--compile both`: one eager and one compiled row per (model, length), each in its own child process; the
    compiled first step (compilation) is recorded apart from the timed steps; compile.csv pairs them."""
    result = CliRunner().invoke(cli, ["bench", "--models", "transformer-pp", "--seq-lens", "16", "--warmup", "1",
                                      "--repeats", "1", "--device", "cpu", "--model-arg", "depth=1",
                                      "--compile", "both", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "bench.csv") as f:
        eager, compiled = list(csv.DictReader(f))
    assert (eager["compile"], compiled["compile"]) == ("off", "on") and not eager["error"] and not compiled["error"]
    assert eager["pid"] != compiled["pid"] and eager["graph_breaks"] == "" and int(compiled["graph_breaks"]) >= 0
    assert (eager["compile_cache"], compiled["compile_cache"]) == ("", "empty")  # a cold compilation, timed
    # compilation happens in the first (untimed) step: it takes far longer than a timed step of the compiled model
    assert float(compiled["first_train_s"]) > 5 * 16 / float(compiled["train_tok_s"])
    with open(tmp_path / "compile.csv") as f:
        (pair,) = list(csv.DictReader(f))
    assert pair["model"] == "transformer-pp" and not pair["error"]
    ratio = float(compiled["train_tok_s"]) / float(eager["train_tok_s"])
    assert float(pair["train_speedup"]) == pytest.approx(ratio, abs=0.006)
    assert "compiled / eager" in result.output and "compile on/off ->" in result.output


def test_compile_needs_a_warmup_and_is_not_a_switch(tmp_path):
    for args, message in ((["--compile", "on", "--warmup", "0"], "needs --warmup >= 1"),
                          (["--switches", "compile"], "measure it with --compile both")):
        result = CliRunner().invoke(cli, ["bench", "--models", "transformer-pp", "--seq-lens", "16", "--device",
                                          "cpu", "--output-dir", str(tmp_path), *args])
        assert result.exit_code != 0 and message in str(result.exception)  # harness.cli.main prints it in one line
        assert not (tmp_path / "bench.csv").exists()
