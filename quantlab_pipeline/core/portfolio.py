"""The portfolio of a policy run (docs/portfolio.md): what an account following the calls, with
limited cash, a position size and a cap on open positions, would have done.

The rules, in short: every trade is a buy at `entry_ts_ms` and a sell at `exit_ts_ms`; at one
time the sells of earlier positions come first, then the buys in `call_id` order, each sold at
once when it exits at that same time. A buy spends `position_size` (or `position_fraction` ×
equity at that instant); it is skipped when `max_positions` are open, else when cash is below its
size, and a skipped call never opens later. A sell returns size × (1 + `realized_return_bps`/10⁴).
An open position is worth size × c / `entry_px`, c the close of the last candle of its mint
closed by then (opened at or after the entry), or its size while none is.

The curve has a point at every time a trade enters or exits (taken or skipped: its events are
known from the trades alone) and at every UTC midnight from the one at or before the first entry
through the first one after the last exit. A run's months chain: each month simulates its points
before the month's end from the `PortfolioState` the month before left (cash, the positions and
calls still open, the running figures), so the last month's figures are those of one simulation
over the window's trades. Pure: arrays and frames in, arrays and frames out.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.nb import portfolio as nb
from quantlab_pipeline.core.policy_spec import BPS
from quantlab_pipeline.core.spec import PortfolioParams

STATUSES: tuple[str, ...] = ("pending", "open", "closed", "skipped_cash", "skipped_max_positions")
ANNUALIZATION = math.sqrt(365.0)  # daily returns, every day of the year trades
ACCOUNT_METADATA_KEY = "portfolio_account"  # the positions file's key-value metadata: the `Account`

# The columns a trade needs here: the trades' own, and its mint (from the paths).
TRADE_COLUMNS = ("call_id", "mint", "entry_ts_ms", "entry_px", "exit_ts_ms", "realized_return_bps")
EQUITY_SCHEMA = pl.Schema(
    {
        "ts_ms": pl.Int64,
        "equity": pl.Float64,
        "cash": pl.Float64,
        "positions_value": pl.Float64,
        "open_positions": pl.Int64,
    }
)
PORTFOLIO_SCHEMA = pl.Schema(
    {
        "run_id": pl.String,
        "month": pl.String,
        "capital": pl.Float64,
        "equity_end": pl.Float64,
        "total_return": pl.Float64,
        "max_drawdown": pl.Float64,
        "sharpe": pl.Float64,
        "sortino": pl.Float64,
        "exposure": pl.Float64,
        "max_open_positions": pl.Int64,
        "calls_taken": pl.Int64,
        "calls_skipped_cash": pl.Int64,
        "calls_skipped_max_positions": pl.Int64,
    }
)
# What a month hands the next: the calls still open (`size` set), not yet entered, or skipped with
# their exit still ahead (an event time of a later month), each with the marks it may still need.
POSITIONS_SCHEMA = pl.Schema(
    {  # type: ignore[arg-type]  # polars' stubs take the list dtypes for plain objects
        "call_id": pl.String,
        "mint": pl.String,
        "entry_ts_ms": pl.Int64,
        "entry_px": pl.Float64,
        "exit_ts_ms": pl.Int64,
        "realized_return_bps": pl.Float64,
        "status": pl.String,
        "size": pl.Float64,
        "mark_ts_ms": pl.List(pl.Int64),
        "mark_close": pl.List(pl.Float64),
    }
)


# -- marks: the closes that value each position ------------------------------------------------


@dataclass(frozen=True)
class Marks:
    """Per trade `i`, rows `lo[i]:hi[i]` of `ts` and `close`: its mint's candles opened at or after
    its entry that close before its exit (a position is marked only while open). A close is known
    at `ts + delay_ms`: a candle's open time + Δ when the rows are the candle set's own (no copy),
    the time itself (`delay_ms` 0) when they were gathered (`compact`)."""

    lo: np.ndarray
    hi: np.ndarray
    ts: np.ndarray
    close: np.ndarray
    delay_ms: int = 0

    def known(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Trade `i`'s marks: when each close is known, and the close."""
        return self.ts[self.lo[i] : self.hi[i]] + self.delay_ms, self.close[self.lo[i] : self.hi[i]]

    def compact(self) -> Marks:
        """The trades' rows only, in arrays of their own (times as known)."""
        offsets = np.zeros(len(self.lo) + 1, dtype=np.int64)
        np.cumsum(self.hi - self.lo, out=offsets[1:])
        ts = np.empty(offsets[-1], dtype=np.int64)
        close = np.empty(offsets[-1], dtype=np.float64)
        nb.gather_marks(self.ts, self.close, self.lo, self.hi, np.int64(self.delay_ms), offsets, ts, close)
        return Marks(offsets[:-1], offsets[1:], ts, close)

    @classmethod
    def concat(cls, parts: Sequence[Marks]) -> Marks:
        """The marks of several sets of trades (read apart: a large month's parts), one after the other."""
        if len(parts) == 1:
            return parts[0]
        compact = [part.compact() for part in parts]
        starts = np.cumsum([0, *(len(part.ts) for part in compact[:-1])])
        return cls(
            np.concatenate([part.lo + start for part, start in zip(compact, starts)]),
            np.concatenate([part.hi + start for part, start in zip(compact, starts)]),
            np.concatenate([part.ts for part in compact]),
            np.concatenate([part.close for part in compact]),
        )


