"""Candle ingest kernels: group fetched rows by mint, sort them, validate and de-duplicate.

The rules are docs/inputs.md "Inputs" and docs/semantics.md (Candles): a candle is valid when its prices are finite and positive and high/low bound open and
close; validation runs before de-duplication, so a bad row never counts as a duplicate; among
rows of one `ts_ms` the highest volume wins (NaN volume lowest; then higher open, high, low,
close), so the winner never depends on the order rows arrived in.

Columns are parallel arrays: `ts` int64, `op, hi, lo, cl, vol` float64. A mint's rows are
`offsets[g]:offsets[g + 1]` (its *group*).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def scatter_batch(k, ts, op, hi, lo, cl, vol, cursor, ends, o_ts, o_op, o_hi, o_lo, o_cl, o_vol):
    """Put each row of one fetched batch (group index `k`) at the next free slot `cursor[k]` of its
    group in the output columns `o_*`.

    Group sizes are counted before the fetch, so every value is written once, straight into its
    final place: no growing arrays, no second pass to group. Returns False if a group would pass
    its end `ends[k]` (the source changed between the count and the fetch).
    """
    for i in range(k.shape[0]):
        g = k[i]
        p = cursor[g]
        if p >= ends[g]:
            return False
        o_ts[p] = ts[i]
        o_op[p] = op[i]
        o_hi[p] = hi[i]
        o_lo[p] = lo[i]
        o_cl[p] = cl[i]
        o_vol[p] = vol[i]
        cursor[g] = p + 1
    return True


@numba.njit(cache=True, nogil=True)
def sort_groups(offsets, ts, op, hi, lo, cl, vol):
    """Sort each group's rows by `ts` in place (stable), touching only the groups that arrived out
    of order (rare: most sources are ordered)."""
    for g in range(offsets.shape[0] - 1):
        a = offsets[g]
        b = offsets[g + 1]
        ordered = True
        for i in range(a + 1, b):
            if ts[i] < ts[i - 1]:
                ordered = False
                break
        if ordered:
            continue
        order = np.argsort(ts[a:b], kind="mergesort") + a
        for col in (op, hi, lo, cl, vol):
            col[a:b] = col[order]
        ts[a:b] = ts[order]


@numba.njit(cache=True, nogil=True)
def is_valid_candle(o, h, l, c):
    """Whether one candle's prices are usable. Together the comparisons imply every price is finite
    and > 0 (NaN fails every comparison)."""
    return l > 0.0 and h < np.inf and h >= o and h >= c and l <= o and l <= c


@numba.njit(cache=True, nogil=True)
def better_duplicate(i, j, op, hi, lo, cl, vol):
    """Whether row `i` beats row `j` among duplicates of one `ts`: highest volume (NaN lowest), then
    a fixed order of prices, so the winner never depends on the order rows arrived in."""
    vi = vol[i] if vol[i] == vol[i] else -np.inf
    vj = vol[j] if vol[j] == vol[j] else -np.inf
    if vi != vj:
        return vi > vj
    if op[i] != op[j]:
        return op[i] > op[j]
    if hi[i] != hi[j]:
        return hi[i] > hi[j]
    if lo[i] != lo[j]:
        return lo[i] > lo[j]
    return cl[i] > cl[j]


@numba.njit(cache=True, nogil=True)
def same_row(i, j, op, hi, lo, cl, vol):
    """Whether rows `i` and `j` carry the same values (two NaN volumes are equal): an identical
    duplicate, as opposed to a conflicting one."""
    return (
        op[i] == op[j]
        and hi[i] == hi[j]
        and lo[i] == lo[j]
        and cl[i] == cl[j]
        and (vol[i] == vol[j] or (vol[i] != vol[i] and vol[j] != vol[j]))
    )


@numba.njit(cache=True, nogil=True)
def clean_groups(offsets, ts, op, hi, lo, cl, vol, new_offsets, bad, dup, conflicting):
    """Drop invalid rows, collapse equal-ts rows to the best valid one, compact in place.

    Needs each group sorted by `ts` (`sort_groups`). Writes the kept groups' bounds to
    `new_offsets` and counts per group `g`: `bad[g]` dropped invalid rows, `dup[g]` dropped valid
    duplicates, of which `conflicting[g]` differed from the kept row. Returns the number of rows
    kept (the first rows of `ts, op, hi, lo, cl, vol`).
    """
    w = 0
    new_offsets[0] = 0
    for g in range(offsets.shape[0] - 1):
        a = offsets[g]
        b = offsets[g + 1]
        i = a
        while i < b:
            t = ts[i]
            j = i + 1
            while j < b and ts[j] == t:
                j += 1
            best = -1
            for r in range(i, j):
                if not is_valid_candle(op[r], hi[r], lo[r], cl[r]):
                    bad[g] += 1
                elif best < 0:
                    best = r
                else:
                    dup[g] += 1
                    if better_duplicate(r, best, op, hi, lo, cl, vol):
                        best = r
            if best >= 0:
                if j - i > 1:
                    for r in range(i, j):
                        if (
                            r != best
                            and is_valid_candle(op[r], hi[r], lo[r], cl[r])
                            and not same_row(r, best, op, hi, lo, cl, vol)
                        ):
                            conflicting[g] += 1
                ts[w] = t
                op[w] = op[best]
                hi[w] = hi[best]
                lo[w] = lo[best]
                cl[w] = cl[best]
                vol[w] = vol[best]
                w += 1
            i = j
        new_offsets[g + 1] = w
    return w
