"""The inputs as the pipeline sees them: the alert schema and defaults, and the rules that turn
the rows read from a source into valid, de-duplicated input plus `ErrorRecord`s.

Reading is `quantlab_pipeline.sources`; this module does no I/O, so the rules (docs/inputs.md "Inputs",
and "Semantics chosen where the design leaves a choice": Call ids, Candles) can be tested on
arrays and frames alone. Bad *rows* never stop a run: they are skipped or dropped and reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.errors import ErrorRecord
from quantlab_pipeline.core.nb.candles import clean_groups, sort_groups

ALERT_COLUMNS: tuple[str, ...] = ("call_id", "mint", "caller_name", "chain", "alert_ts_ms", "created_at")
ALERTS_SCHEMA = pl.Schema(
    {
        "call_id": pl.String,
        "mint": pl.String,
        "caller_name": pl.String,
        "chain": pl.String,
        "alert_ts_ms": pl.Int64,
        "created_at": pl.String,
    }
)
DEFAULT_CALLER = "unknown"
DEFAULT_CHAIN = "solana"
DERIVED_CALL_ID_PREFIX = "auto-"


# -- alerts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertsInput:
    """One partition's alerts: the valid, de-duplicated rows, and what was skipped and why."""

    frame: pl.DataFrame  # ALERT_COLUMNS, sorted by alert_ts_ms, call_id
    source_rows: int  # alert rows of the partition, valid + skipped
    errors: list[ErrorRecord] = field(default_factory=list)


def alerts_input(rows: pl.DataFrame) -> AlertsInput:
    """Split a partition's ranked alert rows into the valid ones and the skipped ones.

    `rows` has `ALERT_COLUMNS` plus `has_null` (mint or alert_ts_ms is null), `rank_in_id` (1 for
    the earliest alert of its `call_id` over the whole table) and `kept_ts_ms` (that earliest
    alert's time), in output order. A row is skipped when it has a null field, or repeats an id.
    """
    skipped = rows.filter(pl.col("has_null") | (pl.col("rank_in_id") > 1))
    errors = [skipped_alert_error(row) for row in skipped.iter_rows(named=True)]
    valid = rows.filter(~pl.col("has_null") & (pl.col("rank_in_id") == 1))
    frame = valid.select(ALERT_COLUMNS).cast(ALERTS_SCHEMA)
    return AlertsInput(frame=frame, source_rows=rows.height, errors=errors)


def skipped_alert_error(row: dict[str, Any]) -> ErrorRecord:
    """The record of one skipped alert row (a row of `alerts_input`'s `rows`)."""
    if row["has_null"]:
        missing = [name for name in ("mint", "alert_ts_ms") if row[name] is None]
        return ErrorRecord.warning(
            "inputs",
            "null_field",
            f"alert skipped: null {' and '.join(missing)}",
            call_id=row["call_id"],
            mint=row["mint"],
            null_fields=missing,
        )
    return ErrorRecord.warning(
        "inputs",
        "duplicate_call",
        f"alert skipped: call_id {row['call_id']} repeats the alert at {row['kept_ts_ms']} (the earliest is kept)",
        call_id=row["call_id"],
        mint=row["mint"],
        kept_alert_ts_ms=row["kept_ts_ms"],
        alert_ts_ms=row["alert_ts_ms"],
    )


# -- candles ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandlesInput:
    """The validated candles of a partition's mints, and the per-mint counts of dropped rows."""

    candles: Candles
    errors: list[ErrorRecord] = field(default_factory=list)


def clean_candles(
    mints: Sequence[str],
    offsets: np.ndarray,
    ts: np.ndarray,
    op: np.ndarray,
    hi: np.ndarray,
    lo: np.ndarray,
    cl: np.ndarray,
    vol: np.ndarray,
    *,
    interval: str,
) -> CandlesInput:
    """Validated, de-duplicated `Candles` from raw rows grouped by mint (`offsets`, one group per
    mint of `mints`, in any `ts` order within a group).

    Sorts and compacts the arrays in place (the result's columns are views of their first rows),
    so the rows are held once. Bad and duplicate candles are each counted once per mint and reason.
    """
    sort_groups(offsets, ts, op, hi, lo, cl, vol)
    n_mints = len(mints)
    new_offsets = np.empty_like(offsets)
    bad = np.zeros(n_mints, dtype=np.int64)
    dup = np.zeros(n_mints, dtype=np.int64)
    conflicting = np.zeros(n_mints, dtype=np.int64)
    kept = clean_groups(offsets, ts, op, hi, lo, cl, vol, new_offsets, bad, dup, conflicting)
    candles = Candles(tuple(mints), new_offsets, ts[:kept], op[:kept], hi[:kept], lo[:kept], cl[:kept], vol[:kept])
    return CandlesInput(candles=candles, errors=candle_errors(mints, interval, bad, dup, conflicting))


def candle_errors(
    mints: Sequence[str], interval: str, bad: np.ndarray, dup: np.ndarray, conflicting: np.ndarray
) -> list[ErrorRecord]:
    """One record per mint with dropped bad candles, then one per mint with collapsed duplicates."""
    errors = [
        ErrorRecord.warning(
            "truth",
            "bad_candle",
            f"{int(bad[k])} {interval} candle(s) dropped: non-finite or non-positive price, or high/low outside open/close",
            mint=mints[int(k)],
            count=int(bad[k]),
        )
        for k in np.flatnonzero(bad)
    ]
    errors.extend(
        ErrorRecord.warning(
            "truth",
            "duplicate_candle",
            f"{int(dup[k])} duplicate {interval} candle(s) collapsed ({int(conflicting[k])} conflicting: highest volume kept)",
            mint=mints[int(k)],
            count=int(dup[k]),
            conflicting=int(conflicting[k]),
        )
        for k in np.flatnonzero(dup)
    )
    return errors
