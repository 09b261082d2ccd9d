"""Per-alert candle windows: the `[start, stop)` rows of one mint between two timestamps."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic


@numba.njit(cache=True, nogil=True, error_model="numpy")
def lower_bound(ts, a, b, x):
    """`a + np.searchsorted(ts[a:b], x, side="left")`: the first row of sorted `ts[a:b]` with `ts >= x`.

    Candle times are close to evenly spaced, so the search starts where linear interpolation
    between `ts[a]` and `ts[b - 1]` puts `x`, gallops outwards to bracket it, and bisects the
    bracket: a few cache lines per search instead of a dozen cold ones for a plain bisection.
    """
    if a >= b or x <= ts[a]:
        return a
    if x > ts[b - 1]:
        return b
    # Here ts[a] < x <= ts[b - 1]: find the bracket ts[left] < x <= ts[right].
    span = ts[b - 1] - ts[a]
    guess = a + int((x - ts[a]) / span * (b - 1 - a)) if span > 0 else a
    guess = min(max(guess, a), b - 1)
    if ts[guess] < x:
        left, right, step = guess, guess + 1, 1
        while ts[right] < x:  # ts[b - 1] >= x stops it
            left = right
            step *= 2
            right = min(guess + step, b - 1)
    else:
        left, right, step = guess - 1, guess, 1
        while left > a and ts[left] >= x:  # ts[a] < x stops it
            right = left
            step *= 2
            left = max(guess - step, a)
    while right - left > 1:
        mid = (left + right) // 2
        if ts[mid] < x:
            left = mid
        else:
            right = mid
    return right


@numba.njit(cache=True, nogil=True, error_model="numpy")
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
        start[i] = lower_bound(ts, a, b, lo_ts[i])
        stop[i] = max(start[i], lower_bound(ts, start[i], b, hi_ts[i]))


def _prefetch(typingctx, arr, i):
    """Ask the CPU to start loading the cache line of `arr[i]` (LLVM `prefetch`, read, keep in all
    cache levels); no effect on results. Kernels that jump from window to window issue it for the
    next window's first candles so that its memory latency overlaps the current window's work."""
    if not isinstance(arr, types.Array) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, [args[1]], wraparound=False)
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]), "llvm.prefetch.p0"
        )
        builder.call(fn, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, i), codegen


# Called from kernels as `prefetch(array, index)`; the annotation gives type checkers that signature.
prefetch = cast(Callable[[np.ndarray, int], None], intrinsic(_prefetch))
