"""Feature kernels: what was known at each alert (docs/research.md "Features").

Both kernels only ever look backwards. `candle_features` reads, per alert, the candle rows
`[start, stop)` of its mint that had *closed* by the alert (`ts + interval <= alert_ts`) inside
the look-back; `caller_record` reads, per call, only earlier calls of the same caller, and
their outcomes only once their horizon had ended. NaN (float) and -1 (counts) mean "unknown".
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def candle_features(ts, close, volume, start, stop, alert_ts, interval_ms, return_windows, flow_windows):
    """Per alert `i` over its closed candles `[start[i], stop[i])` (ascending `ts`).

    The price at the alert is the last closed candle's close. For a window `W`, the *reference*
    candle is the last one closed by `alert_ts - W`; without it the window's history is too
    short and its features are NaN. With it:

    - `returns[i, w]`: last close / reference close - 1 (fraction), for `W = return_windows[w]`;
    - `rvol[i, w]`: realized volatility, sqrt of the sum of squared log returns close-to-close
      over the candles closed after the reference (`W = flow_windows[w]`);
    - `vol_sum[i, w]`: summed volume of those candles (NaN if any volume is NaN).

    Also `n_closed[i]` (closed candles in the look-back), `first_ts[i]` and `last_close_ts[i]`
    (open time of the first candle, close time of the last one; -1 when there is none).
    """
    n = start.shape[0]
    returns = np.full((n, return_windows.shape[0]), np.nan)
    rvol = np.full((n, flow_windows.shape[0]), np.nan)
    vol_sum = np.full((n, flow_windows.shape[0]), np.nan)
    n_closed = np.zeros(n, dtype=np.int64)
    first_ts = np.full(n, -1, dtype=np.int64)
    last_close_ts = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        a = start[i]
        b = stop[i]
        n_closed[i] = b - a
        if a >= b:
            continue
        first_ts[i] = ts[a]
        last_close_ts[i] = ts[b - 1] + interval_ms
        last = close[b - 1]
        for w in range(return_windows.shape[0]):
            ref = _reference(ts, a, b, alert_ts[i] - return_windows[w] - interval_ms)
            if ref >= 0:
                returns[i, w] = last / close[ref] - 1.0
        for w in range(flow_windows.shape[0]):
            ref = _reference(ts, a, b, alert_ts[i] - flow_windows[w] - interval_ms)
            if ref < 0:
                continue
            squares = 0.0
            traded = 0.0
            for k in range(ref + 1, b):
                r = np.log(close[k] / close[k - 1])
                squares += r * r
                traded += volume[k]
            rvol[i, w] = np.sqrt(squares)
            vol_sum[i, w] = traded
    return returns, rvol, vol_sum, n_closed, first_ts, last_close_ts


@numba.njit(cache=True, nogil=True)
def _reference(ts, a, b, max_open_ts):
    """The last row of `[a, b)` whose `ts <= max_open_ts`, or -1."""
    k = a + np.searchsorted(ts[a:b], max_open_ts, side="right") - 1
    return k if k >= a else -1


@numba.njit(cache=True, nogil=True)
def caller_record(group, alert_ts, horizon_ms, resolved, hit_2x, peak):
    """Per call, its caller's record before it; calls sorted by `(group, alert_ts)`.

    `prior_calls[i]`: calls of the same group with an earlier `alert_ts`. Of those whose horizon
    ended by this alert (`alert_ts_j + horizon_ms <= alert_ts_i`) and that have an outcome
    (`resolved`): `prior_resolved[i]`, their hit-2x rate and median peak multiple (NaN if none).
    With one horizon for all calls, the ended calls are a prefix of the group in time order, so
    each call adds the newly ended ones to a sorted buffer of peaks: no call is looked at twice
    per group beyond the insertion.
    """
    n = group.shape[0]
    prior_calls = np.zeros(n, dtype=np.int64)
    prior_resolved = np.zeros(n, dtype=np.int64)
    hit_rate = np.full(n, np.nan)
    median_peak = np.full(n, np.nan)
    peaks = np.empty(n)
    g0 = 0
    while g0 < n:
        g1 = g0
        while g1 < n and group[g1] == group[g0]:
            g1 += 1
        earlier = g0  # calls [g0, earlier) started before this call
        ended = g0  # calls [g0, ended) ended by this call
        count = 0  # resolved peaks in the buffer
        hits = 0
        for i in range(g0, g1):
            while earlier < i and alert_ts[earlier] < alert_ts[i]:
                earlier += 1
            prior_calls[i] = earlier - g0
            while ended < i and alert_ts[ended] + horizon_ms <= alert_ts[i]:
                if resolved[ended]:
                    hits += hit_2x[ended]
                    k = count  # insertion into the sorted buffer
                    while k > 0 and peaks[k - 1] > peak[ended]:
                        peaks[k] = peaks[k - 1]
                        k -= 1
                    peaks[k] = peak[ended]
                    count += 1
                ended += 1
            prior_resolved[i] = count
            if count > 0:
                hit_rate[i] = hits / count
                if count % 2 == 1:
                    median_peak[i] = peaks[count // 2]
                else:
                    median_peak[i] = 0.5 * (peaks[count // 2 - 1] + peaks[count // 2])
        g0 = g1
    return prior_calls, prior_resolved, hit_rate, median_peak
