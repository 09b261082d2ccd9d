"""Exit-policy simulation kernels (README "Policies"): one trade per path, a policy or a grid.

A policy is a list of leaves compiled to flat arrays (`core.policy.compile_policies`): per leaf
`prices` = (stop multiple of p0 or 0, trail activation multiple or inf, trail keep multiple) and
`rules` = (stop reason, profit reason, max_hold ms or -1, first level row, end level row) into
`levels` = (multiple of p0, fraction). The kernels loop over contiguous candle arrays with
per-trade `[start, stop)` bounds, so no Python runs per candle or per trade.
"""

from __future__ import annotations

import numba
import numpy as np

from quantlab_pipeline.core.policy_spec import FRACTION_TOLERANCE

# Exit reason codes; `EXIT_REASONS[code]` is the name written to `policy/trades.parquet`.
STOP_LOSS, TAKE_PROFIT, TIME_STOP, HARD_STOP, TRAILING_STOP, LADDER_COMPLETE, END_OF_DATA = range(7)
EXIT_REASONS: tuple[str, ...] = (
    "stop_loss",
    "take_profit",
    "time_stop",
    "hard_stop",
    "trailing_stop",
    "ladder_complete",
    "end_of_data",
)
NO_TRADE = -1  # the reason left in the outputs of a path whose window has no candle

# Steps inside one candle, in the order of README "Policies"; they order the exits of a combo's leaves.
STEP_OPEN, STEP_STOP, STEP_PROFIT, STEP_CLOSE = 0, 1, 2, 3
NEVER = np.iinfo(np.int64).max  # "no exit yet" candle / timestamp


@numba.njit(cache=True, nogil=True)
def run_leaf(ts, op, hi, lo, cl, a, b, end, p0, entry_ts, interval_ms, prices, rules, levels):
    """One exit rule over candles `[a, end)` of window `[a, b)`.

    Returns (candle, step, order key, exit_ts, exit_px, exit reason, lowest price held); candle is
    `NEVER` when `end < b` and nothing exited before `end` (a later combo leaf that cannot win).

    The per-candle loop reads only the low and the high: the time stop's candle is found once by
    binary search, the open is read only on an exit, and the stop level (fixed or trailing) is
    recomputed only when the peak moves, since it depends on nothing else.
    """
    stop_px = p0 * prices[0]
    activation_px = p0 * prices[1]
    keep = prices[2]
    stop_reason, profit_reason, max_hold, nxt, lv_end = rules[0], rules[1], rules[2], rules[3], rules[4]
    time_i = end  # the first candle at or after the deadline: the time stop exits at its open
    if max_hold >= 0:
        time_i = a + np.searchsorted(ts[a:end], entry_ts + max_hold, side="left")
    peak = p0
    armed = peak >= activation_px
    level = stop_px
    reason = stop_reason
    if armed and peak * keep > level:
        level = peak * keep
        reason = TRAILING_STOP
    remaining = 1.0
    proceeds = 0.0
    low_held = p0
    next_px = p0 * levels[nxt, 0] if nxt < lv_end else np.inf
    for i in range(a, time_i):
        low = lo[i]
        if low <= level:
            o = op[i]
            if o <= level:
                proceeds += remaining * o
                return i, STEP_STOP, -level, ts[i], proceeds, reason, min(low_held, o)
            proceeds += remaining * level
            return i, STEP_STOP, -level, ts[i], proceeds, reason, min(low_held, low)
        high = hi[i]
        if high >= next_px:
            o = op[i]
            filled_px = next_px
            while high >= next_px and remaining > FRACTION_TOLERANCE:
                filled_px = next_px
                part = min(levels[nxt, 1], remaining)
                proceeds += part * max(o, filled_px)
                remaining -= part
                nxt += 1
                next_px = p0 * levels[nxt, 0] if nxt < lv_end else np.inf
            if remaining <= FRACTION_TOLERANCE:
                held = low_held if o >= filled_px else min(low_held, low)
                return i, STEP_PROFIT, filled_px, ts[i], proceeds / (1.0 - remaining), profit_reason, held
        if low < low_held:
            low_held = low
        if high > peak:
            peak = high
            if peak >= activation_px:
                armed = True
            if armed and peak * keep > stop_px:
                level = peak * keep
                reason = TRAILING_STOP
    if time_i < end:
        o = op[time_i]
        proceeds += remaining * o
        return time_i, STEP_OPEN, 0.0, ts[time_i], proceeds, TIME_STOP, min(low_held, o)
    if end < b:
        return NEVER, STEP_CLOSE, 0.0, NEVER, 0.0, NO_TRADE, 0.0
    close = cl[b - 1]
    proceeds += remaining * close
    return b - 1, STEP_CLOSE, 0.0, ts[b - 1] + interval_ms, proceeds, END_OF_DATA, min(low_held, close)


