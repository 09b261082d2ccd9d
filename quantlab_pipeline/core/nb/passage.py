"""First-passage exits of a grid of single fixed levels (docs/performance.md, "First-passage sweeps").

A policy that is one stop level and at most one take-profit level closing the whole position
(docs/inputs.md "Policies": no trail, no time stop, no ladder of several levels, no combo of
several leaves) exits at the first candle whose low reaches its stop or whose high reaches its
target, whichever comes first (the stop in a tie: it is checked first within a candle). The
first candle whose low is at or below a level is where the running minimum of the lows crosses
it, so one pass over a window finds the first-passage candle of every stop level of the grid at
once (sorted from the highest down, advanced as the lows fall), and likewise every target level
(from the lowest up, as the highs rise); each policy's exit is then a lookup. A grid of 100
stops x 100 targets costs one pass per window instead of 10,000 (`nb.policy.simulate_range`).

The outputs are those of `nb.policy.simulate_range` for the same policies bit for bit: the same
levels (`p0 * multiple`), fills (`min(open, level)`, `max(open, level)`), arithmetic (`proceeds +
remaining * price` with nothing filled before) and lowest price held (the lows before the exit
candle, then its open or its low).
"""

from __future__ import annotations

import numba
import numpy as np

from quantlab_pipeline.core.nb.policy import END_OF_DATA, NEVER, PARALLEL_CHUNK, QUIET_BLOCK, low_high
from quantlab_pipeline.core.nb.windows import prefetch

STREAM_AHEAD = 128  # candles ahead of the one being read whose low and high are prefetched


@numba.njit(cache=True, nogil=True, error_model="numpy")
def passage_range(
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
    interval_ms,
    stop_multiples,
    stop_of,
    target_multiples,
    target_of,
    target_part,
    stop_reason,
    profit_reason,
    out_ts,
    out_px,
    out_reason,
    out_low,
):
    """Every policy over paths `t_lo <= t < t_hi`, written to column `t` of the outputs (as
    `simulate_range`); a path whose window has no candle is left untouched. `p0s` must be > 0 (the
    levels' order is the multiples' order).

    Policy `p` stops at `p0 * stop_multiples[stop_of[p]]` (descending, distinct; 0 = no stop) and
    takes profit at `p0 * target_multiples[target_of[p]]` (ascending, distinct; inf = no target)
    for the fraction `target_part[p]` (`min(fraction, 1)`, within the tolerance of 1).

    Per level the pass records the first-passage candle and the lowest price held before it. It
    ends when every stop level or every target level has been crossed: each policy then has an
    exit. Blocks of `QUIET_BLOCK` candles whose lows stay above the next stop level and highs below
    the next target level are passed whole, as in `simulate_range`.
    """
    n_policies = stop_of.shape[0]
    n_stops = stop_multiples.shape[0]
    n_targets = target_multiples.shape[0]
    stop_c = np.empty(n_stops, dtype=np.int64)
    stop_low = np.empty(n_stops)
    target_c = np.empty(n_targets, dtype=np.int64)
    target_low = np.empty(n_targets)
    for t in range(t_lo, t_hi):
        a = start[t]
        b = stop[t]
        if a >= b:
            continue
        p0 = p0s[t]
        ks, kt = 0, 0
        next_stop = p0 * stop_multiples[0]
        next_target = p0 * target_multiples[0]
        low_held = p0
        i0 = a
        while i0 < b and ks < n_stops and kt < n_targets:
            i1 = i0 + QUIET_BLOCK
            if i0 + STREAM_AHEAD < b:
                prefetch(lo, i0 + STREAM_AHEAD)
                prefetch(hi, i0 + STREAM_AHEAD)
            if i1 <= b:
                block_low, block_high = low_high(lo, hi, i0)
                if block_low > next_stop and block_high < next_target:
                    low_held = block_low if block_low < low_held else low_held
                    i0 = i1
                    continue
            else:
                i1 = b
            for i in range(i0, i1):
                low = lo[i]
                while low <= next_stop:  # stops from the highest level down
                    stop_c[ks] = i
                    stop_low[ks] = low_held
                    ks += 1
                    next_stop = p0 * stop_multiples[ks] if ks < n_stops else -np.inf
                high = hi[i]
                while high >= next_target:  # targets from the lowest level up
                    target_c[kt] = i
                    target_low[kt] = low_held
                    kt += 1
                    next_target = p0 * target_multiples[kt] if kt < n_targets else np.inf
                low_held = low if low < low_held else low_held
                if ks == n_stops or kt == n_targets:
                    break
            i0 = i1
        for k in range(ks, n_stops):
            stop_c[k] = NEVER
        for k in range(kt, n_targets):
            target_c[k] = NEVER
        for p in range(n_policies):
            s = stop_of[p]
            g = target_of[p]
            cs = stop_c[s]
            cg = target_c[g]
            if cs <= cg and cs != NEVER:  # a stop and a target in one candle: the stop (checked first)
                level = p0 * stop_multiples[s]
                o = op[cs]
                out_ts[p, t] = ts[cs]
                out_reason[p, t] = stop_reason[p]
                if o <= level:
                    out_px[p, t] = 0.0 + 1.0 * o
                    out_low[p, t] = min(stop_low[s], o)
                else:
                    out_px[p, t] = 0.0 + 1.0 * level
                    out_low[p, t] = min(stop_low[s], lo[cs])
            elif cg != NEVER:
                filled_px = p0 * target_multiples[g]
                o = op[cg]
                part = target_part[p]
                proceeds = 0.0 + part * max(o, filled_px)
                remaining = 1.0 - part
                out_ts[p, t] = ts[cg]
                out_reason[p, t] = profit_reason[p]
                out_px[p, t] = proceeds / (1.0 - remaining)
                out_low[p, t] = target_low[g] if o >= filled_px else min(target_low[g], lo[cg])
            else:  # neither level crossed, so the pass read the whole window
                close = cl[b - 1]
                out_ts[p, t] = ts[b - 1] + interval_ms
                out_reason[p, t] = END_OF_DATA
                out_px[p, t] = 0.0 + 1.0 * close
                out_low[p, t] = min(low_held, close)


@numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def passage_parallel(
    ts,
    op,
    hi,
    lo,
    cl,
    start,
    stop,
    p0s,
    interval_ms,
    stop_multiples,
    stop_of,
    target_multiples,
    target_of,
    target_part,
    stop_reason,
    profit_reason,
    out_ts,
    out_px,
    out_reason,
    out_low,
):
    """`passage_range` over ranges of `PARALLEL_CHUNK` paths spread over cores (as `simulate_parallel`)."""
    n = start.shape[0]
    for chunk in numba.prange((n + PARALLEL_CHUNK - 1) // PARALLEL_CHUNK):
        passage_range(
            chunk * PARALLEL_CHUNK,
            min(n, (chunk + 1) * PARALLEL_CHUNK),
            ts,
            op,
            hi,
            lo,
            cl,
            start,
            stop,
            p0s,
            interval_ms,
            stop_multiples,
            stop_of,
            target_multiples,
            target_of,
            target_part,
            stop_reason,
            profit_reason,
            out_ts,
            out_px,
            out_reason,
            out_low,
        )
