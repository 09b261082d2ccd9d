"""Bootstrap statistics over resampled returns (docs/confidence.md): medians without sorting.

A resample of n values drawn with replacement from n values is fully described by how often each
value was drawn, so its median is found by counting draws per rank and walking the counts up to
the middle: O(n) per resample, where a selection (`np.partition`) on the gathered values costs
several passes and a copy.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, error_model="numpy")
def resample_medians(sorted_values, ranks, indices, out):
    """`out[r]` = the median of `values[indices[r, :]]`, for `values` whose ascending order is
    `sorted_values` and where `ranks[i]` is the position of `values[i]` in it.

    The median is NumPy's: the middle value for an odd count, the mean `(a + b) / 2` of the two
    middle values for an even one, so the results equal `np.median` of each gathered row bit for bit.
    """
    reps, n = indices.shape
    counts = np.zeros(n, dtype=np.int64)
    low_k = (n - 1) // 2  # 0-based positions of the two middle values (equal for odd n)
    high_k = n // 2
    for r in range(reps):
        counts[:] = 0
        for i in range(n):
            counts[ranks[indices[r, i]]] += 1
        seen = 0
        j = 0
        while seen <= low_k:
            seen += counts[j]
            j += 1
        low = sorted_values[j - 1]
        while seen <= high_k:
            seen += counts[j]
            j += 1
        high = sorted_values[j - 1]
        out[r] = low if low_k == high_k else (low + high) / 2.0
