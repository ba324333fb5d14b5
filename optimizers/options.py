"""Optimizer options from the command line (`--optimizer-arg KEY=VALUE`): values arrive as strings (or already
typed from Python) and are converted to the type of each option's default; unknown keys are a one-line error."""

from __future__ import annotations

from harness.errors import HarnessError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _convert(optimizer: str, key: str, value, default, choices):
    if isinstance(value, str):
        text = value.strip()
        try:
            if isinstance(default, bool):
                if text.lower() not in _TRUE + _FALSE:
                    raise ValueError
                value = text.lower() in _TRUE
            elif isinstance(default, int):
                value = int(text)
            elif isinstance(default, float) or (default is None and key not in choices):
                value = float(text)
            elif isinstance(default, tuple):
                value = tuple(float(x) for x in text.strip("()[] ").split(","))
                if len(value) != len(default):
                    raise ValueError
        except ValueError:
            kind = ("true/false" if isinstance(default, bool) else
                    f"{len(default)} comma-separated numbers" if isinstance(default, tuple) else
                    "an integer" if isinstance(default, int) else "a number")
            raise HarnessError(f"optimizer {optimizer}: {key}={value!r} is not {kind}") from None
    if key in choices and value not in choices[key]:
        raise HarnessError(f"optimizer {optimizer}: {key}={value!r} is not one of {', '.join(map(str, choices[key]))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value != value:
        raise HarnessError(f"optimizer {optimizer}: {key} is NaN")
    return value


def parse_options(optimizer: str, options: dict, defaults: dict, choices: dict | None = None) -> dict:
    """`defaults` with `options` applied. A default of None means "a number, derived from the preset if unset";
    `choices` maps a key to its accepted values."""
    choices = choices or {}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise HarnessError(f"optimizer {optimizer} has no option(s) {', '.join(unknown)}; "
                           f"valid: {', '.join(sorted(defaults))}")
    parsed = dict(defaults)
    for key, value in options.items():
        parsed[key] = _convert(optimizer, key, value, defaults[key], choices)
    return parsed


def check_positive(optimizer: str, **values) -> None:
    for key, value in values.items():
        if value is not None and not value >= 0:
            raise HarnessError(f"optimizer {optimizer}: {key} must be >= 0, got {value}")
