"""Truth layer (docs/artifacts.md "Artifacts": paths), one test per rule, on tiny hand-built candles.

Conventions: interval 1m (Δ = 60,000 ms), alerts at T0 = 2024-01-01T00:00Z unless stated, the
default truth parameters (multiples 2/3/4, activity move 10 %, entry within 3 candles), horizon
10 minutes. Prices are chosen so every expected number is exact in binary floating point.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.nb.truth import truth_kernel
from quantlab_pipeline.core.nb.windows import lower_bound
from quantlab_pipeline.core.spec import TruthParams
from quantlab_pipeline.core.truth import compute_paths, paths_schema
from quantlab_pipeline_tests.builders import SEED_PATHS_COLUMNS, candles_at_steps

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z, a minute boundary
MIN = 60_000
H = 10 * MIN
RUN_ID = "0b3a2c57-4d1e-4f6a-9b8c-1d2e3f4a5b6c"
PARAMS = TruthParams()


def candles(rows: dict[str, list[tuple[int, float, float, float, float]]]) -> Candles:
    """`{mint: [(minute offset from T0, open, high, low, close), ...]}`."""
    return candles_at_steps(rows, t0=T0, step_ms=MIN)


def alerts(*rows: tuple[str, str, int]) -> pl.DataFrame:
    """`(call_id, mint, alert_ts_ms)` rows with fixed caller and chain."""
    return pl.DataFrame(
        {
            "call_id": [r[0] for r in rows],
            "mint": [r[1] for r in rows],
            "caller_name": ["alice"] * len(rows),
            "chain": ["solana"] * len(rows),
            "alert_ts_ms": [r[2] for r in rows],
            "created_at": [""] * len(rows),
        },
        schema_overrides={"alert_ts_ms": pl.Int64},
    )


def run(alert_frame: pl.DataFrame, c: Candles, *, horizon_ms: int = H, params: TruthParams = PARAMS):
    return compute_paths(alert_frame, c, run_id=RUN_ID, interval="1m", horizon_ms=horizon_ms, params=params)


def one_row(alert_ts: int, bars, **kw) -> dict:
    result = run(alerts(("c1", "M", alert_ts)), candles({"M": bars}), **kw)
    assert result.errors == []
    assert result.paths.height == 1
    return result.paths.row(0, named=True)


# -- entry and p0 -----------------------------------------------------------------------------


def test_entry_exactly_at_alert_ts_uses_that_candles_open():
    # A candle before the alert is ignored: no look-back. The candle at T0 is the entry; p0 is
    # its open (1.0), not its close (1.5): no look-ahead into the entry candle.
    row = one_row(T0, [(-1, 9.0, 9.0, 9.0, 9.0), (0, 1.0, 1.5, 1.0, 1.5), (1, 1.5, 1.5, 1.5, 1.5)])
    assert row["entry_ts_ms"] == T0
    assert row["p0"] == 1.0
    assert row["n_candles"] == 2  # T0 and T0+1m


def test_entry_is_the_first_candle_at_or_after_the_alert():
    # Alert at T0+30s: the candle at T0 opened before the call, so the entry is T0+1m.
    row = one_row(T0 + 30_000, [(0, 5.0, 5.0, 5.0, 5.0), (1, 2.0, 2.0, 2.0, 2.0)])
    assert row["entry_ts_ms"] == T0 + MIN
    assert row["p0"] == 2.0


@pytest.mark.parametrize("delay", [1, 2])
def test_entry_delayed_by_one_or_two_candles(delay):
    # No candle at T0 (nor T0+1m for delay 2): entry at T0 + delay·Δ, which is < T0 + 3·Δ.
    row = one_row(T0, [(delay, 4.0, 4.0, 4.0, 4.0), (delay + 1, 4.0, 4.0, 4.0, 4.0)])
    assert row["entry_ts_ms"] == T0 + delay * MIN
    assert row["p0"] == 4.0
    assert row["alert_to_activity_ms"] is None


def test_no_candle_within_the_entry_delay_is_no_entry():
    # First candle at exactly T0 + 3·Δ: the limit is exclusive, so the alert is excluded.
    result = run(alerts(("c1", "M", T0)), candles({"M": [(3, 1.0, 1.0, 1.0, 1.0), (4, 1.0, 1.0, 1.0, 1.0)]}))
    assert result.paths.height == 0
    (err,) = result.errors
    assert (err.reason, err.phase, err.level, err.call_id, err.mint) == ("no_entry", "truth", "warning", "c1", "M")
    assert err.details["max_entry_delay_candles"] == 3


def test_entry_delay_follows_max_entry_delay_candles():
    # With max_entry_delay_candles=5 the same candle at T0+3m is a valid entry.
    params = TruthParams(max_entry_delay_candles=5)
    row = one_row(T0, [(3, 1.0, 1.0, 1.0, 1.0)], params=params)
    assert row["entry_ts_ms"] == T0 + 3 * MIN


def test_a_mint_with_no_candles_is_no_entry():
    result = run(alerts(("c1", "GHOST", T0), ("c2", "M", T0)), candles({"M": [(0, 1.0, 1.0, 1.0, 1.0)]}))
    assert result.paths.get_column("call_id").to_list() == ["c2"]
    assert [(e.call_id, e.mint, e.reason) for e in result.errors] == [("c1", "GHOST", "no_entry")]


def test_no_candles_at_all_excludes_every_alert():
    result = run(alerts(("c1", "M", T0), ("c2", "N", T0)), Candles.empty())
    assert result.paths.height == 0
    assert [e.reason for e in result.errors] == ["no_entry", "no_entry"]


@pytest.mark.parametrize("bad_open", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_or_non_finite_p0_is_bad_price(bad_open):
    result = run(alerts(("c1", "M", T0)), candles({"M": [(0, bad_open, 2.0, 0.5, 1.0)]}))
    assert result.paths.height == 0
    (err,) = result.errors
    assert (err.reason, err.call_id, err.mint) == ("bad_price", "c1", "M")
    assert err.details["entry_ts_ms"] == T0


# -- multiples --------------------------------------------------------------------------------


def test_hit_in_the_entry_candle():
    # p0 = 1.0; the entry candle's high 2.0 >= 2·1.0: 2x at T0, 3x and 4x never.
    row = one_row(T0, [(0, 1.0, 2.0, 1.0, 1.5), (1, 1.5, 1.5, 1.5, 1.5)])
    assert (row["hit_2x"], row["t_2x_ms"]) == (True, T0)
    assert (row["hit_3x"], row["t_3x_ms"]) == (False, None)
    assert (row["hit_4x"], row["t_4x_ms"]) == (False, None)


def test_several_multiples_hit_in_one_candle():
    # p0 = 1.0; high 1.9 then 4.5 (>= 2, 3 and 4): all three at T0+1m.
    row = one_row(T0, [(0, 1.0, 1.9, 1.0, 1.0), (1, 1.0, 4.5, 1.0, 4.0), (2, 4.0, 8.0, 4.0, 8.0)])
    assert row["t_2x_ms"] == row["t_3x_ms"] == row["t_4x_ms"] == T0 + MIN
    assert row["hit_2x"] and row["hit_3x"] and row["hit_4x"]


def test_multiples_hit_in_successive_candles_use_the_first_candle_reaching_each():
    # p0 = 2.0; thresholds 4, 6, 8. Highs 4.0 (2x, exactly at the threshold), 5.9, 6.0 (3x),
    # 7.0, 9.0 (4x).
    bars = [
        (0, 2.0, 4.0, 2.0, 3.0),
        (1, 3.0, 5.9, 3.0, 5.0),
        (2, 5.0, 6.0, 5.0, 5.5),
        (3, 5.5, 7.0, 5.5, 6.0),
        (4, 6.0, 9.0, 6.0, 8.0),
    ]
    row = one_row(T0, bars)
    assert (row["t_2x_ms"], row["t_3x_ms"], row["t_4x_ms"]) == (T0, T0 + 2 * MIN, T0 + 4 * MIN)


def test_never_hit_is_false_and_null():
    row = one_row(T0, [(0, 1.0, 1.99, 0.95, 1.0), (1, 1.0, 1.5, 0.95, 1.0)])
    assert [row[f"hit_{m}x"] for m in (2, 3, 4)] == [False, False, False]
    assert [row[f"t_{m}x_ms"] for m in (2, 3, 4)] == [None, None, None]
    assert row["dd_to_2x_bps"] is None


def test_custom_multiples_name_their_columns():
    # multiples (1.5, 2.5): p0 = 1.0, high 1.5 at T0 (1.5x), 2.5 at T0+1m (2.5x).
    params = TruthParams(multiples=(2.5, 1.5))
    result = run(
        alerts(("c1", "M", T0)), candles({"M": [(0, 1.0, 1.5, 1.0, 1.0), (1, 1.0, 2.5, 1.0, 2.0)]}), params=params
    )
    assert list(result.paths.columns) == list(paths_schema((1.5, 2.5)))
    row = result.paths.row(0, named=True)
    assert (row["t_1.5x_ms"], row["t_2.5x_ms"]) == (T0, T0 + MIN)
    # dd_to_2x always measures to the 2x candle, even when 2 is not one of the multiples:
    # 2x first reached at T0+1m (high 2.5), lows up to it 1.0 -> (1.0/1.0 - 1)·1e4 = 0.
    assert row["dd_to_2x_bps"] == 0.0


# -- window -----------------------------------------------------------------------------------


def test_window_ends_before_alert_plus_horizon():
    # H = 10m from T0: candles T0..T0+9m are in (10 candles); the one at exactly T0+10m is not,
    # so its high 50 (50x) and low 0.01 count nowhere.
    bars = [(m, 1.0, 1.2, 0.9, 1.0) for m in range(10)] + [(10, 1.0, 50.0, 0.01, 1.0)]
    row = one_row(T0, bars)
    assert row["n_candles"] == 10
    assert row["peak_multiple"] == 1.2
    assert row["hit_2x"] is False
    assert row["dd_bps"] == pytest.approx(-1000.0)  # (0.9/1.0 - 1)·1e4


def test_window_starts_at_the_entry_candle_even_when_delayed():
    # Alert at T0+30s, H = 10m: window = [T0+1m, T0+10m30s) -> candles T0+1m..T0+10m = 10 candles.
    bars = [(m, 1.0, 1.0, 1.0, 1.0) for m in range(0, 12)]
    row = one_row(T0 + 30_000, bars)
    assert row["entry_ts_ms"] == T0 + MIN
    assert row["n_candles"] == 10


# -- peak, drawdowns, activity ----------------------------------------------------------------


def test_peak_ties_take_the_first_candle():
    # p0 = 2.0; highs 3.0, 5.0, 4.0, 5.0: peak 5.0 -> multiple 2.5, first reached at T0+1m.
    bars = [(0, 2.0, 3.0, 2.0, 3.0), (1, 3.0, 5.0, 3.0, 4.0), (2, 4.0, 4.0, 3.5, 4.0), (3, 4.0, 5.0, 4.0, 5.0)]
    row = one_row(T0, bars)
    assert row["peak_multiple"] == 2.5
    assert row["t_peak_ms"] == T0 + MIN


def test_peak_in_the_entry_candle():
    row = one_row(T0, [(0, 1.0, 3.0, 1.0, 1.0), (1, 1.0, 1.0, 1.0, 1.0)])
    assert (row["peak_multiple"], row["t_peak_ms"]) == (3.0, T0)


def test_dd_bps_is_the_lowest_low_of_the_window():
    # p0 = 4.0; lows 3.0, 1.0, 2.0 -> (1.0/4.0 - 1)·1e4 = -7500.
    row = one_row(T0, [(0, 4.0, 4.0, 3.0, 3.5), (1, 3.5, 3.5, 1.0, 2.0), (2, 2.0, 2.5, 2.0, 2.5)])
    assert row["dd_bps"] == -7500.0


def test_dd_bps_is_zero_when_price_never_trades_below_p0():
    row = one_row(T0, [(0, 1.0, 1.5, 1.0, 1.5), (1, 1.5, 1.6, 1.2, 1.6)])
    assert row["dd_bps"] == 0.0


def test_dd_to_2x_includes_the_2x_candle_and_nothing_after():
    # p0 = 4.0 (2x at 8.0). Lows up to the 2x candle (T0+2m): 3.5, 3.0, 2.0 (the 2x candle's own
    # low) -> (2.0/4.0 - 1)·1e4 = -5000. The later low 1.0 counts only in dd_bps:
    # (1.0/4.0 - 1)·1e4 = -7500.
    bars = [(0, 4.0, 4.0, 3.5, 3.8), (1, 3.8, 4.0, 3.0, 3.2), (2, 3.2, 8.0, 2.0, 7.0), (3, 7.0, 7.0, 1.0, 1.5)]
    row = one_row(T0, bars)
    assert row["t_2x_ms"] == T0 + 2 * MIN
    assert row["dd_to_2x_bps"] == -5000.0
    assert row["dd_bps"] == -7500.0


def test_activity_by_high():
    # p0 = 1.0, move 10 %: up at 1.1, down at 0.9. T0+2m's high 1.1 reaches it (>=): 2m after the alert.
    row = one_row(T0, [(0, 1.0, 1.05, 0.95, 1.0), (1, 1.0, 1.09, 0.91, 1.0), (2, 1.0, 1.1, 0.95, 1.05)])
    assert row["alert_to_activity_ms"] == 2 * MIN


def test_activity_by_low():
    # Low 0.9 (<= 1.0·(1 - 0.1)) at T0+1m; the high 1.1 at T0+3m comes later.
    row = one_row(T0, [(0, 1.0, 1.05, 0.95, 1.0), (1, 1.0, 1.0, 0.9, 0.95), (3, 0.95, 1.1, 0.95, 1.1)])
    assert row["alert_to_activity_ms"] == MIN


def test_activity_is_measured_from_the_alert_not_the_entry():
    # Alert at T0+30s, entry T0+1m, move in the entry candle: 60,000 - 30,000 = 30,000 ms.
    row = one_row(T0 + 30_000, [(1, 1.0, 1.2, 1.0, 1.2)])
    assert row["alert_to_activity_ms"] == 30_000


def test_no_activity_is_null():
    row = one_row(T0, [(0, 1.0, 1.09, 0.91, 1.0), (1, 1.0, 1.0999, 0.9001, 1.0)])
    assert row["alert_to_activity_ms"] is None


# -- several alerts, frame shape --------------------------------------------------------------


def test_several_alerts_on_one_mint_each_get_their_own_window():
    # One price series; alert a at T0 (p0 = 1.0, highs 1.0, 2.0, 3.0, 4.0 within 10m), alert b
    # at T0+2m30s (entry T0+3m: p0 = 3.0; 2x would be 6.0: never).
    bars = [(0, 1.0, 1.0, 1.0, 1.0), (1, 1.0, 2.0, 1.0, 2.0), (2, 2.0, 3.0, 2.0, 3.0), (3, 3.0, 4.0, 3.0, 4.0)]
    result = run(alerts(("a", "M", T0), ("b", "M", T0 + 150_000)), candles({"M": bars}))
    a, b = result.paths.rows(named=True)
    assert (a["call_id"], a["p0"], a["t_2x_ms"], a["peak_multiple"], a["n_candles"]) == ("a", 1.0, T0 + MIN, 4.0, 4)
    assert (b["call_id"], b["p0"], b["entry_ts_ms"], b["hit_2x"], b["n_candles"]) == ("b", 3.0, T0 + 3 * MIN, False, 1)
    assert b["peak_multiple"] == pytest.approx(4.0 / 3.0)


def test_several_mints_and_alert_order_is_kept():
    c = candles({"A": [(0, 1.0, 2.0, 1.0, 1.0)], "B": [(0, 2.0, 2.0, 1.0, 1.0)]})
    result = run(alerts(("b1", "B", T0), ("a1", "A", T0)), c)
    assert result.paths.get_column("call_id").to_list() == ["b1", "a1"]
    assert result.paths.get_column("dd_bps").to_list() == [-5000.0, 0.0]  # (1/2 - 1)·1e4; (1/1 - 1)·1e4


def test_columns_types_and_identity_fields():
    row_frame = run(alerts(("c1", "M", T0)), candles({"M": [(0, 1.0, 1.0, 1.0, 1.0)]})).paths
    assert row_frame.schema == pl.Schema(paths_schema(PARAMS.multiples))
    assert list(row_frame.columns) == [*SEED_PATHS_COLUMNS, "entry_ts_ms", "t_peak_ms", "n_candles"]
    row = row_frame.row(0, named=True)
    assert (row["run_id"], row["caller_name"], row["chain"], row["interval"], row["alert_ts_ms"]) == (
        RUN_ID,
        "alice",
        "solana",
        "1m",
        T0,
    )


def test_no_alerts_gives_an_empty_frame_with_the_schema():
    result = run(alerts(), candles({"M": [(0, 1.0, 1.0, 1.0, 1.0)]}))
    assert result.paths.height == 0 and result.errors == []
    assert result.paths.schema == pl.Schema(paths_schema(PARAMS.multiples))


def test_kernel_on_raw_arrays():
    # The benchmark calls the kernel directly: one alert over rows [0, 3) of one series.
    ts = np.array([0, 60_000, 120_000], dtype=np.int64)
    op = np.array([1.0, 1.0, 2.0])
    hi = np.array([1.0, 2.0, 3.0])
    lo = np.array([1.0, 0.5, 2.0])
    out = truth_kernel(
        ts,
        op,
        hi,
        lo,
        np.array([0]),
        np.array([3]),
        np.array([0], dtype=np.int64),
        np.array([180_000], dtype=np.int64),
        np.array([2.0, 3.0]),
        0.1,
    )
    status, p0, entry_ts, n_candles, t_hit, peak_high, t_peak, min_low, t_2x, min_low_to_2x, t_active = out
    assert (status[0], p0[0], entry_ts[0], n_candles[0]) == (0, 1.0, 0, 3)
    assert t_hit.tolist() == [[60_000, 120_000]]
    assert (peak_high[0], t_peak[0], min_low[0], t_2x[0], min_low_to_2x[0], t_active[0]) == (
        3.0,
        120_000,
        0.5,
        60_000,
        0.5,
        60_000,
    )


def test_window_search_equals_searchsorted_on_irregular_times():
    """`lower_bound` (interpolation, gallop, bisection) gives `np.searchsorted`'s row on sorted
    times with gaps and repeats, for targets before, inside, between and after them."""
    rng = np.random.default_rng(7)
    for _ in range(2000):
        ts = np.sort(rng.choice(np.arange(-5, 200, dtype=np.int64), size=int(rng.integers(0, 40))))
        a = int(rng.integers(0, ts.size + 1))
        b = int(rng.integers(a, ts.size + 1))
        for x in rng.integers(-10, 210, size=8):
            assert lower_bound(ts, a, b, np.int64(x)) == a + np.searchsorted(ts[a:b], x, side="left")
