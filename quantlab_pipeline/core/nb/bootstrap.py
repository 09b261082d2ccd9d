"""Bootstrap statistics of resampled returns (docs/confidence.md): the median and the mean of
every resample of several samples of one length, from one count of the draws per resample.

A resample of n values drawn with replacement is fully described by how often each value was
drawn. Its median is found by walking the positions in order of value until the counts pass the
middle: O(n), where a selection on the gathered values costs several passes and a copy; it is
NumPy's `np.median` of the gathered values exactly. Its mean is Σ count × value / n, added in
position order by eight interleaved accumulators: the same number as the mean of the gathered
values up to rounding (NumPy adds the gathered values pairwise, in draw order), at a fraction of
the cost, since no value is gathered. Samples of one length share the draws (arch's draws depend
on the length and the seed only), so the counts of a resample serve all of them.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, error_model="numpy")
def resample_statistics(values, sorted_values, orders, indices, medians, means):
    """For each sample s (a row of `values`, all of one length n) and each row r of `indices` (one
    resample, the same draws for every sample): `medians[s, r]` and `means[s, r]`, the median
    and the mean of `values[s][indices[r]]`. `orders[s]` is the stable ascending argsort of
    `values[s]`, `sorted_values[s]` the values in that order.

    The median is NumPy's: the middle value for an odd count, `(a + b) / 2` of the two middle
    values for an even one.
    """
    m, n = values.shape
    reps = indices.shape[0]
    counts = np.zeros(n, dtype=np.int32)
    low_k = (n - 1) // 2  # 0-based positions of the two middle values (equal for odd n)
    high_k = n // 2
    end = n - n % 8
    for r in range(reps):
        counts[:] = 0
        for i in range(n):
            counts[indices[r, i]] += 1
        for s in range(m):
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
            for j in range(0, end, 8):
                a0 += counts[j] * values[s, j]
                a1 += counts[j + 1] * values[s, j + 1]
                a2 += counts[j + 2] * values[s, j + 2]
                a3 += counts[j + 3] * values[s, j + 3]
                a4 += counts[j + 4] * values[s, j + 4]
                a5 += counts[j + 5] * values[s, j + 5]
                a6 += counts[j + 6] * values[s, j + 6]
                a7 += counts[j + 7] * values[s, j + 7]
            for j in range(end, n):
                a0 += counts[j] * values[s, j]
            means[s, r] = (((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))) / n
            seen = 0
            k = 0
            while seen <= low_k:
                seen += counts[orders[s, k]]
                k += 1
            low = sorted_values[s, k - 1]
            while seen <= high_k:
                seen += counts[orders[s, k]]
                k += 1
            high = sorted_values[s, k - 1]
            medians[s, r] = low if low_k == high_k else (low + high) / 2.0
