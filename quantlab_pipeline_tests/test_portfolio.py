"""The portfolio's rules (docs/portfolio.md), each on a hand-computed case, and months chained
equal one pass."""

from __future__ import annotations

import math
import statistics

import numpy as np
import polars as pl
import pytest

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.portfolio import (
    POSITIONS_SCHEMA,
    TRADE_COLUMNS,
    Account,
    Marks,
    PortfolioState,
    daily_ratios,
    portfolio_row,
    simulate_portfolio,
    trade_marks,
)
from quantlab_pipeline.core.spec import PortfolioParams
from quantlab_pipeline_tests.builders import candles_from_rows

MIN, H, DAY = 60_000, 3_600_000, 86_400_000
M5 = 5 * MIN
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
FEB = T0 + 31 * DAY  # 2024-02-01 00:00 UTC


def trades(*rows: tuple) -> pl.DataFrame:
    """`(call_id, mint, entry, entry_px, exit, return_bps)` rows."""
    return pl.DataFrame(list(rows), schema={name: POSITIONS_SCHEMA[name] for name in TRADE_COLUMNS}, orient="row")


def marks_of(frame: pl.DataFrame, candles: Candles | None = None, interval_ms: int = M5) -> Marks:
    return trade_marks(
        candles or Candles.empty(),
        frame.get_column("mint"),
        frame.get_column("entry_ts_ms").to_numpy(),
        frame.get_column("exit_ts_ms").to_numpy(),
        interval_ms,
    )


def simulate(frame, marks=None, *, capital=1000.0, size=100.0, fraction=None, cap=None, until=None, state=None):
    params = PortfolioParams(
        capital=capital, position_size=None if fraction else size, position_fraction=fraction, max_positions=cap
    )
    return simulate_portfolio(
        state or PortfolioState.start(capital),
        frame,
        marks if marks is not None else marks_of(frame),
        params,
        until_ms=until,
    )


def point(result, t: int) -> dict:
    rows = result.curve.filter(pl.col("ts_ms") == t)
    assert rows.height == 1, f"no single point at {t}: {result.curve}"
    return rows.row(0, named=True)


# -- events at one time -----------------------------------------------------------------------


def test_sells_come_first_then_buys_in_call_id_order_each_sold_at_once_when_it_exits_then():
    """Capital 200, 100 an entry, no candles (every position worth its size):

    1h  buy b, z (call_id order; the rows are in another)       cash   0
    2h  sell z +50 % → 150; buy x → 50; y skipped (50 < 100)    cash  50  (buys before the sell: x skipped too)
    3h  sell b → 150; p bought and sold at once +100 % → 250;
        q → 150; r → 50 (p's sell deferred: q skipped)          cash  50
    4h  sell x → 150;  5h  sell q, r +25 % → 375
    """
    frame = trades(
        ("z", "A", T0 + H, 1.0, T0 + 2 * H, 5000.0),
        ("b", "B", T0 + H, 1.0, T0 + 3 * H, 0.0),
        ("y", "C", T0 + 2 * H, 1.0, T0 + 2 * H, -5000.0),
        ("x", "D", T0 + 2 * H, 1.0, T0 + 4 * H, 0.0),
        ("r", "E", T0 + 3 * H, 1.0, T0 + 5 * H, 2500.0),
        ("q", "F", T0 + 3 * H, 1.0, T0 + 5 * H, 0.0),
        ("p", "G", T0 + 3 * H, 1.0, T0 + 3 * H, 10000.0),
    )
    result = simulate(frame, capital=200.0)
    curve = result.curve
    assert curve.get_column("ts_ms").to_list() == [T0, T0 + H, T0 + 2 * H, T0 + 3 * H, T0 + 4 * H, T0 + 5 * H, T0 + DAY]
    assert curve.get_column("cash").to_list() == [200.0, 0.0, 50.0, 50.0, 150.0, 375.0, 375.0]
    assert curve.get_column("positions_value").to_list() == [0.0, 200.0, 200.0, 300.0, 200.0, 0.0, 0.0]
    assert curve.get_column("equity").to_list() == [200.0, 200.0, 250.0, 350.0, 350.0, 375.0, 375.0]
    assert curve.get_column("open_positions").to_list() == [0, 2, 2, 3, 2, 0, 0]
    figures = result.figures
    assert (figures["calls_taken"], figures["calls_skipped_cash"], figures["calls_skipped_max_positions"]) == (6, 1, 0)
    assert figures["equity_end"] == 375.0 and figures["total_return"] == 0.875
    assert figures["max_drawdown"] == 0.0 and figures["max_open_positions"] == 3
    # one daily return (200 → 375): too few for ratios
    assert figures["sharpe"] is None and figures["sortino"] is None
    # worth / equity held from each point to the next, over the day from the first point to the last
    exposure = (0 * H + 1 * H + (200 / 250) * H + (300 / 350) * H + (200 / 350) * H + 0 * 19 * H) / DAY
    assert figures["exposure"] == pytest.approx(exposure, rel=1e-12)


