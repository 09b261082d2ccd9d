"""Numbers as people read them, the same in the CLI's tables, step logs and Dagster metadata."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

MISSING = "—"


def pct(rate: float | None, digits: int = 1) -> str:
    """A rate in [0, 1] as a percentage: 0.3297… → `33.0%`."""
    return MISSING if rate is None else f"{100 * rate:.{digits}f}%"


def bps(value: float | None) -> str:
    """Basis points rounded to whole ones, thousands separated: -580.0000000000005 → `-580`."""
    return MISSING if value is None else f"{value:,.0f}"


def bps_text(value: float | None) -> str:
    """`bps` with its unit, for titles and report tables: `-580 bps`."""
    return MISSING if value is None else f"{bps(value)} bps"


def multiple(value: float | None) -> str:
    """A multiple of entry price: 2.0 → `2.00×`."""
    return MISSING if value is None else f"{value:.2f}×"


def hours(value: float | None) -> str:
    """Hours to one decimal: 32.66 → `32.7 h`."""
    return MISSING if value is None else f"{value:.1f} h"


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


FRONTIER_COLUMNS = (
    "rank",
    "policy",
    "feasible",
    "objective",
    "median bps (95 % CI)",
    "avg bps (95 % CI)",
    "p95 MAE bps",
    "stop-out",
    "trades",
    "pareto",
)


FRONTIER_TOP = 20  # policies the CLI's closing table and the report list; every one is in results/frontier.parquet


def _with_interval(row: dict, column: str) -> str:
    """`-4 (-30 … 16)`: a figure and its 95 % bootstrap interval, when the row has one (the 10
    best rows of a frontier written with confidence, docs/confidence.md)."""
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    shown = bps(row.get(column))
    return shown if low is None or high is None else f"{shown} ({bps_interval(low, high)})"


def frontier_rows(frame: pl.DataFrame, top: int) -> list[tuple[str, ...]]:
    """The `top` best-ranked policies of a frontier's all-callers group (`caller_name` null), one
    tuple of `FRONTIER_COLUMNS` each: the Dagster headline and the HTML report list the same rows."""
    overall = frame.filter(pl.col("caller_name").is_null()).sort("rank").head(top)
    return [
        (
            str(r["rank"]),
            r["policy_params"],
            "yes" if r["meets_constraints"] else "no",
            bps(r["objective_score"]),
            _with_interval(r, "median_return_bps"),
            _with_interval(r, "avg_return_bps"),
            bps(r["p95_mae_bps"]),
            pct(r["stop_out_rate"]),
            num(r["trades_count"]),
            "yes" if r["pareto"] else "",
        )
        for r in overall.iter_rows(named=True)
    ]
