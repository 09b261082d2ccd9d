"""Portfolio kernels (docs/portfolio.md): an account following a run's trades, event by event.

Trades are parallel arrays in buy order (entry time, then call_id). A trade's *marks* are the
closes of its mint's candles from its entry candle on, each known at a time: rows
`mark_lo[i]:mark_hi[i]` of one of two sources (`source[i]`): 0, the month's candles themselves
(`ts0` open times, known `delay0` = Δ later: nothing is copied), or 1, the marks the month before
handed on (`ts1` the times they are known). `cursor[i]` is the first of them not yet known, so
marking an open position at time t only moves its cursor forward: over a month every position's
marks are read once, however many points are marked.
"""

from __future__ import annotations

import numba
import numpy as np

# A trade's fate (`status`); the numbering is the order `core.portfolio.STATUSES` names them in.
PENDING, OPEN, CLOSED, SKIPPED_CASH, SKIPPED_MAX = range(5)
DAY_MS = 86_400_000
NEVER = np.iinfo(np.int64).max  # "no such time": an unset point, or no end to the run

# The account carried from point to point (`account`, float64) ...
CASH, PEAK, MAX_DRAWDOWN, EXPOSED_MS, LAST_RATIO, LAST_EQUITY = range(6)
# ... and its counters and times (`counts`, int64; times are NEVER while unset).
TAKEN, SKIPPED_CASH_COUNT, SKIPPED_MAX_COUNT, MAX_OPEN, FIRST_POINT, LAST_POINT, NEXT_MIDNIGHT = range(7)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def gather_marks(ts, close, start, stop, delay, offsets, out_ts, out_close):
    """Copy rows `start[i]:stop[i]` of each trade to `out_*[offsets[i]:offsets[i + 1]]`, as (time
    the close is known: `ts + delay`, close)."""
    for i in range(start.shape[0]):
        w = offsets[i]
        for r in range(start[i], stop[i]):
            out_ts[w] = ts[r] + delay
            out_close[w] = close[r]
            w += 1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def mark_open(t, open_idx, n_open, size, entry_px, source, mark_lo, mark_hi, ts0, close0, delay0, ts1, close1, cursor):
    """The open positions' worth at time t, summed in buy order: size × c / entry_px with c the
    close of the last candle known by t, or the size while none is."""
    value = 0.0
    for j in range(n_open):
        i = open_idx[j]
        c = cursor[i]
        hi = mark_hi[i]
        # One branch per source, each indexing its arrays directly: binding an array to a local
        # in the loop costs reference counting per position and point.
        if source[i] == 0:
            known = t - delay0
            while c < hi and ts0[c] <= known:
                c += 1
            mark = close0[c - 1] if c > mark_lo[i] else entry_px[i]
        else:
            while c < hi and ts1[c] <= t:
                c += 1
            mark = close1[c - 1] if c > mark_lo[i] else entry_px[i]
        cursor[i] = c
        value += size[i] * (mark / entry_px[i])
    return value


@numba.njit(cache=True, nogil=True, error_model="numpy")
def simulate_account(
    event_ts,
    entry_ts,
    exit_ts,
    entry_px,
    growth,
    source,
    mark_lo,
    mark_hi,
    ts0,
    close0,
    delay0,
    ts1,
    close1,
    status,
    size,
    cursor,
    open_idx,
    n_open,
    first_pending,
    account,
    counts,
    position_size,
    position_fraction,
    max_positions,
    until,
    midnight_end,
    out_ts,
    out_equity,
    out_cash,
    out_value,
    out_open,
):
    """Run the account through every point before `until`: the event times `event_ts` (sorted,
    unique) and the midnights from `counts[NEXT_MIDNIGHT]` through `midnight_end`.

    At an event time: first the sells of open positions exiting then (proceeds size × growth),
    then the buys entering then, in trade order (trades `first_pending:` are the ones not yet
    bought or skipped), each skipped when `max_positions` (> 0) are open, else when cash is below
    its size (`position_size`, or `position_fraction` × equity at that instant when > 0), and sold
    at once when it exits at that same time. Then the point: every open position marked, equity =
    cash + their worth, the running peak and drawdown, the exposure integral, the counters.

    `status`, `size`, `cursor`, `open_idx` (the open positions, in buy order), `account` and
    `counts` are updated in place; `out_*` receive the points. Returns `(points, open positions)`.
    """
    n = entry_ts.shape[0]
    n_events = event_ts.shape[0]
    e = 0
    b = first_pending
    p = 0
    cash = account[CASH]
    next_midnight = counts[NEXT_MIDNIGHT]
    while True:
        t_event = event_ts[e] if e < n_events else NEVER
        t_midnight = next_midnight if next_midnight <= midnight_end else NEVER
        t = min(t_event, t_midnight)
        if t >= until:
            break
        if t == t_event:
            w = 0
            for j in range(n_open):
                i = open_idx[j]
                if exit_ts[i] == t:
                    cash += size[i] * growth[i]
                    status[i] = CLOSED
                else:
                    open_idx[w] = i
                    w += 1
            n_open = w
            value = 0.0  # the open positions' worth at t, once a fractional size needs it
            value_known = False
            while b < n and entry_ts[b] == t:
                i = b
                b += 1
                if max_positions > 0 and n_open >= max_positions:
                    status[i] = SKIPPED_MAX
                    counts[SKIPPED_MAX_COUNT] += 1
                    continue
                spend = position_size
                if position_fraction > 0.0:
                    if not value_known:
                        value = mark_open(
                            t,
                            open_idx,
                            n_open,
                            size,
                            entry_px,
                            source,
                            mark_lo,
                            mark_hi,
                            ts0,
                            close0,
                            delay0,
                            ts1,
                            close1,
                            cursor,
                        )
                        value_known = True
                    spend = position_fraction * (cash + value)
                if not spend > 0.0 or cash < spend:
                    status[i] = SKIPPED_CASH
                    counts[SKIPPED_CASH_COUNT] += 1
                    continue
                cash -= spend
                size[i] = spend
                counts[TAKEN] += 1
                if exit_ts[i] == t:  # an exit inside the entry candle
                    cash += spend * growth[i]
                    status[i] = CLOSED
                else:
                    status[i] = OPEN
                    open_idx[n_open] = i
                    n_open += 1
                    value += spend  # worth its size: no candle of it has closed yet
            e += 1
        value = mark_open(
            t, open_idx, n_open, size, entry_px, source, mark_lo, mark_hi, ts0, close0, delay0, ts1, close1, cursor
        )
        equity = cash + value
        out_ts[p] = t
        out_equity[p] = equity
        out_cash[p] = cash
        out_value[p] = value
        out_open[p] = n_open
        p += 1
        if equity > account[PEAK]:
            account[PEAK] = equity
        drawdown = (account[PEAK] - equity) / account[PEAK]
        if drawdown > account[MAX_DRAWDOWN]:
            account[MAX_DRAWDOWN] = drawdown
        if counts[FIRST_POINT] == NEVER:
            counts[FIRST_POINT] = t
        else:
            account[EXPOSED_MS] += account[LAST_RATIO] * (t - counts[LAST_POINT])
        account[LAST_RATIO] = value / equity if equity > 0.0 else np.nan
        account[LAST_EQUITY] = equity
        counts[LAST_POINT] = t
        if n_open > counts[MAX_OPEN]:
            counts[MAX_OPEN] = n_open
        if t == t_midnight:
            next_midnight += DAY_MS
    account[CASH] = cash
    counts[NEXT_MIDNIGHT] = next_midnight
    return p, n_open
