"""Per-alert candle windows: the `[start, stop)` rows of one mint between two timestamps."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

BOUNDS_AHEAD = 32  # rows ahead whose mint's first and last candle times are prefetched


@numba.njit(cache=True, nogil=True, error_model="numpy")
def interpolate(ts, a, b, x):
    """Where linear interpolation between `ts[a]` and `ts[b - 1]` (`a < b`) puts `x`, within `[a, b)`."""
    span = ts[b - 1] - ts[a]
    guess = a + int((x - ts[a]) / span * (b - 1 - a)) if span > 0 else a
    return min(max(guess, a), b - 1)


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
    guess = interpolate(ts, a, b, x)
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

    Rows follow the alerts, so each search lands on a cold, random part of `ts`: the rows read
    first by the search of row `i + BOUNDS_AHEAD` (its mint's first and last candle, and where
    interpolation puts its `lo_ts`) are prefetched while row `i` is searched.
    """
    n = mint_idx.shape[0]
    for i in range(n):
        ahead = i + BOUNDS_AHEAD
        if ahead < n:
            k = mint_idx[ahead]
            if k >= 0 and offsets[k] < offsets[k + 1]:
                prefetch(ts, offsets[k])
                prefetch(ts, offsets[k + 1] - 1)
        half = i + BOUNDS_AHEAD // 2  # its first and last times are cached by now
        if half < n:
            k = mint_idx[half]
            if k >= 0 and offsets[k] < offsets[k + 1]:
                prefetch(ts, interpolate(ts, offsets[k], offsets[k + 1], lo_ts[half]))
        k = mint_idx[i]
        if k < 0:
            start[i] = 0
            stop[i] = 0
            continue
        a = offsets[k]
        b = offsets[k + 1]
        start[i] = lower_bound(ts, a, b, lo_ts[i])
        stop[i] = max(start[i], lower_bound(ts, start[i], b, hi_ts[i]))


MINT_LOOKUP_AHEAD = 16  # names between the stages of `lookup_mints`' prefetch pipeline


@numba.njit(cache=True, nogil=True, error_model="numpy")
def build_mint_table(hashes):
    """An open-addressing table of the candle set's mints: `(keys, rows)`, a power-of-two size at
    least twice the mints, `rows[slot] = -1` where empty; mint `r` sits at the first free slot from
    `hashes[r] & (size - 1)` on (linear probing, so equal hashes are all kept)."""
    size = 1
    while size < 2 * hashes.shape[0]:
        size *= 2
    mask = np.uint64(size - 1)
    keys = np.zeros(size, dtype=np.uint64)
    rows = np.full(size, -1, dtype=np.int64)
    for r in range(hashes.shape[0]):
        slot = hashes[r] & mask
        while rows[slot] >= 0:
            slot = (slot + np.uint64(1)) & mask
        keys[slot] = hashes[r]
        rows[slot] = r
    return keys, rows


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _same_string(a_offsets, a_data, i, b_offsets, b_data, j):
    a0, a1, b0, b1 = a_offsets[i], a_offsets[i + 1], b_offsets[j], b_offsets[j + 1]
    if a1 - a0 != b1 - b0:
        return False
    for k in range(a1 - a0):  # noqa: SIM110 (a loop compiles to a tight byte compare; `all(...)` to a generator)
        if a_data[a0 + k] != b_data[b0 + k]:
            return False
    return True


@numba.njit(cache=True, nogil=True, error_model="numpy")
def lookup_mints(keys, rows, mint_offsets, mint_data, hashes, name_offsets, name_data, out):
    """`out[i]` = the row of the mint equal to name `i` (Arrow string buffers), or -1.

    A slot answers only when its hash matches and the bytes are equal, so the result is exact
    whatever the hash. Each name costs three dependent reads at random places (its slot, the
    candidate's byte offset, its bytes), all cold after a kernel has streamed the candles; they
    are prefetched in a pipeline, one stage every `MINT_LOOKUP_AHEAD` names.
    """
    mask = np.uint64(keys.shape[0] - 1)
    n = hashes.shape[0]
    for i in range(n):
        third = i + 3 * MINT_LOOKUP_AHEAD
        if third < n:
            slot = hashes[third] & mask
            prefetch(keys, slot)
            prefetch(rows, slot)
        second = i + 2 * MINT_LOOKUP_AHEAD
        if second < n:
            r = rows[hashes[second] & mask]
            if r >= 0:
                prefetch(mint_offsets, r)
        first = i + MINT_LOOKUP_AHEAD
        if first < n:
            r = rows[hashes[first] & mask]
            if r >= 0:
                prefetch(mint_data, mint_offsets[r])
        h = hashes[i]
        slot = h & mask
        found = -1
        while rows[slot] >= 0:
            r = rows[slot]
            if keys[slot] == h and _same_string(name_offsets, name_data, i, mint_offsets, mint_data, r):
                found = r
                break
            slot = (slot + np.uint64(1)) & mask
        out[i] = found


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
        pointer = builder.bitcast(pointer, ir.IntType(8).as_pointer())  # one declaration for every dtype
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]), "llvm.prefetch.p0"
        )
        builder.call(fn, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, i), codegen


# Called from kernels as `prefetch(array, index)`; the annotation gives type checkers that signature.
prefetch = cast(Callable[[np.ndarray, int], None], intrinsic(_prefetch))
