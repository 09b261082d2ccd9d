"""Exit-policy simulation kernels (docs/inputs.md "Policies"): one trade per path, a policy or a grid.

A policy is a list of leaves compiled to flat arrays (`core.policy.compile_policies`): per leaf
`prices` = (stop multiple of p0 or 0, trail activation multiple or inf, trail keep multiple) and
`rules` = (stop reason, profit reason, max_hold ms or -1, first level row, end level row) into
`levels` = (multiple of p0, fraction). The kernels loop over contiguous candle arrays with
per-trade `[start, stop)` bounds, so no Python runs per candle or per trade.

Most trades exit after a few hundred candles, so the cost per trade matters as much as the cost
per candle. All of a trade's work therefore sits in one compiled function, `simulate_range`:
a numba call that receives arrays increments and decrements the reference count of each (17 of
them here, atomic operations), which cost more than the candles of an early exit when it was paid
per trade and per leaf. `simulate_serial` and `simulate_parallel` call it once per range of trades.
"""

from __future__ import annotations

import numba
import numpy as np

from quantlab_pipeline.core.nb.windows import prefetch
from quantlab_pipeline.core.policy_spec import BPS, FRACTION_TOLERANCE

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

# Steps inside one candle, in the order of docs/inputs.md "Policies"; they order the exits of a combo's leaves.
STEP_OPEN, STEP_STOP, STEP_PROFIT, STEP_CLOSE = 0, 1, 2, 3
NEVER = np.iinfo(np.int64).max  # "no exit yet" candle / timestamp
PREFETCH_AHEAD = 2  # trades ahead whose window's first candles are prefetched
PREFETCH_CANDLES = 128  # how many of their lows and highs
EXIT_CANDLES = 32  # how many of their opens and times (read at an exit; half the month's stops exit by then)
PARALLEL_CHUNK = 256  # trades per `simulate_range` call in `simulate_parallel`
STREAM_AHEAD = 128  # candles ahead of the one being read whose low and high are prefetched
QUIET_BLOCK = 8  # candles whose lowest low and highest high are checked at once (a cache line of each)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def first_at_or_after(ts, a, b, t):
    """The first row of sorted `ts[a:b]` with `ts >= t` (`b` if none), by binary search."""
    while a < b:
        mid = (a + b) // 2
        if ts[mid] < t:
            a = mid + 1
        else:
            b = mid
    return a


@numba.njit(cache=True, nogil=True, error_model="numpy")
def low_high(lo, hi, i):
    """The lowest low and the highest high of candles `i : i + QUIET_BLOCK`: branch-free, so a
    block costs one well-predicted test in `simulate_range` instead of one per candle and step."""
    block_low = lo[i]
    block_high = hi[i]
    for k in range(i + 1, i + QUIET_BLOCK):
        block_low = min(block_low, lo[k])
        block_high = max(block_high, hi[k])
    return block_low, block_high


