"""`features/features.parquet` (docs/research.md "Features"): per call, what was known at its alert.

Only candles whose interval had closed by `alert_ts_ms` (inside the `LOOKBACK_MS` before it) and
earlier calls whose horizon had ended count, so a feature never peeks at the outcome it might be
used to predict. History too short for a feature gives null, never a guess. The loops are the
compiled kernels of `core.nb.features`, over the same candle arrays as the truth layer.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.inputs import DEFAULT_CALLER
from quantlab_pipeline.core.nb.features import caller_record, candle_features

HOUR_MS = 3_600_000
# How far before an alert candles are read: the longest window (24 h) plus one hour, so a token
# with a gap right at the window's start still has its reference candle.
LOOKBACK_MS = 25 * HOUR_MS
RETURN_WINDOWS: tuple[tuple[str, int], ...] = (
    ("15m", HOUR_MS // 4),
    ("1h", HOUR_MS),
    ("4h", 4 * HOUR_MS),
    ("24h", 24 * HOUR_MS),
)
FLOW_WINDOWS: tuple[tuple[str, int], ...] = (("1h", HOUR_MS), ("24h", 24 * HOUR_MS))

FEATURES_SCHEMA = pl.Schema(
    {
        "run_id": pl.String,
        "call_id": pl.String,
        "caller_name": pl.String,
        "mint": pl.String,
        "alert_ts_ms": pl.Int64,
        **{f"ret_{name}_bps": pl.Float64 for name, _ in RETURN_WINDOWS},
        **{f"rvol_{name}": pl.Float64 for name, _ in FLOW_WINDOWS},
        **{f"volume_{name}": pl.Float64 for name, _ in FLOW_WINDOWS},
        "candles_available": pl.Int64,
        "token_age_ms": pl.Int64,
        "since_last_candle_ms": pl.Int64,
        "hour_utc": pl.Int8,
        "weekday_utc": pl.Int8,
        "caller_prior_calls": pl.Int64,
        "caller_prior_resolved": pl.Int64,
        "caller_prior_hit_2x_rate": pl.Float64,
        "caller_prior_median_peak": pl.Float64,
    }
)


def compute_features(
    alerts: pl.DataFrame,
    paths: pl.DataFrame,
    parts: Iterable[tuple[pl.DataFrame, Candles]],
    *,
    run_id: str,
    interval_ms: int,
    horizon_ms: int,
) -> pl.DataFrame:
    """One `FEATURES_SCHEMA` row per alert, in the alerts' order.

    `alerts` are the partition's calls (`inputs/alerts.parquet`) and `paths` their truth-layer
    rows (`hit_2x`, `peak_multiple`: the outcomes of earlier calls). `parts` are `(alerts of a
    part, its candles)`, the whole partition in one part or several for a large month; the
    candles cover each alert's mint over `[alert_ts_ms - LOOKBACK_MS, alert_ts_ms)` at least.
    """
    candle_rows = pl.concat([_candle_features(part, candles, interval_ms) for part, candles in parts])
    return (
        alerts.select(pl.lit(run_id, dtype=pl.String).alias("run_id"), "call_id", "caller_name", "mint", "alert_ts_ms")
        .join(candle_rows, on="call_id", how="left", maintain_order="left")
        .join(_caller_record(alerts, paths, horizon_ms), on="call_id", how="left", maintain_order="left")
        .with_columns(
            pl.from_epoch("alert_ts_ms", time_unit="ms").dt.hour().alias("hour_utc"),
            pl.from_epoch("alert_ts_ms", time_unit="ms").dt.weekday().alias("weekday_utc"),
            pl.col(pl.Float64).fill_nan(None),
        )
        .select(FEATURES_SCHEMA.names())
        .cast(FEATURES_SCHEMA)
    )


def _candle_features(alerts: pl.DataFrame, candles: Candles, interval_ms: int) -> pl.DataFrame:
    """`call_id` and the candle features of each alert (docs/research.md "Features")."""
    alert_ts = np.ascontiguousarray(alerts.get_column("alert_ts_ms").to_numpy(), dtype=np.int64)
    # closed by the alert: ts + interval <= alert_ts, i.e. ts < alert_ts - interval + 1
    start, stop = candles.window_bounds(alerts.get_column("mint"), alert_ts - LOOKBACK_MS, alert_ts - interval_ms + 1)
    volume = candles.volume if candles.volume is not None else np.full(len(candles), np.nan)
    returns, rvol, traded, n_closed, first_ts, last_close_ts = candle_features(
        candles.ts,
        candles.close,
        volume,
        start,
        stop,
        alert_ts,
        interval_ms,
        np.array([ms for _, ms in RETURN_WINDOWS], dtype=np.int64),
        np.array([ms for _, ms in FLOW_WINDOWS], dtype=np.int64),
    )
    return alerts.select(
        "call_id",
        *(pl.Series(f"ret_{name}_bps", returns[:, w] * 1e4) for w, (name, _) in enumerate(RETURN_WINDOWS)),
        *(pl.Series(f"rvol_{name}", rvol[:, w]) for w, (name, _) in enumerate(FLOW_WINDOWS)),
        *(pl.Series(f"volume_{name}", traded[:, w]) for w, (name, _) in enumerate(FLOW_WINDOWS)),
        pl.Series("candles_available", n_closed),
        pl.when(pl.Series(first_ts) >= 0).then(pl.col("alert_ts_ms") - pl.Series(first_ts)).alias("token_age_ms"),
        pl.when(pl.Series(last_close_ts) >= 0)
        .then(pl.col("alert_ts_ms") - pl.Series(last_close_ts))
        .alias("since_last_candle_ms"),
    )


def _caller_record(alerts: pl.DataFrame, paths: pl.DataFrame, horizon_ms: int) -> pl.DataFrame:
    """`call_id` and the caller's prior record (docs/research.md "Features"); a null caller is the default
    one, as in the frontier (docs/inputs.md "Inputs")."""
    calls = (
        alerts.select(
            "call_id", pl.col("caller_name").cast(pl.String).fill_null(DEFAULT_CALLER).alias("_caller"), "alert_ts_ms"
        )
        .join(paths.select("call_id", "hit_2x", "peak_multiple"), on="call_id", how="left")
        .with_columns(pl.col("_caller").rank("dense").alias("_group"))
        .sort("_group", "alert_ts_ms", "call_id")
    )
    prior_calls, prior_resolved, hit_rate, median_peak = caller_record(
        np.ascontiguousarray(calls.get_column("_group").to_numpy(), dtype=np.int64),
        np.ascontiguousarray(calls.get_column("alert_ts_ms").to_numpy(), dtype=np.int64),
        int(horizon_ms),
        np.ascontiguousarray(calls.get_column("peak_multiple").is_not_null().to_numpy()),
        np.ascontiguousarray(calls.get_column("hit_2x").fill_null(False).cast(pl.Int64).to_numpy()),
        np.ascontiguousarray(calls.get_column("peak_multiple").fill_null(np.nan).to_numpy(), dtype=np.float64),
    )
    return pl.DataFrame(
        {
            "call_id": calls.get_column("call_id"),
            "caller_prior_calls": prior_calls,
            "caller_prior_resolved": prior_resolved,
            "caller_prior_hit_2x_rate": hit_rate,
            "caller_prior_median_peak": median_peak,
        }
    )