def test_the_cap_comes_before_cash_and_a_skipped_call_never_opens_later():
    """Capital 250, 100 an entry, at most 2 open: at 1h a, b are bought (cash 50) and c is skipped
    for the cap although cash is short too; at 2h a is sold (cash 150), d is bought, e skipped for
    the cap; c never opens, though from 2h there would be room and cash."""
    frame = trades(
        ("a", "A", T0 + H, 1.0, T0 + 2 * H, 0.0),
        ("b", "B", T0 + H, 1.0, T0 + 5 * H, 0.0),
        ("c", "C", T0 + H, 1.0, T0 + 6 * H, 0.0),
        ("d", "D", T0 + 2 * H, 1.0, T0 + 3 * H, 0.0),
        ("e", "E", T0 + 2 * H, 1.0, T0 + 4 * H, 0.0),
    )
    result = simulate(frame, capital=250.0, cap=2)
    figures = result.figures
    assert (figures["calls_taken"], figures["calls_skipped_cash"], figures["calls_skipped_max_positions"]) == (3, 0, 2)
    assert point(result, T0 + H)["cash"] == 50.0 and point(result, T0 + 2 * H)["cash"] == 50.0
    assert point(result, T0 + 4 * H)["open_positions"] == 1  # b only: c and e never opened
    # a skipped call's exit is still a point (its events come from the trades alone)
    assert point(result, T0 + 6 * H)["open_positions"] == 0


def test_a_call_is_skipped_for_cash_and_does_not_open_when_cash_comes_back():
    frame = trades(
        ("a", "A", T0 + H, 1.0, T0 + 2 * H, 0.0),
        ("b", "B", T0 + H, 1.0, T0 + 3 * H, 0.0),
    )
    result = simulate(frame, capital=150.0)
    assert (result.figures["calls_taken"], result.figures["calls_skipped_cash"]) == (1, 1)
    assert point(result, T0 + 2 * H)["cash"] == 150.0 and point(result, T0 + 2 * H)["open_positions"] == 0


def test_position_fraction_spends_a_fraction_of_equity_marked_at_that_instant():
    """Fraction 0.25 of capital 1000: a spends 250 at t; its entry candle closes at 2.0 (known at
    t + 5m). At t + 10m equity = 750 + 250 × 2 = 1250: b and c each spend 312.5 (a buy leaves
    equity unchanged), d's 312.5 is more than the 125 left: skipped for cash."""
    t = T0 + H
    candles = candles_from_rows([("A", t, 1.0, 2.0, 1.0, 2.0), ("A", t + M5, 2.0, 2.0, 2.0, 2.0)])
    frame = trades(
        ("a", "A", t, 1.0, t + DAY, 0.0),
        ("b", "B", t + 10 * MIN, 1.0, t + DAY, 0.0),
        ("c", "C", t + 10 * MIN, 1.0, t + DAY, 0.0),
        ("d", "D", t + 10 * MIN, 1.0, t + DAY, 0.0),
    )
    result = simulate(frame, marks_of(frame, candles), fraction=0.25)
    at = point(result, t + 10 * MIN)
    assert at["cash"] == 1000.0 - 250.0 - 312.5 - 312.5
    assert at["positions_value"] == 500.0 + 312.5 + 312.5 and at["equity"] == 1250.0
    assert (result.figures["calls_taken"], result.figures["calls_skipped_cash"]) == (3, 1)