@numba.njit(cache=True, nogil=True, error_model="numpy")
def simulate_range(
    t_lo,
    t_hi,
    ts,
    op,
    hi,
    lo,
    cl,
    start,
    stop,
    p0s,
    entry_tss,
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
    """Every policy over paths `t_lo <= t < t_hi`, written to column `t` of the outputs
    (`out_*[policy, path]`: exit_ts, exit_px, reason code, lowest price held); a path whose window
    has no candle is left untouched (`NO_TRADE`).

    A policy's leaves run one after the other over the same window; each stops at the candle of the
    best exit so far, and the winner is the earliest exit by (candle, step of the candle, order
    key): stops from the highest level down, profits from the lowest up, ties to the first leaf.

    Per candle a leaf reads only the low and the high: the time stop's candle is found once by
    binary search, the open only on an exit, and the trailing level follows the peak through
    selects rather than branches (a new high or low is too frequent to predict).

    Most candles change nothing, so the window is read in blocks of `QUIET_BLOCK`: when the
    block's lowest low is above every stop level it could reach (the trail follows the block's
    highest high at most) and its highest high is below the next profit level, no candle in it
    exits or fills, and the block only lowers the lowest price held and raises the peak (and with
    it the trail) — the state the per-candle steps would reach, bit for bit (a minimum or maximum
    picks one of its inputs). Any other block runs candle by candle. The lows and highs `STREAM_AHEAD`
    candles on are prefetched: windows are short and start at random rows, too short for the
    hardware prefetcher to follow (it took the month's long windows from 1.5 to 0.9 ns a candle).
    """
    n_policies = leaf_offsets.shape[0] - 1
    for t in range(t_lo, t_hi):
        ahead = t + PREFETCH_AHEAD
        if ahead < t_hi:
            fa = start[ahead]
            for i in range(fa, min(stop[ahead], fa + PREFETCH_CANDLES), 8):  # 8 float64 per cache line
                prefetch(lo, i)
                prefetch(hi, i)
            for i in range(fa, min(stop[ahead], fa + EXIT_CANDLES), 8):
                prefetch(op, i)
                prefetch(ts, i)
        a = start[t]
        b = stop[t]
        if a >= b:
            continue
        p0 = p0s[t]
        entry_ts = entry_tss[t]
        for p in range(n_policies):
            best_c, best_step, best_key = NEVER, STEP_CLOSE, 0.0
            best_ts, best_px, best_reason, best_low = NEVER, 0.0, NO_TRADE, 0.0
            for leaf in range(leaf_offsets[p], leaf_offsets[p + 1]):
                end = b if best_c == NEVER else min(b, best_c + 1)  # a later exit cannot win
                # -- one leaf over candles [a, end): its exit (c, step, key, exit_ts, exit_px, reason, low)
                stop_px = p0 * leaf_prices[leaf, 0]
                activation_px = p0 * leaf_prices[leaf, 1]
                keep = leaf_prices[leaf, 2]
                stop_reason, profit_reason, max_hold = leaf_rules[leaf, 0], leaf_rules[leaf, 1], leaf_rules[leaf, 2]
                nxt, lv_end = leaf_rules[leaf, 3], leaf_rules[leaf, 4]
                time_i = end  # the first candle at or after the deadline: the time stop exits at its open
                if max_hold >= 0:
                    time_i = first_at_or_after(ts, a, end, entry_ts + max_hold)
                trailing = activation_px < np.inf
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
                c = NEVER
                step, key, exit_ts, exit_px, exit_reason, low_out = STEP_CLOSE, 0.0, NEVER, 0.0, NO_TRADE, 0.0
                i0 = a
                while i0 < time_i:
                    i1 = i0 + QUIET_BLOCK
                    if i0 + STREAM_AHEAD < time_i:
                        prefetch(lo, i0 + STREAM_AHEAD)
                        prefetch(hi, i0 + STREAM_AHEAD)
                    if i1 <= time_i:
                        # A block in which no candle can exit, fill or move the stop is skipped whole.
                        block_low, block_high = low_high(lo, hi, i0)
                        top = block_high if block_high > peak else peak
                        bound = level  # the highest stop level the block could reach
                        if trailing and (armed or top >= activation_px) and top * keep > bound:
                            bound = top * keep
                        if block_low > bound and block_high < next_px:
                            low_held = block_low if block_low < low_held else low_held
                            if trailing:
                                peak = top
                                armed = armed or peak >= activation_px
                                trail_px = peak * keep
                                above = armed and trail_px > stop_px
                                level = trail_px if above else stop_px
                                reason = TRAILING_STOP if above else stop_reason
                            i0 = i1
                            continue
                    else:
                        i1 = time_i
                    for i in range(i0, i1):
                        low = lo[i]
                        if low <= level:
                            o = op[i]
                            c, step, key, exit_ts, exit_reason = i, STEP_STOP, -level, ts[i], reason
                            if o <= level:
                                exit_px, low_out = proceeds + remaining * o, min(low_held, o)
                            else:
                                exit_px, low_out = proceeds + remaining * level, min(low_held, low)
                            break
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
                                c, step, key, exit_ts, exit_reason = i, STEP_PROFIT, filled_px, ts[i], profit_reason
                                exit_px = proceeds / (1.0 - remaining)
                                low_out = low_held if o >= filled_px else min(low_held, low)
                                break
                        low_held = low if low < low_held else low_held
                        if trailing:
                            peak = high if high > peak else peak
                            armed = armed or peak >= activation_px
                            trail_px = peak * keep
                            above = armed and trail_px > stop_px
                            level = trail_px if above else stop_px
                            reason = TRAILING_STOP if above else stop_reason
                    if c != NEVER:
                        break
                    i0 = i1
                if c == NEVER:
                    if time_i < end:
                        o = op[time_i]
                        c, step, key, exit_ts, exit_reason = time_i, STEP_OPEN, 0.0, ts[time_i], TIME_STOP
                        exit_px, low_out = proceeds + remaining * o, min(low_held, o)
                    elif end == b:
                        close = cl[b - 1]
                        c, step, key, exit_ts, exit_reason = (
                            b - 1,
                            STEP_CLOSE,
                            0.0,
                            ts[b - 1] + interval_ms,
                            END_OF_DATA,
                        )
                        exit_px, low_out = proceeds + remaining * close, min(low_held, close)
                # -- the earliest exit so far wins
                if c < best_c or (c == best_c and (step < best_step or (step == best_step and key < best_key))):
                    best_c, best_step, best_key = c, step, key
                    best_ts, best_px, best_reason, best_low = exit_ts, exit_px, exit_reason, low_out
            out_ts[p, t] = best_ts
            out_px[p, t] = best_px
            out_reason[p, t] = best_reason
            out_low[p, t] = best_low


@numba.njit(cache=True, nogil=True, error_model="numpy")
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
    """Every policy over every path on the calling thread (see `simulate_range`)."""
    simulate_range(
        0,
        start.shape[0],
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


@numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)
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
    """Ranges of paths spread over cores; each path's candles stay hot in cache while every policy runs."""
    n = start.shape[0]
    for chunk in numba.prange((n + PARALLEL_CHUNK - 1) // PARALLEL_CHUNK):
        simulate_range(
            chunk * PARALLEL_CHUNK,
            min(n, (chunk + 1) * PARALLEL_CHUNK),
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


@numba.njit(cache=True, nogil=True, error_model="numpy")
def trade_values(exit_px, low_held, p0, costs_bps):
    """A trade's `(gain, realized_return_bps, max_adverse_excursion_bps)` from its exit price and the
    lowest price held (docs/inputs.md "Policies"): the one place both the trades and the sweep's
    aggregation compute them, so the frontier's numbers are the trades' bit for bit."""
    gain = exit_px / p0 - 1.0
    excursion = low_held / p0 - 1.0
    return gain, gain * BPS - costs_bps, (excursion if excursion < 0.0 else 0.0) * BPS


@numba.njit(cache=True, nogil=True, error_model="numpy")
def trade_columns(out_ts, out_px, out_reason, out_low, entry_ts, p0, peak, costs_bps, is_stop_out):
    """The per-trade columns of the kernels' outputs (`out_*[policy, path]`), one row per traded
    (policy, path) in policy-major order, in one pass: `policy_index, path_index, entry_ts_ms,
    entry_px, exit_ts_ms, exit_px, reason code, realized_return_bps, stop_out,
    max_adverse_excursion_bps, time_exposed_ms, tail_capture` (NaN where the path's `peak` is not
    above 1 or is NaN). `is_stop_out[code]` marks the stop-type reasons.

    The arithmetic is the frame's formulas (docs/inputs.md "Policies"), one operation at a time as NumPy
    would do them, so the values are the same bit for bit.
    """
    n_policies, n_paths = out_reason.shape
    n = 0
    for p in range(n_policies):
        for t in range(n_paths):
            n += out_reason[p, t] != NO_TRADE
    policy_index = np.empty(n, dtype=np.int64)
    path_index = np.empty(n, dtype=np.int64)
    trade_entry_ts = np.empty(n, dtype=np.int64)
    entry_px = np.empty(n, dtype=np.float64)
    exit_ts = np.empty(n, dtype=np.int64)
    exit_px = np.empty(n, dtype=np.float64)
    reason = np.empty(n, dtype=np.int8)
    realized = np.empty(n, dtype=np.float64)
    stop_out = np.empty(n, dtype=np.bool_)
    adverse = np.empty(n, dtype=np.float64)
    exposed = np.empty(n, dtype=np.int64)
    tail = np.empty(n, dtype=np.float64)
    row = 0
    for p in range(n_policies):
        for t in range(n_paths):
            code = out_reason[p, t]
            if code == NO_TRADE:
                continue
            px = p0[t]
            gain, realized[row], adverse[row] = trade_values(out_px[p, t], out_low[p, t], px, costs_bps)
            policy_index[row] = p
            path_index[row] = t
            trade_entry_ts[row] = entry_ts[t]
            entry_px[row] = px
            exit_ts[row] = out_ts[p, t]
            exit_px[row] = out_px[p, t]
            reason[row] = code
            stop_out[row] = is_stop_out[code]
            exposed[row] = out_ts[p, t] - entry_ts[t]
            tail[row] = gain / (peak[t] - 1.0) if peak[t] > 1.0 else np.nan
            row += 1
    return (
        policy_index,
        path_index,
        trade_entry_ts,
        entry_px,
        exit_ts,
        exit_px,
        reason,
        realized,
        stop_out,
        adverse,
        exposed,
        tail,
    )
