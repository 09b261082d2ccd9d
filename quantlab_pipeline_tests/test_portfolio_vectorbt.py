"""The portfolio against vectorbt 1.2's `Portfolio.from_orders` (`bench/portfolio_peer.py`: orders
sized in value, cash shared by all calls, costs folded into the sells' fees, prices at the curve's
points): equal final equity and max drawdown, relative 1e-9, and the same calls taken. Skipped
when vectorbt (the `bench` extra) is not installed."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from quantlab_pipeline.core.policy import simulate_trades
from quantlab_pipeline.core.policy_spec import parse_policy
from quantlab_pipeline.core.spec import Execution, TruthParams, date_to_ms, month_bounds
from quantlab_pipeline.core.truth import compute_paths
from quantlab_pipeline.sources.alerts import read_alerts
from quantlab_pipeline.sources.candles import read_candles
from quantlab_pipeline_tests.builders import candles_from_rows
from quantlab_pipeline_tests.test_portfolio import DAY, M5, T0, marks_of

pytest.importorskip("vectorbt", reason="vectorbt is the optional `bench` extra (pip install -e '.[bench]')")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def peer(monkeypatch):
    """`bench/portfolio_peer.py`, imported as the benchmark imports it (and forgotten afterwards)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    yield importlib.import_module("portfolio_peer")
    sys.modules.pop("portfolio_peer", None)


def assert_equal(figure: dict) -> None:
    assert figure["same_points"], figure
    assert figure["equity_end_relative_difference"] <= 1e-9, figure
    assert figure["max_drawdown_relative_difference"] <= 1e-9, figure
    assert figure["curve_max_relative_difference"] <= 1e-9, figure
    assert figure["calls_taken"]["ours"] == figure["calls_taken"]["vectorbt"], figure
    assert figure["equal"]


@pytest.mark.parametrize("seed", [4, 5])
def test_random_calls_equal_vectorbt(peer, seed):
    """Calls over six weeks that tie, exit inside their entry candle, gap through their stop (a
    return below −10,000 bps: the sell costs more than it brings) and run out of cash."""
    rng = np.random.default_rng(seed)
    rows, ids = [], rng.permutation(150)
    for k in range(150):
        entry = T0 + int(rng.integers(0, 40 * 24 * 2)) * 6 * M5  # on a 30-minute grid: many ties
        hold = 0 if k % 9 == 0 else int(rng.integers(1, 3 * 24 * 12)) * M5
        entry_px = float(np.exp(rng.normal()))
        ret = -10040.0 if k % 37 == 0 else max(float(rng.normal(500, 4000)), -9900.0)
        exit_px = entry_px * (1 + (ret + 80.0) / 1e4)  # the return a fill there records with the default costs
        rows.append((f"c{ids[k]:03d}", f"m{k % 23}", entry, entry_px, entry + hold, ret, exit_px))
    frame = pl.DataFrame(
        rows,
        schema=["call_id", "mint", "entry_ts_ms", "entry_px", "exit_ts_ms", "realized_return_bps", "exit_px"],
        orient="row",
    )
    candles = candles_from_rows(
        (f"m{mint}", T0 + step * M5, c, c, c, c)
        for mint in range(23)
        for step in range(0, 45 * 24 * 12, 5)
        for c in [float(np.exp(rng.normal(0, 0.7)))]
    )
    figure = peer.compare(frame, marks_of(frame, candles), capital=400.0, position_size=100.0)
    assert figure["calls_taken"]["ours"] < frame.height  # cash ran out at times
    assert_equal(figure)


def test_the_sample_months_trades_equal_vectorbt(peer, sample_db):
    """Two months of the sample data, truth layer and a fixed stop as the pipeline computes them."""
    first, last = month_bounds("2024-01")[0], month_bounds("2024-02")[1]
    alerts = read_alerts(str(sample_db), start_ms=date_to_ms(first), end_ms=date_to_ms(last) + DAY).frame
    horizon = 5 * DAY
    candles = read_candles(
        str(sample_db),
        mints=alerts.get_column("mint").unique().to_list(),
        interval="5m",
        start_ms=int(alerts.get_column("alert_ts_ms").min()),
        end_ms=int(alerts.get_column("alert_ts_ms").max()) + horizon,
    ).candles
    paths = compute_paths(alerts, candles, run_id="r", interval="5m", horizon_ms=horizon, params=TruthParams()).paths
    trades = simulate_trades(
        paths,
        candles,
        parse_policy({"kind": "fixed_stop", "stop_loss_bps": 500, "take_profit_bps": 10000}),
        run_id="r",
        policy_id="p",
        interval_ms=M5,
        horizon_ms=horizon,
        execution=Execution(),
    ).join(paths.select("call_id", "mint"), on="call_id")
    figure = peer.compare(trades, marks_of(trades, candles), capital=200.0, position_size=100.0)
    assert figure["calls_taken"]["ours"] < trades.height
    assert_equal(figure)
