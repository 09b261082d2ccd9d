"""The portfolio against the field's reference: the same trades fed to vectorbt 1.2's
`Portfolio.from_orders` (docs/portfolio.md, "Checked against vectorbt").

The formulation, built here from the trades alone (not from this project's simulation):

- **Rows** are the points of the curve — every entry and exit time, every UTC midnight from the
  one at or before the first entry through the first one after the last exit — after a first row
  holding only the capital (the drawdown's peak starts there). vectorbt takes one order per column
  and row, so a time with exits inside their entry candle gets one sub-row more per such exit:
  the buys at that time in `call_id` order go to sub-row k = the number of such exits before them,
  each such exit's sell to the sub-row after its buy, the sells of earlier positions to sub-row 0.
- **Columns** are slots: each trade holds one from its buy row through its sell row, and a slot is
  reused once its trade has sold (interval partitioning), so the month's thousands of trades fit in
  as many columns as trades overlap. Every trade is an order, taken or not: vectorbt decides.
- **Orders**: a buy of `position_size` in value (`size_type` Value) at `entry_px`, rejected when the
  shared cash is short (`allow_partial=False`); a sell of the whole position at `exit_px` with the
  trade's costs folded into a fee, 1 − (1 + r/10⁴)·entry/exit, so its proceeds are size × (1 + r/10⁴).
  A trade that records a return below −10,000 bps (a gap far through its stop, plus the costs) has
  negative proceeds, which no vectorbt sell can have (fees above the proceeds are refused): its sell
  takes a fee of 1 (proceeds 0) and the rest is paid as a buy of that value, in the same row, of an
  asset that is worth nothing (a last column whose `close` is 0). That buy cannot depend on whether
  vectorbt filled the trade, so vectorbt runs again, with those costs for the trades it filled,
  until the trades it fills no longer change (once, unless such a trade is skipped).
  `cash_sharing` over one group of all columns; `call_seq` per row: the sells, the costs, then the
  buys in `call_id` order.
- **Prices**: `close` at a row is the mark of the slot's position then (the close of the last candle
  known by the row's time, or `entry_px` before any), so vectorbt's value is the account's equity.

Compared: final equity, max drawdown over the points (vectorbt's drawdown accessor), and the calls
vectorbt filled, with this project's `simulate_portfolio` on the same trades and marks.
"""

from __future__ import annotations

import heapq
import math
import time

import numpy as np
import polars as pl

from quantlab_pipeline.core.portfolio import TRADE_COLUMNS, Marks, PortfolioState, simulate_portfolio
from quantlab_pipeline.core.spec import PortfolioParams

DAY_MS = 86_400_000
TOLERANCE = 1e-9  # relative: the two accumulate the same sums in a different order


def _vectorbt():
    try:
        import vectorbt
    except ImportError:
        return None
    return vectorbt


