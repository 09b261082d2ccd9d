"""The truth kernel: what the market did after each call (docs/artifacts.md "What a run writes", `truth/paths.parquet`).

Every "first candle with high >= X" is the first time the running maximum reaches X (and the same
for lows), so all the upward events (activity up, each multiple, 2x) wait behind one compare with
the lowest level still pending, and the downward one behind another: per candle, two loads, the
running extremes as branch-free selects (the peak kept as a row, its time read once at the end),
and two compares that are almost never true. A new high or low is too frequent (about one candle
in eight on the sample data) to sit behind a branch.
"""

from __future__ import annotations

import numba
import numpy as np

OK, NO_ENTRY, BAD_PRICE = 0, 1, 2  # per-alert status: entered; no entry candle; entry open not a price
NO_TS = np.iinfo(np.int64).min  # "never" in the kernel's timestamp outputs; null in the frame
DD_MULTIPLE = 2.0  # dd_to_2x_bps always measures up to the 2x candle


@numba.njit(cache=True, nogil=True, inline="always")
def _next_up_level(up, up_ts, thresholds, next_m, two_x, hit_2x):
    """The lowest upward level whose event has not happened yet (inf when none is left)."""
    level = up if up_ts == NO_TS else np.inf
    if next_m < thresholds.shape[0] and thresholds[next_m] < level:
        level = thresholds[next_m]
    if hit_2x == NO_TS and two_x < level:
        level = two_x
    return level


@numba.njit(cache=True, nogil=True)
def truth_kernel(ts, open_, high, low, start, stop, alert_ts, entry_limit_ts, multiples, activity_move):
    """Per alert `i`, over candle rows `[start[i], stop[i])` (its `alert_ts <= ts < alert_ts + H`).

    The entry candle is row `start[i]` if its `ts < entry_limit_ts[i]`; `multiples` must be
    ascending (`TruthParams` sorts them). Returns arrays
    `(status, p0, entry_ts, n_candles, t_hit[n_alerts, n_multiples], peak_high, t_peak, min_low,
    t_2x, min_low_to_2x, t_active)`; timestamps are `NO_TS` when the event never happens.
    """
    n = start.shape[0]
    n_mult = multiples.shape[0]
    status = np.full(n, OK, dtype=np.int8)
    p0 = np.full(n, np.nan)
    entry_ts = np.full(n, NO_TS, dtype=np.int64)
    n_candles = np.zeros(n, dtype=np.int64)
    t_hit = np.full((n, n_mult), NO_TS, dtype=np.int64)
    peak_high = np.full(n, np.nan)
    t_peak = np.full(n, NO_TS, dtype=np.int64)
    min_low = np.full(n, np.nan)
    t_2x = np.full(n, NO_TS, dtype=np.int64)
    min_low_to_2x = np.full(n, np.nan)
    t_active = np.full(n, NO_TS, dtype=np.int64)
    thresholds = np.empty(n_mult)
    for i in range(n):
        a = start[i]
        b = stop[i]
        if a >= b or ts[a] >= entry_limit_ts[i]:
            status[i] = NO_ENTRY
            continue
        p = open_[a]
        p0[i] = p
        entry_ts[i] = ts[a]
        if not (p > 0.0 and p < np.inf):
            status[i] = BAD_PRICE
            continue
        for m in range(n_mult):
            thresholds[m] = multiples[m] * p
        two_x = DD_MULTIPLE * p
        up = p * (1.0 + activity_move)
        down = p * (1.0 - activity_move)
        hi = -np.inf
        lo = np.inf
        t_hi = -1  # row of the peak
        next_m = 0
        hit_2x = NO_TS
        lo_2x = np.nan
        up_ts = NO_TS
        down_ts = NO_TS
        down_level = down  # -inf once the activity move down has happened
        up_level = _next_up_level(up, up_ts, thresholds, next_m, two_x, hit_2x)
        for j in range(a, b):
            l = low[j]
            h = high[j]
            if l < lo:
                lo = l
            if h > hi:
                hi = h
                t_hi = j
            if l <= down_level:
                down_ts = ts[j]
                down_level = -np.inf
            if h >= up_level:
                if h >= up and up_ts == NO_TS:
                    up_ts = ts[j]
                while next_m < n_mult and h >= thresholds[next_m]:
                    t_hit[i, next_m] = ts[j]
                    next_m += 1
                if hit_2x == NO_TS and h >= two_x:
                    hit_2x = ts[j]
                    lo_2x = lo  # includes this candle's low
                up_level = _next_up_level(up, up_ts, thresholds, next_m, two_x, hit_2x)
        n_candles[i] = b - a
        peak_high[i] = hi
        t_peak[i] = ts[t_hi] if t_hi >= 0 else NO_TS
        min_low[i] = lo
        t_2x[i] = hit_2x
        min_low_to_2x[i] = lo_2x
        if up_ts == NO_TS:
            t_active[i] = down_ts
        elif down_ts == NO_TS:
            t_active[i] = up_ts
        else:
            t_active[i] = min(up_ts, down_ts)
    return status, p0, entry_ts, n_candles, t_hit, peak_high, t_peak, min_low, t_2x, min_low_to_2x, t_active