# -- marking ----------------------------------------------------------------------------------


def test_a_position_is_marked_by_the_last_candle_closed_since_its_entry_or_worth_its_size():
    """Mint A's candles: one before the entry (close 9, never used), the entry candle (close 1.5,
    known at entry + 5m), the next (close 2.0, known at + 10m), then a gap to the one closing 3.0
    (known at + 65m). Roundtrips of other mints at those times make points without changing cash.
    Mint B has no candle at all: worth its size until sold."""
    t = T0 + H
    candles = candles_from_rows(
        [
            ("A", t - M5, 9.0, 9.0, 9.0, 9.0),
            ("A", t, 1.0, 1.5, 1.0, 1.5),
            ("A", t + M5, 1.5, 2.0, 1.5, 2.0),
            ("A", t + 60 * MIN, 2.0, 3.0, 2.0, 3.0),
            ("A", t + 2 * H, 3.0, 4.0, 3.0, 4.0),  # closes after the exit: never a mark
        ]
    )
    probes = [(f"p{k:02d}", "X", t + m * MIN, 1.0, t + m * MIN, 0.0) for k, m in enumerate((0, 5, 7, 10, 30, 65))]
    frame = trades(("a", "A", t, 1.0, t + 2 * H, 0.0), ("b", "B", t, 2.0, t + 2 * H, 0.0), *probes)
    result = simulate(frame, marks_of(frame, candles))
    worth = {m: point(result, t + m * MIN)["positions_value"] - 100.0 for m in (0, 5, 7, 10, 30, 65)}
    assert worth == {0: 100.0, 5: 150.0, 7: 150.0, 10: 200.0, 30: 200.0, 65: 300.0}


def test_trade_marks_are_the_candles_from_the_entry_candle_that_close_before_the_exit():
    candles = candles_from_rows([("A", T0 + k * M5, 1.0, 1.0, 1.0, 1.0 + k) for k in range(6)])
    frame = trades(("a", "A", T0 + M5, 1.0, T0 + 4 * M5, 0.0), ("b", "Z", T0, 1.0, T0 + M5, 0.0))
    marks = marks_of(frame, candles)
    times, closes = marks.known(0)  # candles 1 and 2 (closing at 2·5m and 3·5m); 3 closes at the exit
    assert times.tolist() == [T0 + 2 * M5, T0 + 3 * M5] and closes.tolist() == [2.0, 3.0]
    assert marks.known(1)[0].size == 0  # a mint without candles
    compact = marks.compact()
    assert compact.delay_ms == 0 and compact.ts.tolist() == times.tolist() and compact.lo.tolist() == [0, 2]


def test_a_ladder_returns_all_its_parts_at_its_exit():
    """A ladder 50 % at 2x (candle 2), 50 % at 4x (candle 4): one trade row, exit_px 3.0, the
    return (3 − 1)·10⁴ − 80 bps. Until its exit the whole position is marked; at the exit the
    account gets 100 × (1 + 1.992)."""
    t = T0 + H
    closes = [1.0, 1.5, 2.0, 3.0, 4.0]
    candles = candles_from_rows([("A", t + k * M5, c, c, c, c) for k, c in enumerate(closes)])
    frame = trades(("a", "A", t, 1.0, t + 4 * M5, 19920.0), ("q", "Q", t + 3 * M5, 1.0, t + 3 * M5, 0.0))
    result = simulate(frame, marks_of(frame, candles))
    after_first_level = point(result, t + 3 * M5)  # candle 2 (the 2x fill) closed at 3·5m
    assert after_first_level["cash"] == 900.0 and after_first_level["positions_value"] == 200.0
    assert point(result, t + 4 * M5)["cash"] == pytest.approx(900.0 + 100.0 * 2.992, rel=1e-15)