@numba.njit(cache=True, nogil=True)
def run_policy(ts, op, hi, lo, cl, a, b, p0, entry_ts, interval_ms, leaf_lo, leaf_hi, leaf_prices, leaf_rules, levels):
    """The winning leaf's (exit_ts, exit_px, reason, lowest price held) for one trade."""
    best_c, best_step, best_key = NEVER, STEP_CLOSE, 0.0
    best_ts, best_px, best_reason, best_low = NEVER, 0.0, NO_TRADE, 0.0
    for leaf in range(leaf_lo, leaf_hi):
        end = b if best_c == NEVER else min(b, best_c + 1)
        c, step, key, exit_ts, exit_px, reason, low = run_leaf(
            ts, op, hi, lo, cl, a, b, end, p0, entry_ts, interval_ms, leaf_prices[leaf], leaf_rules[leaf], levels
        )
        if c < best_c or (c == best_c and (step < best_step or (step == best_step and key < best_key))):
            best_c, best_step, best_key = c, step, key
            best_ts, best_px, best_reason, best_low = exit_ts, exit_px, reason, low
    return best_ts, best_px, best_reason, best_low


@numba.njit(cache=True, nogil=True)
def simulate_path(
    t,
    ts,
    op,
    hi,
    lo,
    cl,
    start,
    stop,
    p0,
    entry_ts,
    interval_ms,
    leaf_offsets,
    leaf_prices,
    leaf_rules,
    levels,
    out_ts,
    out_px,
    out_reason,
    out_low,
):
    """Every policy over path `t`, written to column `t` of the outputs (left as `NO_TRADE`
    when the window has no candle)."""
    if start[t] >= stop[t]:
        return
    for p in range(leaf_offsets.shape[0] - 1):
        out_ts[p, t], out_px[p, t], out_reason[p, t], out_low[p, t] = run_policy(
            ts,
            op,
            hi,
            lo,
            cl,
            start[t],
            stop[t],
            p0[t],
            entry_ts[t],
            interval_ms,
            leaf_offsets[p],
            leaf_offsets[p + 1],
            leaf_prices,
            leaf_rules,
            levels,
        )


@numba.njit(cache=True, nogil=True)
def simulate_serial(
    ts,
    op,
    hi,
    lo,
    cl,
    start,
    stop,
    p0,
    entry_ts,
    interval_ms,
    leaf_offsets,
    leaf_prices,
    leaf_rules,
    levels,
    out_ts,
    out_px,
    out_reason,
    out_low,
):
    for t in range(start.shape[0]):
        simulate_path(
            t,
            ts,
            op,
            hi,
            lo,
            cl,
            start,
            stop,
            p0,
            entry_ts,
            interval_ms,
            leaf_offsets,
            leaf_prices,
            leaf_rules,
            levels,
            out_ts,
            out_px,
            out_reason,
            out_low,
        )


@numba.njit(cache=True, nogil=True, parallel=True)
def simulate_parallel(
    ts,
    op,
    hi,
    lo,
    cl,
    start,
    stop,
    p0,
    entry_ts,
    interval_ms,
    leaf_offsets,
    leaf_prices,
    leaf_rules,
    levels,
    out_ts,
    out_px,
    out_reason,
    out_low,
):
    """Paths spread over cores; each path's candles stay hot in cache while every policy runs."""
    for t in numba.prange(start.shape[0]):
        simulate_path(
            t,
            ts,
            op,
            hi,
            lo,
            cl,
            start,
            stop,
            p0,
            entry_ts,
            interval_ms,
            leaf_offsets,
            leaf_prices,
            leaf_rules,
            levels,
            out_ts,
            out_px,
            out_reason,
            out_low,
        )
