"""Durations as users write them: 250ms, 5s, 2m, 3h, 2d (whole numbers or decimals)."""

from __future__ import annotations

import re

from processor.errors import FlowhookError

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PATTERN = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


class DurationError(FlowhookError, ValueError):
    """A duration string that does not parse."""


def parse_duration_ms(text: str | int | float) -> int:
    """'2d' -> 172800000. Bare numbers are refused: a unit is always needed."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise DurationError(f"{text!r} is not a duration; write it with a unit, e.g. 5s, 2m, 3h, 2d")
    match = _PATTERN.match(text)
    if not match:
        raise DurationError(f"{text!r} is not a duration; write it like 250ms, 5s, 2m, 3h or 2d")
    number, unit = match.groups()
    return round(float(number) * _UNITS_MS[unit])


def format_duration_ms(ms: int) -> str:
    """The shortest exact spelling: 172800000 -> '2d', 1500 -> '1500ms'."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