def test_a_sell_can_cost_more_than_it_brings():
    """A gap through the stop: the trade records −10,030 bps; the account pays 0.3 to close it."""
    result = simulate(trades(("a", "A", T0 + H, 1.0, T0 + 2 * H, -10030.0)), capital=100.0)
    assert point(result, T0 + 2 * H)["cash"] == pytest.approx(-0.3)
    assert result.figures["max_drawdown"] == pytest.approx(1.003)


# -- midnights and figures --------------------------------------------------------------------


def test_midnights_run_from_the_one_before_the_first_entry_to_the_first_after_the_last_exit():
    """An exit exactly at a midnight: that midnight is one point, and the next one closes the curve."""
    frame = trades(("a", "A", T0 + 10 * H, 1.0, T0 + 2 * DAY, 0.0))
    result = simulate(frame)
    assert result.curve.get_column("ts_ms").to_list() == [T0, T0 + 10 * H, T0 + DAY, T0 + 2 * DAY, T0 + 3 * DAY]


def test_figures_by_hand():
    """Capital 1000, one position of 500 marked at 0.8, 1.2, 0.9 on three days, sold +10 %.

    Midnight equities 1000, 900, 1100, 950, then 1050: daily returns −0.1, 2/9, −3/22, 2/19;
    drawdown deepest at 950 below the peak 1100 (3/22)."""
    frame = trades(("a", "A", T0 + H, 1.0, T0 + 3 * DAY + H, 1000.0))
    marks = Marks(
        np.array([0]),
        np.array([3]),
        np.array([T0 + 12 * H, T0 + DAY + 12 * H, T0 + 2 * DAY + 12 * H]),
        np.array([0.8, 1.2, 0.9]),
    )
    result = simulate(frame, marks, size=500.0)
    assert result.curve.filter(pl.col("ts_ms") % DAY == 0).get_column("equity").to_list() == [
        1000.0,
        900.0,
        1100.0,
        950.0,
        1050.0,
    ]
    returns = [900 / 1000 - 1, 1100 / 900 - 1, 950 / 1100 - 1, 1050 / 950 - 1]
    figures = result.figures
    assert list(result.state.account.daily_returns) == pytest.approx(returns, rel=1e-15)
    assert figures["sharpe"] == pytest.approx(statistics.mean(returns) / statistics.stdev(returns) * math.sqrt(365))
    downside = math.sqrt(sum(min(r, 0) ** 2 for r in returns) / len(returns))
    assert figures["sortino"] == pytest.approx(statistics.mean(returns) / downside * math.sqrt(365))
    assert figures["max_drawdown"] == pytest.approx(3 / 22)
    assert figures["equity_end"] == 1050.0 and figures["max_open_positions"] == 1


def test_the_drawdown_peak_starts_at_the_capital():
    """A loss at the very first point: 5 % below the capital, though no point was ever higher."""
    frame = trades(("a", "A", T0, 1.0, T0, -5000.0))
    assert simulate(frame).figures["max_drawdown"] == pytest.approx(0.05)


