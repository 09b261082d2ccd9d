"""The sweep's per-policy metrics in compiled code (docs/performance.md, "Aggregation in the kernel").

The policy kernel leaves one exit per (policy, path) (`out_*[policy, path]`); `aggregate_policies`
turns a chunk of them into the frontier's metrics per (policy, group) without a per-trade frame:
the trade values (`nb.policy.trade_values`, as the trades compute them), the means, and the median and
5 % quantile by selection instead of a sort. The frontier's numbers are those Polars gives for the
same trades, bit for bit: a mean is a Kahan-compensated sum in row order divided by the count (what
Polars' grouped mean computes), a quantile is linear between the two nearest order statistics.
The same pass sums each policy's realized returns per UTC day of entry (`results/policy_daily.parquet`).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from quantlab_pipeline.core.nb.policy import NO_TRADE, trade_values

# Columns of `aggregate_policies`' `stats[policy, group, :]`, in the order of `frontier._STAT_NAMES`.
TRADES, AVG_RETURN, MEDIAN_RETURN, STOP_OUT_RATE, P95_MAE, AVG_TAIL, AVG_EXPOSED = range(7)
N_STATS = 7


@numba.njit(cache=True, nogil=True, error_model="numpy")
def kahan_add(total, carry, value):
    """One step of Kahan's compensated sum: the new `(total, carry)`."""
    y = value - carry
    t = total + y
    return t, (t - total) - y


# Values sampled, evenly spaced, to bracket an order statistic before selecting it (`linear_quantile`).
QUANTILE_SAMPLE = 256


@numba.njit(cache=True, nogil=True, error_model="numpy")
def linear_quantile(values, n, q, scratch):
    """The `q` quantile of `values[:n]`, linear between the nearest order statistics (Polars'
    `interpolation="linear"`); may reorder `values[:n]`; `scratch` holds at least `n` values.

    Selecting among every value mispredicts a branch at every step, which made selection three
    quarters of the aggregation. So two order statistics of an evenly spaced sample bracket the
    wanted ones, with a margin of three standard deviations of a sampled rank; one branch-free pass
    counts the values below the bracket and copies those inside, and the selection runs on those.
    When the bracket misses (or a value is NaN), the selection runs on every value: the result is
    the same order statistic either way (docs/performance.md, "Aggregation in the kernel")."""
    position = (n - 1) * q
    i = math.floor(position)
    j = math.ceil(position)
    candidates, rank, size = values, i, n
    if n >= 4 * QUANTILE_SAMPLE:
        sample = scratch[:QUANTILE_SAMPLE]
        stride = n // QUANTILE_SAMPLE
        for k in range(QUANTILE_SAMPLE):
            sample[k] = values[k * stride]
        sample.sort()
        at = (i * QUANTILE_SAMPLE) // n
        margin = int(3.0 * math.sqrt(QUANTILE_SAMPLE * q * (1.0 - q))) + 2
        lo = sample[max(at - margin, 0)]
        hi = sample[min(at + margin, QUANTILE_SAMPLE - 1)]
        below, inside, above = 0, 0, 0
        for k in range(n):
            v = values[k]
            scratch[inside] = v
            inside += (v >= lo) & (v <= hi)
            below += v < lo
            above += v > hi
        if below + inside + above == n and below <= i and j < below + inside:
            candidates, rank, size = scratch, i - below, inside
    part = np.partition(candidates[:size], rank)
    lower = part[rank]
    if j == i:
        return lower
    upper = part[rank + 1 :].min()
    return (position - i) * (upper - lower) + lower


@numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def aggregate_policies(
    out_ts,
    out_px,
    out_reason,
    out_low,
    entry_ts,
    p0,
    peak,
    costs_bps,
    is_stop_out,
    group_paths,
    group_offsets,
    day_of_path,
    n_days,
):
    """Per policy `p` (row of `out_*`) and group `g` (paths `group_paths[group_offsets[g] :
    group_offsets[g + 1]]`, ascending): `stats[p, g]` (`TRADES` … `AVG_EXPOSED`, NaN where the
    group has no trade or, for the tail capture, no trade with a peak above 1) and, over every
    path, per day index `day_of_path[t]`: `day_sums[p, d]` and `day_counts[p, d]` of the realized returns."""
    n_policies, n_paths = out_reason.shape
    n_groups = group_offsets.shape[0] - 1
    stats = np.full((n_policies, n_groups, N_STATS), np.nan)
    day_sums = np.zeros((n_policies, n_days))
    day_counts = np.zeros((n_policies, n_days), dtype=np.int64)
    for p in numba.prange(n_policies):
        returns = np.empty(n_paths)
        adverse = np.empty(n_paths)
        scratch = np.empty(n_paths)
        for g in range(n_groups):
            n = 0
            ret_sum, ret_carry = 0.0, 0.0
            stop_sum, stop_carry = 0.0, 0.0
            exposed_sum, exposed_carry = 0.0, 0.0
            tail_sum, tail_carry = 0.0, 0.0
            n_tail = 0
            for k in range(group_offsets[g], group_offsets[g + 1]):
                t = group_paths[k]
                code = out_reason[p, t]
                if code == NO_TRADE:
                    continue
                gain, realized, adverse[n] = trade_values(out_px[p, t], out_low[p, t], p0[t], costs_bps)
                returns[n] = realized
                n += 1
                ret_sum, ret_carry = kahan_add(ret_sum, ret_carry, realized)
                stop_sum, stop_carry = kahan_add(stop_sum, stop_carry, 1.0 if is_stop_out[code] else 0.0)
                exposed_sum, exposed_carry = kahan_add(exposed_sum, exposed_carry, float(out_ts[p, t] - entry_ts[t]))
                if peak[t] > 1.0:
                    tail_sum, tail_carry = kahan_add(tail_sum, tail_carry, gain / (peak[t] - 1.0))
                    n_tail += 1
                if g == 0:
                    d = day_of_path[t]
                    day_sums[p, d] += realized
                    day_counts[p, d] += 1
            if n == 0:
                continue
            stats[p, g, TRADES] = n
            stats[p, g, AVG_RETURN] = ret_sum / n
            stats[p, g, STOP_OUT_RATE] = stop_sum / n
            stats[p, g, AVG_EXPOSED] = exposed_sum / n
            if n_tail:
                stats[p, g, AVG_TAIL] = tail_sum / n_tail
            stats[p, g, MEDIAN_RETURN] = linear_quantile(returns, n, 0.5, scratch)
            stats[p, g, P95_MAE] = linear_quantile(adverse, n, 0.05, scratch)
    return stats, day_sums, day_counts
