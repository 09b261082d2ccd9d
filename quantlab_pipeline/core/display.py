"""Numbers as people read them, the same in the CLI's tables, step logs and Dagster metadata."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MISSING = "—"


def pct(rate: float | None, digits: int = 1) -> str:
    """A rate in [0, 1] as a percentage: 0.3297… → `33.0%`."""
    return MISSING if rate is None else f"{100 * rate:.{digits}f}%"


def bps(value: float | None) -> str:
    """Basis points rounded to whole ones, thousands separated: -580.0000000000005 → `-580`."""
    return MISSING if value is None else f"{value:,.0f}"


def bps_interval(low: float | None, high: float | None) -> str:
    """A confidence interval in bps: `-150 … -90`."""
    return MISSING if low is None or high is None else f"{bps(low)} … {bps(high)}"


def num(value: Any) -> str:
    """Floats to two decimals, integers with separators, anything else as text."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def percent(value: float | None) -> str:
    """A number that already is a percentage: 33.0 → `33.0%`."""
    return MISSING if value is None else f"{value:.1f}%"


FORMATS: dict[str, Callable[[Any], str]] = {"pct": pct, "percent": percent, "bps": bps, "num": num, "str": num}
