"""Hand-built candle sets for kernel and frame tests: one place that turns bars into `Candles`.

Bars are `(open, high, low, close)`; the three builders differ only in how the candle times are
given (absolute, consecutive steps, or step offsets with gaps).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import polars as pl

from quantlab_pipeline.core.candles import Candles

Bar = tuple[float, float, float, float]
COLUMNS = ["mint", "ts_ms", "open", "high", "low", "close"]


def candles_from_rows(rows: Iterable[tuple[str, int, float, float, float, float]]) -> Candles:
    """`(mint, ts_ms, open, high, low, close)` rows in any order; no rows gives `Candles.empty()`."""
    records = list(rows)
    if not records:
        return Candles.empty()
    return Candles.from_frame(
        pl.DataFrame(records, schema=COLUMNS, orient="row").cast(
            {"ts_ms": pl.Int64, **dict.fromkeys(COLUMNS[2:], pl.Float64)}
        )
    )


def candles_from_bars(
    bars: Mapping[str, Sequence[Bar]], *, t0: int = 0, step_ms: int, ts: Mapping[str, Sequence[int]] | None = None
) -> Candles:
    """Each mint's bars at `t0, t0 + step_ms, …`, or at the times `ts[mint]` when given."""
    return candles_from_rows(
        (mint, t, *bar)
        for mint, ohlc in bars.items()
        for t, bar in zip((ts or {}).get(mint) or [t0 + i * step_ms for i in range(len(ohlc))], ohlc, strict=True)
    )


def candles_at_steps(
    bars: Mapping[str, Sequence[tuple[int, float, float, float, float]]], *, t0: int, step_ms: int
) -> Candles:
    """`{mint: [(k, open, high, low, close), …]}`: the bar opens at `t0 + k · step_ms` (gaps allowed)."""
    return candles_from_rows((mint, t0 + k * step_ms, *bar) for mint, rows in bars.items() for k, *bar in rows)


# The seed's paths.parquet columns, in its order (docs/artifacts.md "Artifacts"); the truth layer adds more after them.
SEED_PATHS_COLUMNS = [
    "run_id",
    "call_id",
    "caller_name",
    "mint",
    "chain",
    "interval",
    "alert_ts_ms",
    "p0",
    "hit_2x",
    "t_2x_ms",
    "hit_3x",
    "t_3x_ms",
    "hit_4x",
    "t_4x_ms",
    "dd_bps",
    "dd_to_2x_bps",
    "alert_to_activity_ms",
    "peak_multiple",
]
