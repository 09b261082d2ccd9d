"""What each artifact column means (docs/artifacts.md's "Artifacts" table, in words), for the column
schema the UI shows on every materialization."""

from __future__ import annotations

import polars as pl
from dagster import TableColumn, TableSchema

COLUMN_DESCRIPTIONS: dict[str, str] = {
    # alerts
    "call_id": "Stable id of the call (given, or derived from mint, alert time and caller).",
    "mint": "Token address.",
    "caller_name": "Who posted the call ('unknown' when absent).",
    "chain": "Chain of the token ('solana' when absent).",
    "alert_ts_ms": "When the call was posted, UTC epoch ms.",
    "created_at": "The alert time as an ISO-8601 UTC string.",
    # paths (truth layer)
    "run_id": "The run (a lowercase UUID4).",
    "interval": "Candle interval of the run.",
    "p0": "Entry price: the open of the first candle at or after the alert (no look-ahead).",
    "dd_bps": "Deepest drawdown over the window: (min low / p0 - 1) x 10^4, <= 0.",
    "dd_to_2x_bps": "Deepest drawdown from the entry up to the 2x candle; null without 2x.",
    "alert_to_activity_ms": "Time from the alert to the first candle moving 10 % either way; null when never.",
    "peak_multiple": "Highest high over the window / p0.",
    "entry_ts_ms": "Open time of the entry candle, UTC epoch ms.",
    "t_peak_ms": "Open time of the first candle reaching the peak.",
    "n_candles": "Candles in the window [entry, alert + horizon).",
    # trades (policy layer)
    "policy_id": "The policy's id (its name in a policy run, a hash of its JSON in a sweep).",
    "entry_px": "Entry fill: p0.",
    "exit_ts_ms": "Exit candle's open time; + one interval for a fill at its close.",
    "exit_px": "Exit fill (fraction-weighted average for ladders).",
    "exit_reason": "stop_loss, take_profit, time_stop, hard_stop, trailing_stop, ladder_complete or end_of_data.",
    "realized_return_bps": "Net return: (exit_px / entry_px - 1) x 10^4 - 2 x (fee + slippage).",
    "stop_out": "Whether a stop-type exit (stop_loss, hard_stop, trailing_stop) closed the trade.",
    "max_adverse_excursion_bps": "Lowest price held through, vs p0, in bps (<= 0).",
    "time_exposed_ms": "exit_ts_ms - entry_ts_ms.",
    "tail_capture": "(exit_px / p0 - 1) / (peak_multiple - 1); null when the peak is not above p0.",
    # summary
    "calls_processed": "Alerts of the partition with a path row.",
    "calls_excluded": "Every other alert row of the partition (skipped or without an entry).",
    "trades_count": "Trades simulated.",
    "avg_return_bps": "Mean net return, bps.",
    "median_return_bps": "Median net return, bps.",
    "stop_out_rate": "Share of trades closed by a stop.",
    "avg_max_adverse_excursion_bps": "Mean adverse excursion, bps.",
    "avg_time_exposed_ms": "Mean time in the trade, ms.",
    "avg_tail_capture": "Mean tail capture over non-null values.",
    "median_tail_capture": "Median tail capture over non-null values.",
    "month": "The data month of the partition.",
    "win_rate": "Share of trades with a net return above 0.",
    "p25_return_bps": "25th percentile of net returns, bps.",
    "p75_return_bps": "75th percentile of net returns, bps.",
    "median_return_bps_ci_low": "Median net return: low end of its 95 % bootstrap interval (percentile, 1,000 resamples), bps.",
    "median_return_bps_ci_high": "Median net return: high end of its 95 % bootstrap interval, bps.",
    "avg_return_bps_ci_low": "Mean net return: low end of its 95 % bootstrap interval (percentile, 1,000 resamples), bps.",
    "avg_return_bps_ci_high": "Mean net return: high end of its 95 % bootstrap interval, bps.",
    # frontier
    "policy_params": "The policy as canonical JSON.",
    "meets_constraints": "Whether the policy meets the sweep's constraints.",
    "objective_score": "The sweep's objective (default: median_return_bps).",
    "p95_mae_bps": "5th percentile of adverse excursion (the 5 % worst trades), bps.",
    "pareto": "Not dominated on median return vs p95 MAE within its caller group.",
    "rank": "1 = best: feasible first, then by objective.",
}


def _describe(name: str) -> str:
    if name.startswith("hit_") and name.endswith("x"):
        return f"Whether a window candle's high reached {name[4:]} p0."
    if name.startswith("t_") and name.endswith("x_ms"):
        return f"Open time of the first candle reaching {name[2:-3]} p0; null when never."
    return COLUMN_DESCRIPTIONS.get(name, "")


def column_schema(frame: pl.DataFrame) -> TableSchema:
    """The frame's columns with their types and meanings."""
    return TableSchema(
        columns=[
            TableColumn(name, str(dtype), description=_describe(name) or None) for name, dtype in frame.schema.items()
        ]
    )