def trade_marks(
    candles: Candles, mints: pl.Series, entry_ts: np.ndarray, exit_ts: np.ndarray, interval_ms: int
) -> Marks:
    """The marks of each trade (its mint, entry and exit): row bounds into the candle set holding
    its window, nothing copied."""
    entry = np.ascontiguousarray(entry_ts, dtype=np.int64)
    # a close known before the exit (`ts + Δ < exit`): at the exit the position is sold, not marked
    start, stop = candles.window_bounds(mints, entry, np.asarray(exit_ts, dtype=np.int64) - interval_ms)
    return Marks(start, stop, candles.ts, candles.close, interval_ms)


# -- the state a month hands the next ----------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """The running account over the points so far (None: no point yet), besides the positions."""

    cash: float
    peak: float  # the running peak of equity, from the capital on
    max_drawdown: float
    exposed_ms: float  # ∑ positions' worth / equity × the time to the next point
    last_ratio: float  # worth / equity at the last point
    last_equity: float | None
    first_point_ms: int | None
    last_point_ms: int | None
    next_midnight_ms: int | None  # None until the first entry is known
    last_exit_ms: int | None  # the latest exit of the trades so far
    last_midnight_equity: float | None
    daily_returns: tuple[float, ...]
    calls_taken: int = 0
    calls_skipped_cash: int = 0
    calls_skipped_max_positions: int = 0
    max_open_positions: int = 0

    @classmethod
    def start(cls, capital: float) -> Account:
        return cls(capital, capital, 0.0, 0.0, 0.0, None, None, None, None, None, None, ())

    def to_json(self) -> str:
        """Exact: Python writes each float as the shortest text that reads back to it."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Account:
        data = json.loads(text)
        return cls(**{**data, "daily_returns": tuple(data["daily_returns"])})


@dataclass(frozen=True)
class PortfolioState:
    account: Account
    positions: pl.DataFrame  # POSITIONS_SCHEMA

    @classmethod
    def start(cls, capital: float) -> PortfolioState:
        """The state before a run's first month: all cash, nothing open."""
        return cls(Account.start(capital), pl.DataFrame(schema=POSITIONS_SCHEMA))

    def metadata(self) -> dict[str, str]:
        return {ACCOUNT_METADATA_KEY: self.account.to_json()}

    @classmethod
    def from_stored(cls, positions: pl.DataFrame, metadata: dict[str, str]) -> PortfolioState:
        """The state as the positions file stores it (its frame and key-value metadata)."""
        return cls(Account.from_json(metadata[ACCOUNT_METADATA_KEY]), positions)


