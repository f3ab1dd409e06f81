"""Durations on the command line: `500ms`, `2s`, `1.5s`, `1m`, `6h`, `7d`."""

from __future__ import annotations

import re
from typing import Any

import click

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*\Z")


def parse_duration(text: str) -> float:
    """`500ms`, `2s`, `1.5s`, `2` (seconds), `1m`, `6h`, `7d` -> seconds."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a duration (examples: 500ms, 2s, 1.5s, 7d)")
    number, unit = float(found.group(1)), found.group(2) or "s"
    return number * _UNITS[unit]


def format_duration(seconds: float) -> str:
    """Seconds as parse_duration reads them, in the largest unit that keeps it short: 30d, 90m, 1.5s."""
    for unit in ("d", "h", "m", "s"):
        if seconds >= _UNITS[unit] and (seconds / _UNITS[unit]) * 10 % 1 == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:g}ms"


class Duration(click.ParamType):
    """A duration such as `500ms`, `2s` or `1.5s`, as seconds."""

    name = "duration"

    def __init__(self, minimum: float = 0.0) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            seconds = parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} must be longer than zero", param, ctx)
        if seconds < self.minimum:
            least = format_duration(self.minimum)
            self.fail(f"{value!r} is shorter than the least allowed, {least}", param, ctx)
        return seconds
