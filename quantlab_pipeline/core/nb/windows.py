"""Per-alert candle windows: the `[start, stop)` rows of one mint between two timestamps."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def fill_window_bounds(offsets, ts, mint_idx, lo_ts, hi_ts, start, stop):
    """Fill `start[i], stop[i]` with the rows of mint `mint_idx[i]` whose `lo_ts[i] <= ts < hi_ts[i]`.

    Mint `k` owns rows `offsets[k]:offsets[k+1]` of `ts` (sorted); `mint_idx[i] < 0` (a mint
    without candles) gives the empty window `[0, 0)`, and so does `hi_ts[i] <= lo_ts[i]`.
    """
    for i in range(mint_idx.shape[0]):
        k = mint_idx[i]
        if k < 0:
            start[i] = 0
            stop[i] = 0
            continue
        a = offsets[k]
        b = offsets[k + 1]
        seg = ts[a:b]
        start[i] = a + np.searchsorted(seg, lo_ts[i], side="left")
        stop[i] = max(start[i], a + np.searchsorted(seg, hi_ts[i], side="left"))