@dataclass(frozen=True)
class PortfolioMonth:
    curve: pl.DataFrame  # EQUITY_SCHEMA: the points simulated now
    state: PortfolioState  # what the next month starts from
    figures: dict[str, Any]  # the window-to-date figures (PORTFOLIO_SCHEMA without run_id, month)


# -- the simulation ------------------------------------------------------------------------------


def _list_column(values: np.ndarray, lengths: np.ndarray, dtype: pl.DataType) -> pl.Series:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pl.Series(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))).cast(dtype)


def _stored_marks(positions: pl.DataFrame) -> Marks:
    lengths = positions.get_column("mark_ts_ms").list.len().to_numpy().astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])

    def flat(name: str, dtype: type) -> np.ndarray:
        values = positions.get_column(name).rechunk().to_arrow().flatten()  # empty lists add nothing
        return np.ascontiguousarray(values.to_numpy(zero_copy_only=False), dtype=dtype)

    return Marks(offsets[:-1], offsets[1:], flat("mark_ts_ms", np.int64), flat("mark_close", np.float64))


def simulate_portfolio(
    state: PortfolioState,
    trades: pl.DataFrame,
    marks: Marks,
    params: PortfolioParams,
    *,
    until_ms: int | None,
) -> PortfolioMonth:
    """The points before `until_ms` (None: all of them, the window's last month) of an account
    starting from `state` that also follows `trades` (`TRADE_COLUMNS`, with `marks` in their order)."""
    carried = state.positions
    columns = pl.Schema({name: POSITIONS_SCHEMA[name] for name in TRADE_COLUMNS})
    frame = pl.concat([carried.select(TRADE_COLUMNS), trades.select(TRADE_COLUMNS).cast(columns)])
    stored = _stored_marks(carried)  # source 1 of the kernel; the month's `marks` are source 0
    # buy order: entry time, then call_id (a sort of the strings, not of row order)
    order = (
        frame.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), "entry_ts_ms", "call_id")
        .sort("entry_ts_ms", "call_id")
        .get_column("row")
        .to_numpy()
    )
    frame = frame[order]
    codes = {name: code for code, name in enumerate(STATUSES)}
    carried_status = np.array([codes[s] for s in carried.get_column("status").to_list()], dtype=np.int8)
    status = np.concatenate([carried_status, np.full(trades.height, nb.PENDING, np.int8)])[order]
    size = np.concatenate([carried.get_column("size").fill_null(0.0).to_numpy(), np.zeros(trades.height)])[order]
    source = np.concatenate([np.ones(carried.height, np.int8), np.zeros(trades.height, np.int8)])[order]
    mark_lo = np.ascontiguousarray(np.concatenate([stored.lo, marks.lo])[order], dtype=np.int64)
    mark_hi = np.ascontiguousarray(np.concatenate([stored.hi, marks.hi])[order], dtype=np.int64)
    entry = frame.get_column("entry_ts_ms").to_numpy().astype(np.int64)
    exit_ = frame.get_column("exit_ts_ms").to_numpy().astype(np.int64)
    entry_px = frame.get_column("entry_px").to_numpy().astype(np.float64)
    growth = 1.0 + frame.get_column("realized_return_bps").to_numpy().astype(np.float64) / BPS

    pending = status == nb.PENDING
    first_pending = int(len(status) - pending.sum())
    if not pending[first_pending:].all():
        raise ValueError("portfolio: a carried call enters after a call not yet entered")  # a corrupt state
    account = state.account
    until = nb.NEVER if until_ms is None else int(until_ms)
    exits = [int(exit_.max())] if len(exit_) else []
    last_exit = max([*exits, *([account.last_exit_ms] if account.last_exit_ms is not None else [])], default=None)
    next_midnight = account.next_midnight_ms
    if next_midnight is None and first_pending < len(entry) and entry[first_pending] < until:
        next_midnight = int(entry[first_pending]) // nb.DAY_MS * nb.DAY_MS  # at or before the first entry
    midnight_end = -1 if last_exit is None else (last_exit // nb.DAY_MS + 1) * nb.DAY_MS  # first one after
    event_ts = np.unique(np.concatenate([entry[pending], exit_[status != nb.CLOSED]]))

    midnights = 0 if next_midnight is None else max(0, (min(midnight_end, until) - next_midnight) // nb.DAY_MS + 1)
    capacity = len(event_ts) + midnights
    out_ts = np.empty(capacity, dtype=np.int64)
    out_equity, out_cash, out_value = (np.empty(capacity) for _ in range(3))
    out_open = np.empty(capacity, dtype=np.int64)
    floats = np.array(
        [account.cash, account.peak, account.max_drawdown, account.exposed_ms, account.last_ratio, np.nan]
    )
    if account.last_equity is not None:
        floats[nb.LAST_EQUITY] = account.last_equity
    counts = np.array(
        [
            account.calls_taken,
            account.calls_skipped_cash,
            account.calls_skipped_max_positions,
            account.max_open_positions,
            nb.NEVER if account.first_point_ms is None else account.first_point_ms,
            nb.NEVER if account.last_point_ms is None else account.last_point_ms,
            nb.NEVER if next_midnight is None else next_midnight,
        ],
        dtype=np.int64,
    )
    open_idx = np.zeros(len(entry), dtype=np.int64)
    carried_open = np.flatnonzero(status == nb.OPEN)
    open_idx[: len(carried_open)] = carried_open
    cursor = mark_lo.copy()
    points, _ = nb.simulate_account(
        event_ts,
        entry,
        exit_,
        entry_px,
        growth,
        source,
        mark_lo,
        mark_hi,
        marks.ts,
        marks.close,
        np.int64(marks.delay_ms),
        stored.ts,
        stored.close,
        status,
        size,
        cursor,
        open_idx,
        len(carried_open),
        first_pending,
        floats,
        counts,
        float(params.position_size or 0.0),
        float(params.position_fraction or 0.0),
        int(params.max_positions or 0),
        until,
        midnight_end,
        out_ts,
        out_equity,
        out_cash,
        out_value,
        out_open,
    )
    curve = pl.DataFrame(
        {
            "ts_ms": out_ts[:points],
            "equity": out_equity[:points],
            "cash": out_cash[:points],
            "positions_value": out_value[:points],
            "open_positions": out_open[:points],
        },
        schema=EQUITY_SCHEMA,
    )
    midnight_equity = out_equity[:points][out_ts[:points] % nb.DAY_MS == 0]
    before = [] if account.last_midnight_equity is None else [account.last_midnight_equity]
    chain = np.concatenate([before, midnight_equity])
    returns = (chain[1:] / chain[:-1] - 1.0).tolist() if len(chain) > 1 else []

    def time_or_none(value: int) -> int | None:
        return None if value == nb.NEVER else int(value)

    new_account = Account(
        cash=float(floats[nb.CASH]),
        peak=float(floats[nb.PEAK]),
        max_drawdown=float(floats[nb.MAX_DRAWDOWN]),
        exposed_ms=float(floats[nb.EXPOSED_MS]),
        last_ratio=float(floats[nb.LAST_RATIO]),
        last_equity=None if math.isnan(floats[nb.LAST_EQUITY]) else float(floats[nb.LAST_EQUITY]),
        first_point_ms=time_or_none(counts[nb.FIRST_POINT]),
        last_point_ms=time_or_none(counts[nb.LAST_POINT]),
        next_midnight_ms=time_or_none(counts[nb.NEXT_MIDNIGHT]),
        last_exit_ms=last_exit,
        last_midnight_equity=float(chain[-1]) if len(chain) else None,
        daily_returns=(*account.daily_returns, *returns),
        calls_taken=int(counts[nb.TAKEN]),
        calls_skipped_cash=int(counts[nb.SKIPPED_CASH_COUNT]),
        calls_skipped_max_positions=int(counts[nb.SKIPPED_MAX_COUNT]),
        max_open_positions=int(counts[nb.MAX_OPEN]),
    )
    sources = (marks, stored)
    positions = _carry(frame, status, size, cursor, source, mark_lo, mark_hi, exit_, sources, until)
    state = PortfolioState(new_account, positions)
    return PortfolioMonth(curve, state, portfolio_figures(new_account, params.capital))


def _carry(frame, status, size, cursor, source, mark_lo, mark_hi, exit_, sources, until: int) -> pl.DataFrame:
    """The calls a later month still needs: open (with the mark in force and those to come),
    not yet entered (all their marks), and skipped with their exit, an event time, still ahead."""
    skipped = (status == nb.SKIPPED_CASH) | (status == nb.SKIPPED_MAX)
    keep = (status == nb.OPEN) | (status == nb.PENDING) | (skipped & (exit_ >= until))
    rows = np.flatnonzero(keep)
    lo = np.where(status[rows] == nb.OPEN, np.maximum(cursor[rows] - 1, mark_lo[rows]), mark_lo[rows])
    hi = np.where(skipped[rows], lo, mark_hi[rows])
    of = [sources[source[r]] for r in rows]  # each call's marks: the month's candles, or those handed on
    times = [m.ts[a:b] + m.delay_ms for m, a, b in zip(of, lo, hi)]
    closes = [m.close[a:b] for m, a, b in zip(of, lo, hi)]
    lengths = hi - lo
    return (
        frame[rows]
        .with_columns(
            pl.Series("status", np.array(STATUSES)[status[rows]], dtype=pl.String),
            pl.Series("size", np.where(status[rows] == nb.OPEN, size[rows], np.nan)).fill_nan(None),
            _list_column(np.concatenate([[], *times]).astype(np.int64), lengths, pl.List(pl.Int64)).alias("mark_ts_ms"),
            _list_column(np.concatenate([[], *closes]), lengths, pl.List(pl.Float64)).alias("mark_close"),
        )
        .select(POSITIONS_SCHEMA.names())
        .cast(POSITIONS_SCHEMA)
    )


# -- the figures -----------------------------------------------------------------------------------


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def daily_ratios(returns: Sequence[float]) -> tuple[float | None, float | None]:
    """`(sharpe, sortino)` of daily returns, annualized by √365: mean / std (ddof 1) and mean /
    √mean(min(r, 0)²); None with fewer than 2 returns or zero dispersion (all equal; none negative)."""
    r = np.asarray(returns, dtype=np.float64)
    if len(r) < 2:
        return None, None
    mean = float(r.mean())
    sharpe = None if r.max() == r.min() else _finite_or_none(mean / float(r.std(ddof=1)) * ANNUALIZATION)
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    sortino = None if downside == 0.0 else _finite_or_none(mean / downside * ANNUALIZATION)
    return sharpe, sortino


def portfolio_figures(account: Account, capital: float) -> dict[str, Any]:
    """The window-to-date figures over the points so far; before the first point, those of an
    untouched account (equity = capital, no drawdown, ratios and exposure null)."""
    equity_end = capital if account.last_equity is None else account.last_equity
    span = (account.last_point_ms or 0) - (account.first_point_ms or 0)
    sharpe, sortino = daily_ratios(account.daily_returns)
    return {
        "capital": capital,
        "equity_end": equity_end,
        "total_return": equity_end / capital - 1.0,
        "max_drawdown": account.max_drawdown,
        "sharpe": sharpe,
        "sortino": sortino,
        "exposure": _finite_or_none(account.exposed_ms / span) if span > 0 else None,
        "max_open_positions": account.max_open_positions,
        "calls_taken": account.calls_taken,
        "calls_skipped_cash": account.calls_skipped_cash,
        "calls_skipped_max_positions": account.calls_skipped_max_positions,
    }


def portfolio_row(figures: dict[str, Any], *, run_id: str, month: str) -> pl.DataFrame:
    """`results/portfolio.parquet`: one row, columns exactly `PORTFOLIO_SCHEMA`."""
    return pl.DataFrame([{"run_id": run_id, "month": month, **figures}], schema=PORTFOLIO_SCHEMA)
