import pytest

from harness.errors import UnknownNameError
from harness.registry import MODELS, OPTIMIZERS, PRESETS, TASKS, Registry


def test_unknown_name_suggests_closest_and_lists_all():
    with pytest.raises(UnknownNameError) as err:
        TASKS.resolve("enwik9")
    msg = str(err.value)
    assert "\n" not in msg
    assert "unknown task 'enwik9'" in msg and "did you mean enwik8" in msg
    for name in TASKS.names():
        assert name in msg


def test_aliases_and_case_are_accepted():
    assert MODELS.resolve("Transformer++").name == "transformer-pp"
    assert MODELS.resolve("TPP").name == "transformer-pp"
    assert OPTIMIZERS.resolve("adamw").name == "adamw"
    assert PRESETS.resolve("TINY").name == "tiny"


def test_listing_does_not_import_targets(tmp_path):
    reg = Registry("widget", ())
    reg.register("w", "module_that_does_not_exist:thing", summary="x")
    assert reg.names() == ["w"]  # listing is free
    with pytest.raises(ModuleNotFoundError):
        reg.load("w")


def test_duplicate_alias_is_refused():
    reg = Registry("widget", ())
    reg.register("a", "m:a", aliases=("x",))
    with pytest.raises(ValueError):
        reg.register("b", "m:b", aliases=("X",))
