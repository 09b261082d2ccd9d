"""Bootstrap statistics of resampled returns (docs/confidence.md): the median and the mean of
every resample in one pass over its indices, equal bit for bit to NumPy's `np.median` and
`ndarray.mean` of the gathered values, which is what `arch`'s bootstrap computes.

A resample of n values drawn with replacement is fully described by how often each value was
drawn, so its median is found by counting draws per rank and walking the counts to the middle:
O(n), where a selection on the gathered values costs several passes and a copy. The mean must add
the gathered values in NumPy's order: `pairwise_sum` is NumPy's pairwise summation
(`numpy/_core/src/umath/loops_utils.h.src`), which `tests` check against `np.sum` at many sizes.
"""

from __future__ import annotations

import numba
import numpy as np

PAIRWISE_BLOCK = 128  # NumPy's PW_BLOCKSIZE


@numba.njit(cache=True, nogil=True, error_model="numpy")
def block_sum(a, lo, n):
    """NumPy's sum of at most `PAIRWISE_BLOCK` values: below 8 a plain loop; else eight
    interleaved accumulators added as a tree, then the remainder."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    end = n - n % 8
    while i < end:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@numba.njit(cache=True, nogil=True, error_model="numpy")
def pairwise_sum(a, lo, n):
    """`np.sum(a[lo : lo + n])` bit for bit: up to `PAIRWISE_BLOCK` values `block_sum`; above, the
    sum of the two halves (the first a multiple of 8 long), each summed the same way.

    NumPy recurses; this walks the same tree with an explicit stack (numba's on-disk cache of a
    recursive function crashes when loaded: numba issue 6061). Frames are (start, length, state):
    0 = left half to do, 1 = right half to do, 2 = add the two sums below it on `sums`.
    """
    start = np.empty(64, dtype=np.int64)  # depth <= log2(n / PAIRWISE_BLOCK) + 1 < 64
    length = np.empty(64, dtype=np.int64)
    state = np.zeros(64, dtype=np.int64)
    sums = np.empty(64, dtype=np.float64)
    top, filled = 0, 0
    start[0], length[0], state[0] = lo, n, 0
    while top >= 0:
        m = length[top]
        if m <= PAIRWISE_BLOCK:
            sums[filled] = block_sum(a, start[top], m)
            filled += 1
            top -= 1
            continue
        half = m // 2
        half -= half % 8
        if state[top] == 0:
            state[top] = 1
            start[top + 1], length[top + 1], state[top + 1] = start[top], half, 0
            top += 1
        elif state[top] == 1:
            state[top] = 2
            start[top + 1], length[top + 1], state[top + 1] = start[top] + half, m - half, 0
            top += 1
        else:
            filled -= 1
            sums[filled - 1] = sums[filled - 1] + sums[filled]
            top -= 1
    return sums[0]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def resample_statistics(values, sorted_values, ranks, indices, medians, means):
    """For each row r of `indices` (one resample of `values`): `medians[r]` = `np.median` and
    `means[r]` = `.mean()` of `values[indices[r]]`. `sorted_values` is `values` ascending and
    `ranks[i]` the position of `values[i]` in it.

    The median is NumPy's: the middle value for an odd count, `(a + b) / 2` of the two middle
    values for an even one.
    """
    reps, n = indices.shape
    counts = np.zeros(n, dtype=np.int32)
    gathered = np.empty(n, dtype=np.float64)
    low_k = (n - 1) // 2  # 0-based positions of the two middle values (equal for odd n)
    high_k = n // 2
    for r in range(reps):
        counts[:] = 0
        for i in range(n):
            j = indices[r, i]
            gathered[i] = values[j]
            counts[ranks[j]] += 1
        means[r] = pairwise_sum(gathered, 0, n) / n
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
        medians[r] = low if low_k == high_k else (low + high) / 2.0