def test_ratios_are_null_with_fewer_than_two_returns_or_no_dispersion():
    assert daily_ratios([]) == (None, None) and daily_ratios([0.1]) == (None, None)
    assert daily_ratios([0.01, 0.01, 0.01]) == (None, None)  # equal returns; none negative
    sharpe, sortino = daily_ratios([0.02, 0.01])
    assert sortino is None and sharpe == pytest.approx(0.015 / statistics.stdev([0.02, 0.01]) * math.sqrt(365))
    # a flat account over days: zero returns, no ratios
    result = simulate(trades(("a", "A", T0 + H, 1.0, T0 + 3 * DAY, 0.0)))
    assert result.state.account.daily_returns == (0.0, 0.0, 0.0, 0.0)  # 5 midnights: Jan 1 to Jan 5
    assert result.figures["sharpe"] is None and result.figures["sortino"] is None


def test_no_trades_is_an_untouched_account():
    result = simulate(trades())
    assert result.curve.height == 0
    figures = result.figures
    assert figures["equity_end"] == 1000.0 and figures["total_return"] == 0.0 and figures["max_drawdown"] == 0.0
    assert figures["exposure"] is None and figures["sharpe"] is None and figures["calls_taken"] == 0
    row = portfolio_row(figures, run_id="r", month="2024-01")
    assert row.columns[:2] == ["run_id", "month"] and row.height == 1


# -- months chain -----------------------------------------------------------------------------


def chained(frames: list[pl.DataFrame], candles: Candles, boundaries: list[int], **kw):
    """Month by month: each month's trades from the state the month before left (through the
    state's stored form), `boundaries` the months' ends (the last month: none)."""
    state, curves, result = None, [], None
    for frame, until in zip(frames, [*boundaries, None]):
        if state is not None:
            state = PortfolioState.from_stored(state.positions, state.metadata())
        result = simulate(frame, marks_of(frame, candles), until=until, state=state, **kw)
        curves.append(result.curve)
        state = result.state
    return result, pl.concat(curves)


def assert_same(months, one) -> None:
    last, curve = months
    assert last.figures == one.figures
    assert last.state.account == one.state.account
    assert curve.equals(one.curve)


def test_a_position_across_the_month_boundary_keeps_its_mark():
    """Capital 250: a and b bought Jan 31 20:00 (cash 50), s skipped for cash at 21:00 (its exit,
    in February, is still a point). a's candles close 2.0 at 23:55 (the mark in force at Feb 1
    00:00) and 4.0 at 00:30; b has none and sells at exactly Feb 1 00:00 (cash 150); l, called in
    January, enters Feb 1 00:05; f is skipped for cash."""
    t = FEB - 4 * H
    candles = candles_from_rows(
        [
            ("A", FEB - 10 * MIN, 1.0, 2.0, 1.0, 2.0),
            ("A", FEB + 25 * MIN, 2.0, 4.0, 2.0, 4.0),
            ("L", FEB + 5 * MIN, 1.0, 1.0, 1.0, 1.0),
        ]
    )
    january = trades(
        ("a", "A", t, 1.0, FEB + 4 * H, 500.0),
        ("b", "B", t, 1.0, FEB, 0.0),
        ("s", "S", t + H, 1.0, FEB + 2 * H, 0.0),
        ("l", "L", FEB + 5 * MIN, 1.0, FEB + 3 * H, 0.0),
    )
    february = trades(("f", "F", FEB + H, 1.0, FEB + 5 * H, 0.0))
    both = pl.concat([january, february])
    one = simulate(both, marks_of(both, candles), capital=250.0)
    assert_same(chained([january, february], candles, [FEB], capital=250.0), one)
    state = simulate(january, marks_of(january, candles), capital=250.0, until=FEB).state
    assert state.positions.get_column("status").to_list() == ["open", "open", "skipped_cash", "pending"]
    assert state.positions.get_column("mark_close").to_list() == [[2.0, 4.0], [], [], [1.0]]
    assert point(one, FEB)["cash"] == 150.0 and point(one, FEB)["positions_value"] == 200.0
    assert point(one, FEB + H)["positions_value"] == 400.0 + 100.0  # a at 4.0, l at its 1.0
    assert (one.figures["calls_taken"], one.figures["calls_skipped_cash"]) == (3, 2)