def points_of(trades: pl.DataFrame) -> np.ndarray:
    """The curve's times, from the trades alone."""
    entry = trades.get_column("entry_ts_ms").to_numpy()
    exit_ = trades.get_column("exit_ts_ms").to_numpy()
    first = entry.min() // DAY_MS * DAY_MS
    after_last = (exit_.max() // DAY_MS + 1) * DAY_MS
    return np.unique(np.concatenate([entry, exit_, np.arange(first, after_last + 1, DAY_MS)]))


def layout(trades: pl.DataFrame, marks: Marks, position_size: float, charged: set[str]) -> dict:
    """vectorbt's inputs (rows × slots) for `trades` (`call_id, entry_ts_ms, entry_px, exit_ts_ms,
    exit_px, realized_return_bps`, `marks` in their row order); the calls of `charged` pay what
    their sell's proceeds cannot."""
    frame = trades.with_row_index("trade").sort("entry_ts_ms", "call_id")
    trade = frame.get_column("trade").to_numpy()
    entry = frame.get_column("entry_ts_ms").to_numpy()
    exit_ = frame.get_column("exit_ts_ms").to_numpy()
    points = points_of(trades)
    roundtrips = np.zeros(len(points), dtype=np.int64)  # exits inside their entry candle, per time
    np.add.at(roundtrips, np.searchsorted(points, entry[entry == exit_]), 1)
    base = 1 + np.concatenate([[0], np.cumsum(1 + roundtrips)[:-1]])  # first row of each time
    n_rows = 1 + int((1 + roundtrips).sum())
    buy_row = np.empty(len(frame), dtype=np.int64)
    sell_row = np.empty(len(frame), dtype=np.int64)
    seen = np.zeros(len(points), dtype=np.int64)  # roundtrips bought so far at each time
    for k in range(len(frame)):
        at = np.searchsorted(points, entry[k])
        buy_row[k] = base[at] + seen[at]
        if exit_[k] == entry[k]:
            seen[at] += 1
            sell_row[k] = buy_row[k] + 1
        else:
            sell_row[k] = base[np.searchsorted(points, exit_[k])]
    slot = np.empty(len(frame), dtype=np.int64)
    free: list[tuple[int, int]] = []  # (last sell row, slot)
    slots = 0
    for k in range(len(frame)):  # in buy order
        if free and free[0][0] < buy_row[k]:
            _, slot[k] = heapq.heappop(free)
        else:
            slot[k], slots = slots, slots + 1
        heapq.heappush(free, (int(sell_row[k]), int(slot[k])))

    row_time = np.zeros(n_rows, dtype=np.int64)
    for at, t in enumerate(points):
        row_time[base[at] : base[at] + 1 + roundtrips[at]] = t
    costs = slots  # the worthless asset that takes what a sell's proceeds cannot
    shape = (n_rows, slots + 1)
    size = np.full(shape, np.nan)
    size_type = np.zeros(shape, dtype=np.int64)
    price = np.full(shape, np.inf)
    fees = np.zeros(shape)
    close = np.ones(shape)
    close[:, costs] = 0.0
    first_orders: list[list[int]] = [[] for _ in range(n_rows)]  # sells, first in a row
    then_orders: list[list[int]] = [[] for _ in range(n_rows)]  # buys, in call_id order
    entry_px = trades.get_column("entry_px").to_numpy()
    exit_px = trades.get_column("exit_px").to_numpy()
    growth = 1.0 + trades.get_column("realized_return_bps").to_numpy() / 1e4
    call_ids = trades.get_column("call_id").to_list()
    for k in range(len(frame)):
        i, c, b, s = trade[k], slot[k], buy_row[k], sell_row[k]
        size[b, c], size_type[b, c], price[b, c] = position_size, 1, entry_px[i]  # Value
        size[s, c], size_type[s, c], price[s, c] = -np.inf, 0, exit_px[i]  # Amount: all of it
        fees[s, c] = min(1.0, 1.0 - growth[i] * entry_px[i] / exit_px[i])
        if growth[i] < 0 and call_ids[i] in charged:
            paid = 0.0 if np.isnan(size[s, costs]) else size[s, costs]
            size[s, costs], size_type[s, costs], price[s, costs] = paid - position_size * growth[i], 1, 1.0
        then_orders[b].append(c)
        first_orders[s].append(c)
        times, closes = marks.known(i)
        known = np.searchsorted(times, row_time[b : s + 1], side="right")  # closes known by then
        last_close = np.concatenate([[entry_px[i]], closes])  # before any: the entry price
        close[b : s + 1, c] = last_close[known]
    call_seq = np.tile(np.arange(slots + 1, dtype=np.int64), (n_rows, 1))
    for r in range(n_rows):
        ordered = first_orders[r] + ([costs] if not np.isnan(size[r, costs]) else []) + then_orders[r]
        if ordered:
            rest = np.setdiff1d(np.arange(slots + 1), ordered, assume_unique=False)
            call_seq[r] = np.concatenate([ordered, rest])
    point_rows = np.concatenate([[0], base + roundtrips])  # the capital, then each time's last sub-row
    slot_trade = {(int(b), int(c)): str(trades.get_column("call_id")[int(i)]) for i, c, b in zip(trade, slot, buy_row)}
    return {
        "close": close,
        "size": size,
        "size_type": size_type,
        "price": price,
        "fees": fees,
        "call_seq": call_seq,
        "point_rows": point_rows,
        "points": points,
        "buys": slot_trade,
    }


def run_vectorbt(arrays: dict, capital: float, engine: str | None = None) -> dict:
    """vectorbt's account on the layout: final equity, max drawdown over the points, calls filled."""
    vbt = _vectorbt()
    assert vbt is not None
    pf = vbt.Portfolio.from_orders(
        close=arrays["close"],
        size=arrays["size"],
        size_type=arrays["size_type"],
        price=arrays["price"],
        fees=arrays["fees"],
        direction="longonly",
        allow_partial=False,
        init_cash=capital,
        cash_sharing=True,
        group_by=True,
        call_seq=arrays["call_seq"],
        engine=engine,
    )
    value = pf.value().to_numpy()
    at_points = value[arrays["point_rows"]]
    import pandas as pd

    drawdown = -float(pd.Series(at_points).vbt.drawdowns.max_drawdown())
    orders = pf.orders.values
    buys = arrays["buys"]
    filled = {buys[(int(o["idx"]), int(o["col"]))] for o in orders if (int(o["idx"]), int(o["col"])) in buys}
    return {"equity_end": float(value[-1]), "max_drawdown": drawdown, "taken": filled, "curve": at_points[1:]}


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def compare(trades: pl.DataFrame, marks: Marks, capital: float, position_size: float, repeat: int = 1) -> dict:
    """Both accounts on the same trades (no cap: vectorbt has no cap on open positions): their
    final equity and max drawdown, the relative differences, the calls each took, and times."""
    if _vectorbt() is None:
        return {"skipped": "vectorbt is not installed (pip install -e '.[bench]'; make bench does)"}
    params = PortfolioParams(capital=capital, position_size=position_size)
    ours_s, vbt_s = [], []
    for _ in range(repeat):
        started = time.process_time()
        ours = simulate_portfolio(
            PortfolioState.start(capital), trades.select(TRADE_COLUMNS), marks, params, until_ms=None
        )
        ours_s.append(time.process_time() - started)
        negative = set(trades.filter(pl.col("realized_return_bps") < -1e4).get_column("call_id").to_list())
        charged, layout_s, seconds = negative, 0.0, 0.0
        for _ in range(5):  # the costs of the trades vectorbt fills (docstring)
            started = time.process_time()
            arrays = layout(trades, marks, position_size, charged)
            layout_s += time.process_time() - started
            started = time.process_time()
            theirs = run_vectorbt(arrays, capital)
            seconds += time.process_time() - started
            if theirs["taken"] & negative == charged:
                break
            charged = theirs["taken"] & negative
        vbt_s.append(seconds)
    curve = ours.curve
    same_points = curve.get_column("ts_ms").to_list() == arrays["points"].tolist()
    curve_gap = float(np.max(np.abs(curve.get_column("equity").to_numpy() - theirs["curve"]) / theirs["curve"]))
    ours_taken = ours.figures["calls_taken"]
    return {
        "trades": trades.height,
        "points": curve.height,
        "slots": int(arrays["size"].shape[1]) - 1,
        "rows": int(arrays["size"].shape[0]),
        "equity_end": {"ours": ours.figures["equity_end"], "vectorbt": theirs["equity_end"]},
        "max_drawdown": {"ours": ours.figures["max_drawdown"], "vectorbt": theirs["max_drawdown"]},
        "equity_end_relative_difference": relative(ours.figures["equity_end"], theirs["equity_end"]),
        "max_drawdown_relative_difference": relative(ours.figures["max_drawdown"], theirs["max_drawdown"]),
        "curve_max_relative_difference": curve_gap,
        "same_points": same_points,
        "calls_taken": {"ours": ours_taken, "vectorbt": len(theirs["taken"])},
        "seconds": {"ours": min(ours_s), "vectorbt_layout": layout_s, "vectorbt": min(vbt_s)},
        "tolerance": TOLERANCE,
        "equal": bool(
            same_points
            and relative(ours.figures["equity_end"], theirs["equity_end"]) <= TOLERANCE
            and relative(ours.figures["max_drawdown"], theirs["max_drawdown"]) <= TOLERANCE
            and ours_taken == len(theirs["taken"])
            and not math.isnan(curve_gap)
        ),
    }


# -- the benchmark's section -----------------------------------------------------------------------

STEP_SHARE_TARGET = 0.10  # the portfolio step ≤ 10 % of the policy run (docs/performance.md "Performance")
CAPITAL, POSITION_SIZE = 10_000.0, 100.0  # the defaults of a policy run's portfolio


def figure(month, paths: pl.DataFrame, e2e_policy: dict, repeat: int) -> dict:
    """The portfolio on the reference month's trades (the end-to-end run's fixed stop): CPU time
    of its two parts (the marks gathered from the candles, the simulation), the step's share of
    the end-to-end policy run (its compute and writes in run.json and the step log over the run's
    wall time), and the comparison with vectorbt."""
    from kernels import E2E_POLICY, E2E_POLICY_ID, cpu_timed
    from measure import summarize

    from quantlab_pipeline.core.policy import simulate_trades
    from quantlab_pipeline.core.policy_spec import parse_policy
    from quantlab_pipeline.core.portfolio import trade_marks
    from quantlab_pipeline.core.spec import Execution

    trades = simulate_trades(
        paths,
        month.candles,
        parse_policy(E2E_POLICY),
        run_id="bench",
        policy_id=E2E_POLICY_ID,
        interval_ms=month.interval_ms,
        horizon_ms=month.horizon_ms,
        execution=Execution(),
    ).join(paths.select("call_id", "mint"), on="call_id")

    def marks() -> Marks:
        entry, exit_ = trades.get_column("entry_ts_ms").to_numpy(), trades.get_column("exit_ts_ms").to_numpy()
        return trade_marks(month.candles, trades.get_column("mint"), entry, exit_, month.interval_ms)

    gathered = marks()
    params = PortfolioParams(capital=CAPITAL, position_size=POSITION_SIZE)

    def simulate() -> None:
        simulate_portfolio(PortfolioState.start(CAPITAL), trades.select(TRADE_COLUMNS), gathered, params, until_ms=None)

    simulate()
    steps = e2e_policy["steps_s"]
    step_s = sum(steps[k]["median"] for k in steps if k.split("_")[0] in ("portfolio", "equity", "positions"))
    return {
        "trades": trades.height,
        "marks": int((gathered.hi - gathered.lo).sum()),
        "marks_seconds": summarize(cpu_timed(marks, repeat), "s"),
        "simulate_seconds": summarize(cpu_timed(simulate, repeat), "s"),
        "step_seconds": step_s,
        "step_share": step_s / e2e_policy["wall_s"]["median"],
        "step_share_target": STEP_SHARE_TARGET,
        "vectorbt": compare(trades, gathered, CAPITAL, POSITION_SIZE),
    }


def render(s: dict, console) -> None:
    """The portfolio section of one scale."""
    p = s.get("portfolio")
    if p is None:
        return
    console.print(
        f"portfolio at scale {s['scale']:g}: {p['trades']:,} trades, {p['marks'] / 1e6:,.1f} M candles held; "
        f"marks {p['marks_seconds']['median'] * 1e3:,.0f} ms + simulation {p['simulate_seconds']['median'] * 1e3:,.0f} ms "
        f"CPU; the step in the policy run {p['step_seconds']:.2f} s = {100 * p['step_share']:.1f} % of it "
        f"(≤ {100 * p['step_share_target']:.0f} % {'✓' if p['step_share'] <= p['step_share_target'] else '✗'})"
    )
    v = p["vectorbt"]
    if "skipped" in v:
        console.print(f"  vectorbt: skipped, {v['skipped']}")
        return
    console.print(
        f"  vectorbt Portfolio.from_orders ({v['slots']} slots × {v['rows']:,} rows, {v['seconds']['vectorbt']:.2f} s): "
        f"equity end {v['equity_end']['ours']:,.2f} vs {v['equity_end']['vectorbt']:,.2f} "
        f"(rel. {v['equity_end_relative_difference']:.1e}), max drawdown {v['max_drawdown']['ours']:.6f} vs "
        f"{v['max_drawdown']['vectorbt']:.6f} (rel. {v['max_drawdown_relative_difference']:.1e}), calls taken "
        f"{v['calls_taken']['ours']:,} / {v['calls_taken']['vectorbt']:,}: {'equal' if v['equal'] else 'NOT EQUAL'}"
    )
