"""`harness ab`: a model against itself shows no difference; a handicapped B (learning rate 0) loses."""

from click.testing import CliRunner

from harness.cli import cli

TINY = ["--task", "bytes", "--steps", "12", "--batch-size", "4", "--seq-len", "32", "--limit", "1024",
        "--eval-every", "0", "--no-progress", "--no-leaderboard"]


def invoke(args, tmp_path, small_text):
    result = CliRunner().invoke(cli, args + TINY + ["--data-file", str(small_text), "--output_path", str(tmp_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_model_against_itself_finds_no_difference(tmp_path, small_text):
    out = invoke(["ab", "arch", "--a", "transformer-pp", "--b", "tpp", "--seeds", "2", "--model-arg", "depth=1"],
                 tmp_path, small_text)
    assert "Verdict: no significant difference" in out
    assert len(list((tmp_path / "runs").glob("*.json"))) == 4
    assert list((tmp_path / "plots").glob("ab_arch_*.png"))


def test_handicapped_b_loses(tmp_path, small_text):
    out = invoke(["ab", "optimizer", "--model", "transformer-pp", "--a", "adamw", "--b", "adamw", "--b-arg", "lr=0",
                  "--seeds", "3", "--model-arg", "depth=1"], tmp_path, small_text)
    assert "Verdict: A (adamw) is better" in out


def test_ab_arch_refuses_model_flag(tmp_path, small_text):
    result = CliRunner().invoke(cli, ["ab", "arch", "--a", "tpp", "--b", "tpp", "--model", "tpp"] + TINY +
                                ["--data-file", str(small_text)])
    assert result.exit_code == 2 and "--a and --b" in result.output