def test_a_month_that_ends_flat_hands_its_last_midnights_to_the_next_month_with_calls():
    """January's only trade exits Jan 10: its midnights stop at Jan 11 (the first after the last exit
    known). February has a call, so the one pass's curve runs on through every January midnight:
    the chained curve has them too, at the head of February's file."""
    january = trades(("a", "A", T0 + H, 1.0, T0 + 9 * DAY + H, 1000.0))
    february = trades(("b", "B", FEB + 2 * DAY, 1.0, FEB + 3 * DAY, 0.0))
    candles = Candles.empty()
    (last, curve) = chained([january, february], candles, [FEB])
    one = simulate(pl.concat([january, february]))
    assert_same((last, curve), one)
    january_only = simulate(january, until=FEB)
    assert january_only.curve.get_column("ts_ms").max() == T0 + 10 * DAY


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("capital", "extra"), [(1000.0, {}), (500.0, {"cap": 3}), (1000.0, {"fraction": 0.2})])
def test_months_chained_equal_one_pass(seed, capital, extra):
    """Random calls over three months (exits inside the entry candle, across month ends, entries
    after the end of their month, ties), random candles: each month from the state the month
    before left gives, in the last month, exactly the figures and curve of one pass."""
    rng = np.random.default_rng(seed)
    starts, ends = [T0, FEB, FEB + 29 * DAY], [FEB, FEB + 29 * DAY]  # Feb 2024 has 29 days
    ids = rng.permutation(90)  # call_id order is not row order
    frames: list[list[tuple]] = [[], [], []]
    for k in range(90):
        month = k % 3
        entry = starts[month] + int(rng.integers(0, 28 * 24 * 12)) * M5
        if k % 11 == 0 and month < 2:  # called at the very end of its month, entered after it
            entry = ends[month] + M5
        hold = 0 if k % 7 == 0 else int(rng.integers(1, 4 * 24 * 12)) * M5  # 0: exits in its entry candle
        frames[month].append((f"c{ids[k]:03d}", f"m{k % 17}", entry, 1.0, entry + hold, float(rng.normal(0, 3000))))
    candle_rows = []
    for mint in range(17):
        for step in range(0, 95 * 24 * 12, 7):
            c = float(np.exp(rng.normal(0, 0.5)))
            candle_rows.append((f"m{mint}", T0 + step * M5, c, c, c, c))
    candles = candles_from_rows(candle_rows)
    months = [trades(*f) for f in frames]
    everything = pl.concat(months)
    one = simulate(everything, marks_of(everything, candles), capital=capital, **extra)
    assert_same(chained(months, candles, ends, capital=capital, **extra), one)
    decided = ("calls_taken", "calls_skipped_cash", "calls_skipped_max_positions")
    assert sum(one.figures[name] for name in decided) == 90


def test_the_account_round_trips_exactly_through_its_stored_form():
    account = Account(
        0.1 + 0.2, 1e12 / 3, 1 / 7, 123456.789, math.pi, 2 / 3, 1, 2, 3, 4, 5 / 7, (0.1, -1 / 3), 1, 2, 3, 4
    )
    assert Account.from_json(account.to_json()) == account


def test_sizing_is_one_of_size_or_fraction_and_numbers_are_refused_in_one_line():
    with pytest.raises(SpecError, match=r"^position_fraction: give exactly one"):
        PortfolioParams.parse({"capital": 10.0})
    for field, value in (("capital", math.nan), ("capital", -1.0), ("position_fraction", 2.0), ("max_positions", 0)):
        with pytest.raises(SpecError, match=rf"^{field}: must be"):
            PortfolioParams.parse({"position_size": 1.0, field: value})
    with pytest.raises(SpecError, match=r"^max_positions: must be a whole number"):
        PortfolioParams.parse({"position_size": 1.0, "max_positions": True})
