"""Durations as users write them (`"30m"`, `"4h"`, `"2d"`, or integer milliseconds)."""

from __future__ import annotations

import re

from quantlab_pipeline.core.errors import SpecError

# Largest first: `format_duration_ms` writes a duration in the largest unit that divides it.
UNIT_MS: dict[str, int] = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(" + "|".join(sorted(UNIT_MS, key=len, reverse=True)) + r")\s*$")


def parse_duration_ms(value: str | int, *, field: str = "duration") -> int:
    """Return a non-negative duration in ms; `field` names the offending input in the error."""
    if isinstance(value, bool):
        raise SpecError(f"{field}: expected a duration like '30m', '4h', '2d' or integer ms, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise SpecError(f"{field}: duration must be >= 0 ms, got {value}")
        return value
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return int(match.group(1)) * UNIT_MS[match.group(2)]
        if value.strip().isdigit():
            return int(value.strip())
    raise SpecError(f"{field}: expected a duration like '30m', '4h', '2d' or integer ms, got {value!r}")


def interval_ms(interval: str) -> int:
    """Candle interval (`"1m"`, `"5m"`, `"1h"`, …) in ms; must be positive."""
    ms = parse_duration_ms(interval, field="interval")
    if ms <= 0:
        raise SpecError(f"interval: must be positive, got {interval!r}")
    return ms


def format_duration_ms(ms: int) -> str:
    """The shortest text of a duration (`86_400_000` -> `"1d"`, `90_000` -> `"90s"`): the form
    policy ids are computed from, so it must never change for a given value."""
    return next(f"{ms // size}{unit}" for unit, size in UNIT_MS.items() if ms % size == 0)
