"""The one-row summary (docs/artifacts.md "Artifacts") over hand-made trades."""

from __future__ import annotations

import polars as pl
import pytest

from quantlab_pipeline.core.policy import TRADES_SCHEMA
from quantlab_pipeline.core.summary import SUMMARY_SCHEMA, summarize_trades


def trades(returns, stop_out, mae, exposed, tail) -> pl.DataFrame:
    n = len(returns)
    return pl.DataFrame(
        {
            "run_id": ["r"] * n,
            "policy_id": ["p"] * n,
            "call_id": [f"c{i}" for i in range(n)],
            "entry_ts_ms": [0] * n,
            "entry_px": [1.0] * n,
            "exit_ts_ms": exposed,
            "exit_px": [1.0] * n,
            "exit_reason": ["end_of_data"] * n,
            "realized_return_bps": returns,
            "stop_out": stop_out,
            "max_adverse_excursion_bps": mae,
            "time_exposed_ms": exposed,
            "tail_capture": tail,
        },
        schema=TRADES_SCHEMA,
    )


def summarize(frame: pl.DataFrame) -> dict:
    out = summarize_trades(frame, run_id="r", month="2024-01", policy_id="p", calls_processed=5, calls_excluded=2)
    assert out.schema == SUMMARY_SCHEMA and out.height == 1
    return out.row(0, named=True)


FOUR = trades(
    returns=[-500.0, 100.0, 300.0, 1000.0],
    stop_out=[True, False, False, False],
    mae=[-800.0, -100.0, 0.0, -300.0],
    exposed=[300_000, 600_000, 900_000, 1_200_000],
    tail=[None, 0.1, 0.3, 0.9],
)


def test_even_count_statistics():
    row = summarize(FOUR)
    assert (row["run_id"], row["month"], row["policy_id"]) == ("r", "2024-01", "p")
    assert (row["calls_processed"], row["calls_excluded"], row["trades_count"]) == (5, 2, 4)
    assert row["avg_return_bps"] == pytest.approx(225)  # (-500 + 100 + 300 + 1000) / 4
    assert row["median_return_bps"] == pytest.approx(200)  # (100 + 300) / 2
    # linear quartiles at position q·(n-1): 0.75 -> -500 + 0.75·600 = -50; 2.25 -> 300 + 0.25·700 = 475
    assert row["p25_return_bps"] == pytest.approx(-50)
    assert row["p75_return_bps"] == pytest.approx(475)
    assert row["win_rate"] == pytest.approx(0.75)  # 3 of 4 above 0
    assert row["stop_out_rate"] == pytest.approx(0.25)
    assert row["avg_max_adverse_excursion_bps"] == pytest.approx(-300)  # -1200 / 4
    assert row["avg_time_exposed_ms"] == pytest.approx(750_000)  # 3,000,000 / 4
    assert row["avg_tail_capture"] == pytest.approx(1.3 / 3)  # nulls ignored: (0.1 + 0.3 + 0.9) / 3
    assert row["median_tail_capture"] == pytest.approx(0.3)


def test_odd_count_median():
    five = pl.concat([FOUR, trades([2000.0], [False], [0.0], [0], [0.2])])
    row = summarize(five)
    assert row["median_return_bps"] == pytest.approx(300)  # sorted -500, 100, 300, 1000, 2000
    assert row["median_tail_capture"] == pytest.approx(0.25)  # non-null 0.1, 0.2, 0.3, 0.9 -> (0.2 + 0.3) / 2
    assert row["win_rate"] == pytest.approx(0.8)


def test_zero_trades_give_null_averages_not_zeros():
    row = summarize(FOUR.clear())
    assert (row["calls_processed"], row["calls_excluded"], row["trades_count"]) == (5, 2, 0)
    for name in SUMMARY_SCHEMA.names():
        if name not in ("run_id", "calls_processed", "calls_excluded", "trades_count", "month", "policy_id"):
            assert row[name] is None, name


def test_all_null_tail_capture_is_null():
    row = summarize(trades([10.0], [False], [0.0], [0], [None]))
    assert row["avg_tail_capture"] is None and row["median_tail_capture"] is None
    assert row["avg_return_bps"] == pytest.approx(10)


def test_columns_in_seed_order_then_extras():
    assert SUMMARY_SCHEMA.names()[:11] == [
        "run_id",
        "calls_processed",
        "calls_excluded",
        "trades_count",
        "avg_return_bps",
        "median_return_bps",
        "stop_out_rate",
        "avg_max_adverse_excursion_bps",
        "avg_time_exposed_ms",
        "avg_tail_capture",
        "median_tail_capture",
    ]
    assert SUMMARY_SCHEMA.names()[11:] == [
        "month",
        "policy_id",
        "win_rate",
        "p25_return_bps",
        "p75_return_bps",
        "median_return_bps_ci_low",
        "median_return_bps_ci_high",
        "avg_return_bps_ci_low",
        "avg_return_bps_ci_high",
    ]


def test_the_check_recomputing_a_month_reuses_its_intervals_and_gets_the_same_row():
    """The summary's check recomputes the summary from the trades right after the step: the
    bootstrap is not paid twice, and the row is the one a fresh computation gives."""
    from quantlab_pipeline.core import summary
    from quantlab_pipeline.core.confidence import return_intervals

    returns = [float(v) for v in range(-300, 900, 7)]
    frame = trades(
        returns, [False] * len(returns), [0.0] * len(returns), [60_000] * len(returns), [None] * len(returns)
    )
    summary._intervals_of.cache_clear()
    first, again = summarize(frame), summarize(frame)
    assert first == again
    assert summary._intervals_of.cache_info().hits == 1
    fresh = return_intervals([frame.get_column("realized_return_bps").to_numpy()]).row(0, named=True)
    assert {k: first[k] for k in fresh} == fresh
    other = summarize(trades([1.0, 2.0], [False, False], [0.0, 0.0], [1, 1], [None, None]))
    assert other["median_return_bps"] == 1.5 and summary._intervals_of.cache_info().misses == 2
