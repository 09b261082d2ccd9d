"""Aggregate metrics over trades, shared by `results/summary.parquet` and the frontier (docs/semantics.md
"Semantics chosen where the design leaves a choice": Summary and frontier).

Medians are true medians (the mean of the two middle values for an even count); quartiles and
the 5th percentile use linear interpolation between the closest ranks (numpy's default "linear"
method: position q·(n−1)). Tail-capture statistics ignore null values. Over zero trades every
average, median and rate is null — never a fake 0. The `*_ci_low/high` columns are 95 % bootstrap
intervals of the median and mean return (docs/confidence.md).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import polars as pl

from quantlab_pipeline.core.confidence import INTERVAL_SCHEMA, return_intervals
from quantlab_pipeline.core.durations import UNIT_MS

_COLUMNS = pl.Schema(
    {
        "run_id": pl.String,
        "calls_processed": pl.Int64,
        "calls_excluded": pl.Int64,
        "trades_count": pl.Int64,
        "avg_return_bps": pl.Float64,
        "median_return_bps": pl.Float64,
        "stop_out_rate": pl.Float64,
        "avg_max_adverse_excursion_bps": pl.Float64,
        "avg_time_exposed_ms": pl.Float64,
        "avg_tail_capture": pl.Float64,
        "median_tail_capture": pl.Float64,
        "month": pl.String,
        "policy_id": pl.String,
        "win_rate": pl.Float64,
        "p25_return_bps": pl.Float64,
        "p75_return_bps": pl.Float64,
    }
)
SUMMARY_SCHEMA = pl.Schema({**_COLUMNS, **INTERVAL_SCHEMA})


def metric_exprs(*names: str) -> list[pl.Expr]:
    """Aggregations over trade columns (`realized_return_bps`, `stop_out`, …), aliased by name.

    `win_rate` counts trades whose net return (after fees and slippage) is above 0;
    `p95_mae_bps` is the 5th percentile of the adverse excursion, the 5 % worst trades.
    """
    ret = pl.col("realized_return_bps")
    mae = pl.col("max_adverse_excursion_bps")
    tail = pl.col("tail_capture")
    exprs = {
        "trades_count": pl.len().cast(pl.Int64),
        "avg_return_bps": ret.mean(),
        "median_return_bps": ret.median(),
        "p25_return_bps": ret.quantile(0.25, interpolation="linear"),
        "p75_return_bps": ret.quantile(0.75, interpolation="linear"),
        "win_rate": (ret > 0).cast(pl.Float64).mean(),
        "stop_out_rate": pl.col("stop_out").cast(pl.Float64).mean(),
        "avg_max_adverse_excursion_bps": mae.mean(),
        "p95_mae_bps": mae.quantile(0.05, interpolation="linear"),
        "avg_time_exposed_ms": pl.col("time_exposed_ms").cast(pl.Float64).mean(),
        "avg_tail_capture": tail.mean(),
        "median_tail_capture": tail.median(),
    }
    return [exprs[name].alias(name) for name in names]


def trade_stats(trades: pl.DataFrame) -> dict[str, Any]:
    """Count, average/median return, win and stop-out rate, p95 MAE of `trades`: what a report states."""
    names = ("trades_count", "avg_return_bps", "median_return_bps", "win_rate", "stop_out_rate", "p95_mae_bps")
    return trades.select(metric_exprs(*names)).row(0, named=True)


def truth_stats(paths: pl.DataFrame) -> dict[str, Any]:
    """Calls with an entry, how many reached 2x and their share, median peak multiple, median hours to 2x."""
    hit_hours = (pl.col("t_2x_ms") - pl.col("entry_ts_ms")).filter(pl.col("hit_2x")) / UNIT_MS["h"]
    return paths.select(
        pl.len().alias("calls"),
        pl.col("hit_2x").sum().alias("hits_2x"),
        pl.col("hit_2x").cast(pl.Float64).mean().alias("hit_rate_2x"),
        pl.col("peak_multiple").median().alias("median_peak_multiple"),
        hit_hours.median().alias("median_hours_to_2x"),
    ).row(0, named=True)


@functools.lru_cache(maxsize=4)
def _intervals_of(returns: bytes) -> pl.DataFrame:
    """The month's intervals, by its returns' bytes. The summary's check recomputes the summary from
    the trades right after the step did; the bootstrap (~0.1 s for 20,000 trades) is its only
    costly part and depends on the returns alone (seeded): the same bytes give the same row."""
    return return_intervals([np.frombuffer(returns, dtype=np.float64)])


def summarize_trades(
    trades: pl.DataFrame,
    *,
    run_id: str,
    month: str,
    policy_id: str,
    calls_processed: int,
    calls_excluded: int,
) -> pl.DataFrame:
    """The one-row `results/summary.parquet`, columns exactly `SUMMARY_SCHEMA`."""
    not_metrics = ("run_id", "calls_processed", "calls_excluded", "month", "policy_id", *INTERVAL_SCHEMA.names())
    metrics = trades.select(metric_exprs(*(n for n in SUMMARY_SCHEMA.names() if n not in not_metrics)))
    returns = trades.get_column("realized_return_bps").to_numpy()
    intervals = _intervals_of(np.ascontiguousarray(returns, dtype=np.float64).tobytes())
    return (
        pl.concat([metrics, intervals], how="horizontal")
        .with_columns(
            pl.lit(run_id, dtype=pl.String).alias("run_id"),
            pl.lit(calls_processed, dtype=pl.Int64).alias("calls_processed"),
            pl.lit(calls_excluded, dtype=pl.Int64).alias("calls_excluded"),
            pl.lit(month, dtype=pl.String).alias("month"),
            pl.lit(policy_id, dtype=pl.String).alias("policy_id"),
        )
        .select(SUMMARY_SCHEMA.names())
        .cast(SUMMARY_SCHEMA)
    )
