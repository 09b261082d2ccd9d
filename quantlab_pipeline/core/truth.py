"""Truth layer: what the market did after each call, independent of any policy.

`compute_paths` builds the arrays of `nb.truth.truth_kernel` (one numba pass over each alert's
window of candles) and turns its outputs into the `truth/paths.parquet` frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
from polars._typing import PolarsDataType

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.durations import interval_ms
from quantlab_pipeline.core.errors import ErrorRecord
from quantlab_pipeline.core.nb.truth import NO_ENTRY, NO_TS, OK, truth_kernel
from quantlab_pipeline.core.spec import TruthParams


def multiple_label(m: float) -> str:
    return f"{m:g}x"


def paths_schema(multiples: tuple[float, ...]) -> pl.Schema:
    """Column names and types of `truth/paths.parquet`, in order (hit/t columns follow `multiples`)."""
    schema: dict[str, PolarsDataType] = {
        "run_id": pl.String,
        "call_id": pl.String,
        "caller_name": pl.String,
        "mint": pl.String,
        "chain": pl.String,
        "interval": pl.String,
        "alert_ts_ms": pl.Int64,
        "p0": pl.Float64,
    }
    for m in multiples:
        schema[f"hit_{multiple_label(m)}"] = pl.Boolean
        schema[f"t_{multiple_label(m)}_ms"] = pl.Int64
    schema.update(
        {
            "dd_bps": pl.Float64,
            "dd_to_2x_bps": pl.Float64,
            "alert_to_activity_ms": pl.Int64,
            "peak_multiple": pl.Float64,
            "entry_ts_ms": pl.Int64,
            "t_peak_ms": pl.Int64,
            "n_candles": pl.Int64,
        }
    )
    return pl.Schema(schema)


@dataclass(frozen=True)
class TruthResult:
    paths: pl.DataFrame  # paths_schema(params.multiples), one row per included alert, input order
    errors: list[ErrorRecord] = field(default_factory=list)


def _ts_or_null(name: str) -> pl.Expr:
    return pl.when(pl.col(name) != NO_TS).then(pl.col(name)).otherwise(None)


def compute_paths(
    alerts: pl.DataFrame,
    candles: Candles,
    *,
    run_id: str,
    interval: str,
    horizon_ms: int,
    params: TruthParams,
) -> TruthResult:
    """One paths row per alert that has an entry candle with a valid open; the rest are excluded
    (`no_entry`, `bad_price`) with one `ErrorRecord` each."""
    step_ms = interval_ms(interval)
    alert_ts = np.ascontiguousarray(alerts.get_column("alert_ts_ms").to_numpy(), dtype=np.int64)
    start, stop = candles.window_bounds(alerts.get_column("mint"), alert_ts, alert_ts + int(horizon_ms))
    multiples = np.asarray(params.multiples, dtype=np.float64)
    status, p0, entry_ts, n_candles, t_hit, peak_high, t_peak, min_low, t_2x, min_low_to_2x, t_active = truth_kernel(
        candles.ts,
        candles.open,
        candles.high,
        candles.low,
        start,
        stop,
        alert_ts,
        alert_ts + params.max_entry_delay_candles * step_ms,
        multiples,
        float(params.activity_move),
    )

    raw = alerts.select("call_id", "caller_name", "mint", "chain", "alert_ts_ms").with_columns(
        pl.Series("_status", status),
        pl.Series("p0", p0),
        pl.Series("entry_ts_ms", entry_ts),
        pl.Series("n_candles", n_candles),
        pl.Series("_peak_high", peak_high),
        pl.Series("t_peak_ms", t_peak),
        pl.Series("_min_low", min_low),
        pl.Series("_t_2x", t_2x),
        pl.Series("_min_low_to_2x", min_low_to_2x),
        pl.Series("_t_active", t_active),
        *(pl.Series(f"_t_{k}", np.ascontiguousarray(t_hit[:, k])) for k in range(multiples.size)),
    )
    errors = _exclusions(raw.filter(pl.col("_status") != OK), interval, params.max_entry_delay_candles)

    hit_columns = []
    for k, m in enumerate(params.multiples):
        label = multiple_label(m)
        hit_columns += [
            (pl.col(f"_t_{k}") != NO_TS).alias(f"hit_{label}"),
            _ts_or_null(f"_t_{k}").alias(f"t_{label}_ms"),
        ]
    schema = paths_schema(params.multiples)
    paths = (
        raw.filter(pl.col("_status") == OK)
        .select(
            pl.lit(run_id).alias("run_id"),
            "call_id",
            "caller_name",
            "mint",
            "chain",
            pl.lit(interval).alias("interval"),
            "alert_ts_ms",
            "p0",
            *hit_columns,
            ((pl.col("_min_low") / pl.col("p0") - 1.0) * 1e4).alias("dd_bps"),
            pl.when(pl.col("_t_2x") != NO_TS)
            .then((pl.col("_min_low_to_2x") / pl.col("p0") - 1.0) * 1e4)
            .alias("dd_to_2x_bps"),
            (_ts_or_null("_t_active") - pl.col("alert_ts_ms")).alias("alert_to_activity_ms"),
            (pl.col("_peak_high") / pl.col("p0")).alias("peak_multiple"),
            "entry_ts_ms",
            "t_peak_ms",
            "n_candles",
        )
        .cast(schema)
    )
    return TruthResult(paths=paths, errors=errors)


def _exclusions(excluded: pl.DataFrame, interval: str, max_delay: int) -> list[ErrorRecord]:
    errors = []
    for row in excluded.iter_rows(named=True):
        if row["_status"] == NO_ENTRY:
            errors.append(
                ErrorRecord.warning(
                    "truth",
                    "no_entry",
                    f"call excluded: no {interval} candle within {max_delay} candle(s) after the alert",
                    call_id=row["call_id"],
                    mint=row["mint"],
                    alert_ts_ms=row["alert_ts_ms"],
                    max_entry_delay_candles=max_delay,
                )
            )
        else:
            errors.append(
                ErrorRecord.warning(
                    "truth",
                    "bad_price",
                    f"call excluded: entry candle open {row['p0']!r} is not a positive finite price",
                    call_id=row["call_id"],
                    mint=row["mint"],
                    alert_ts_ms=row["alert_ts_ms"],
                    entry_ts_ms=row["entry_ts_ms"],
                    open=repr(row["p0"]),
                )
            )
    return errors
