"""How much of an optimization's winner is luck (docs/confidence.md).

- **Daily matrix**: per policy and UTC day of `entry_ts_ms`, the trades entered that day and
  their mean `realized_return_bps`.
- **PBO** by combinatorially symmetric cross-validation (Bailey, Borwein, López de Prado, Zhu
  2015): how often the policy that is best on half of the days lands in the bottom half on the
  other half.
- **SPA**: Hansen's test of superior predictive ability against a benchmark policy, as
  `arch.bootstrap.SPA` computes it (`core.spa`: the same p-values without importing arch).
- **Bootstrap intervals** of a policy's median and mean return: the percentile intervals of
  `arch.bootstrap.IIDBootstrap`, computed from the very resampling indices arch draws.

Days without trades: the matrix has a row per (policy, day) with at least one trade — a mean over
no trades does not exist, and a stored 0 would be a fake one. PBO and SPA read the matrix as a
dense policies × days array over the days of the matrix (every day on which any of its policies
traded), where a day a policy did not trade contributes 0 bps: it held nothing that day. In a
sweep every policy trades every entry, so its policies trade on the same days and no cell is
filled; the rule makes the stored matrix and the statistics on it one definition.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from quantlab_pipeline.core.nb.bootstrap import resample_statistics
from quantlab_pipeline.core.policy_spec import Policy, policy_id_of, policy_json
from quantlab_pipeline.core.spa import SpaPvalues, spa_pvalues
from quantlab_pipeline.core.sweep_spec import hold_to_horizon

DAY_MS = 86_400_000
SPA_REPS = 1_000
SPA_SEED = 0
SPA_MIN_DAYS = 3  # arch's consistent p-value uses ln(ln T): undefined or negative below 3 days
SPA_LEVEL = 0.05  # the sentence's "beats it"
BOOTSTRAP_REPS = 1_000
BOOTSTRAP_SEED = 0
INTERVAL_SIZE = 0.95
_CHUNK_CELLS = 4_000_000  # policies x splits, or repetitions x trades, held at once (32 MB of float64)

DAILY_SCHEMA = pl.Schema(
    {
        "run_id": pl.String,
        "policy_id": pl.String,
        "day": pl.Date,
        "trades": pl.Int64,
        "mean_return_bps": pl.Float64,
    }
)

OVERFITTING_SCHEMA = pl.Schema(
    {
        "run_id": pl.String,
        "n_policies": pl.Int64,
        "n_days": pl.Int64,
        "cscv_blocks": pl.Int64,
        "cscv_splits": pl.Int64,
        "pbo": pl.Float64,
        "logit_median": pl.Float64,
        "benchmark_policy_id": pl.String,
        "spa_pvalue": pl.Float64,
        "spa_pvalue_lower": pl.Float64,
        "spa_pvalue_upper": pl.Float64,
    }
)

INTERVAL_SCHEMA = pl.Schema(
    {
        "median_return_bps_ci_low": pl.Float64,
        "median_return_bps_ci_high": pl.Float64,
        "avg_return_bps_ci_low": pl.Float64,
        "avg_return_bps_ci_high": pl.Float64,
    }
)


# -- the daily matrix -------------------------------------------------------------------------


@dataclass(frozen=True)
class DailySums:
    """Per (policy, UTC day of entry): the sum and the count of `realized_return_bps`, as
    policies × days arrays over the ascending `day_numbers` (days since 1970-01-01) — what
    `daily_matrix` stores. A sweep sums them in its compiled pass (`nb.sweep.aggregate_policies`)."""

    day_numbers: np.ndarray  # int64, ascending
    sums: np.ndarray  # float64, policies × days
    counts: np.ndarray  # int64, policies × days


def daily_matrix(
    policy_ids: Sequence[str], day_numbers: np.ndarray, sums: np.ndarray, counts: np.ndarray, *, run_id: str
) -> pl.DataFrame:
    """The daily matrix from per-(policy, day) sums and counts of `realized_return_bps`:
    `sums[i, j]` and `counts[i, j]` for policy `policy_ids[i]` on UTC day `day_numbers[j]` (days
    since 1970-01-01, `entry_ts_ms // DAY_MS`). Cells without trades have no row. Rows by
    `policy_id`, then `day`; columns exactly `DAILY_SCHEMA`."""
    counts = np.asarray(counts, dtype=np.int64)
    rows, cols = np.nonzero(counts)
    return (
        pl.DataFrame(
            {
                "policy_id": np.asarray(policy_ids, dtype=object)[rows],
                "day": np.asarray(day_numbers, dtype=np.int64)[cols],
                "trades": counts[rows, cols],
                "mean_return_bps": np.asarray(sums, dtype=np.float64)[rows, cols] / counts[rows, cols],
            },
            schema={"policy_id": pl.String, "day": pl.Int64, "trades": pl.Int64, "mean_return_bps": pl.Float64},
        )
        .with_columns(pl.lit(run_id, dtype=pl.String).alias("run_id"), pl.col("day").cast(pl.Int32).cast(pl.Date))
        .sort("policy_id", "day")
        .select(DAILY_SCHEMA.names())
    )


def daily_matrix_of_trades(trades: pl.DataFrame, *, run_id: str) -> pl.DataFrame:
    """The daily matrix of a trades frame (`policy/trades.parquet`, or any frame with
    `policy_id, entry_ts_ms, realized_return_bps`): the same rows `daily_matrix` gives for the
    same trades (means are sum / count; a different order of summation may change the last bit)."""
    day = (pl.col("entry_ts_ms") // DAY_MS).cast(pl.Int32).cast(pl.Date).alias("day")
    return (
        trades.group_by("policy_id", day)
        .agg(pl.len().cast(pl.Int64).alias("trades"), pl.col("realized_return_bps").sum().alias("_sum"))
        .with_columns(
            pl.lit(run_id, dtype=pl.String).alias("run_id"),
            (pl.col("_sum") / pl.col("trades")).alias("mean_return_bps"),
        )
        .sort("policy_id", "day")
        .select(DAILY_SCHEMA.names())
        .cast(DAILY_SCHEMA)
    )


def daily_values(matrix: pl.DataFrame, policy_ids: Sequence[str]) -> np.ndarray:
    """The matrix as a dense `len(policy_ids)` × D array over the D days of the whole matrix, in
    order: row i is `policy_ids[i]`'s daily mean return, 0 on a day it did not trade."""
    days = matrix.get_column("day").unique().sort()
    rows = pl.DataFrame({"policy_id": list(policy_ids)}, schema={"policy_id": pl.String}).with_row_index("_row")
    cells = matrix.join(rows, on="policy_id").join(days.to_frame().with_row_index("_col"), on="day")
    values = np.zeros((len(policy_ids), days.len()))
    values[cells.get_column("_row").to_numpy(), cells.get_column("_col").to_numpy()] = cells.get_column(
        "mean_return_bps"
    ).to_numpy()
    return values


# -- PBO by CSCV ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cscv:
    """PBO of one matrix; `pbo`, `logit_median` null and no splits when CSCV does not apply (fewer
    days than blocks, or fewer than two policies: nothing was selected)."""

    n_policies: int
    n_days: int
    blocks: int
    splits: int
    pbo: float | None
    logit_median: float | None
    logits: np.ndarray  # λ of each split, in the order of `itertools.combinations(range(S), S // 2)`


def block_bounds(n_days: int, blocks: int) -> np.ndarray:
    """The S + 1 day offsets cutting D days into S contiguous blocks, the first D mod S one day longer."""
    base, longer = divmod(n_days, blocks)
    sizes = np.full(blocks, base, dtype=np.int64)
    sizes[:longer] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def cscv(values: np.ndarray, blocks: int) -> Cscv:
    """PBO of `values` (N policies × D days, rows in ascending `policy_id`: the order ties go by).

    For each of the C(S, S/2) choices of in-sample blocks, a policy's performance on a set of days
    is the mean of its daily values over them; n* = the best in-sample (the first row among equals);
    ω = n*'s out-of-sample rank among the N (1 = worst, ties averaged) / (N + 1), λ = ln(ω / (1 − ω)).
    PBO = the share of splits with λ ≤ 0.

    Vectorised over splits: block sums once, then each split's sums add its S/2 block sums in
    ascending block order — the same operations for every policy, so equal block sums give equal
    means and ties are exact (a BLAS product may round rows differently by where they sit). In
    lexicographic order the complement of split k is split K − 1 − k, so the means of one half of
    the splits' block sets serve as in-sample and, mirrored, as out-of-sample of the other half.
    """
    if blocks < 2 or blocks % 2:
        raise ValueError(f"cscv: blocks must be even and >= 2, got {blocks}")
    n, d = values.shape
    if n < 2 or d < blocks:
        return Cscv(n, d, blocks, 0, None, None, np.empty(0))
    bounds = block_bounds(d, blocks)
    # blocks x policies: a split's sums gather whole contiguous rows
    block_sums = np.ascontiguousarray(np.add.reduceat(np.asarray(values, dtype=np.float64), bounds[:-1], axis=1).T)
    block_days = np.diff(bounds)
    chosen = np.array(list(itertools.combinations(range(blocks), blocks // 2)), dtype=np.int64)
    k = len(chosen)
    twice_rank = np.empty(k, dtype=np.int64)  # 2 × rank: an integer, ties averaged
    step = max(1, _CHUNK_CELLS // (2 * n))
    for lo in range(0, k // 2, step):
        hi = min(k // 2, lo + step)
        first = _split_means(block_sums, block_days, chosen[lo:hi])
        mirror = _split_means(block_sums, block_days, chosen[k - hi : k - lo])[::-1]  # row i: split k − 1 − (lo + i)
        twice_rank[lo:hi] = _twice_rank_of_best(first, mirror)
        twice_rank[k - hi : k - lo] = _twice_rank_of_best(mirror, first)[::-1]
    omega = twice_rank / (2.0 * (n + 1))
    logits = np.log(omega / (1.0 - omega))
    # λ ≤ 0 ⇔ ω ≤ 1/2 ⇔ 2·rank ≤ N + 1, decided on integers
    pbo = float(np.mean(twice_rank <= n + 1))
    return Cscv(n, d, blocks, k, pbo, float(np.median(logits)), logits)


def _split_means(block_sums: np.ndarray, block_days: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """len(splits) × N: each policy's mean over the days of each split's blocks."""
    total = block_sums[splits[:, 0]]
    for j in range(1, splits.shape[1]):
        total += block_sums[splits[:, j]]
    return total / block_days[splits].sum(axis=1)[:, None]


def _twice_rank_of_best(in_sample: np.ndarray, out_of_sample: np.ndarray) -> np.ndarray:
    """Per split (row): 2 × the out-of-sample rank of the in-sample best (the first maximum: the
    smallest policy_id), ties averaged: 2·(policies below) + (policies equal, itself included) + 1."""
    best = np.argmax(in_sample, axis=1)
    score = out_of_sample[np.arange(len(best)), best][:, None]
    return 2 * (out_of_sample < score).sum(axis=1) + (out_of_sample == score).sum(axis=1) + 1


# -- SPA --------------------------------------------------------------------------------------


def spa(benchmark: np.ndarray, models: np.ndarray) -> SpaPvalues | None:
    """Hansen's SPA p-values of the models' daily returns (k × D) against the benchmark's (D), as
    `arch.bootstrap.SPA` computes them (`core.spa`): losses = − daily return, stationary
    bootstrap, `SPA_REPS` repetitions, seed `SPA_SEED`, arch's default block size (√D),
    studentized, not nested. None below `SPA_MIN_DAYS` days."""
    if benchmark.shape[0] < SPA_MIN_DAYS:
        return None
    return spa_pvalues(
        -np.asarray(benchmark, dtype=np.float64), -np.asarray(models, dtype=np.float64).T, reps=SPA_REPS, seed=SPA_SEED
    )


def overfitting(
    matrix: pl.DataFrame,
    *,
    run_id: str,
    policy_ids: Sequence[str],
    benchmark_policy_id: str,
    cscv_blocks: int,
) -> pl.DataFrame:
    """`results/overfitting.parquet`'s one row: PBO over the swept `policy_ids` and SPA of them
    against the benchmark, both on `matrix` (the run's daily matrix; the benchmark's rows in it
    too, whether or not it is one of the swept policies)."""
    swept = sorted(set(policy_ids))
    values = daily_values(matrix, swept)
    result = cscv(values, cscv_blocks)
    test = spa(daily_values(matrix, [benchmark_policy_id])[0], values)
    row = {
        "run_id": run_id,
        "n_policies": result.n_policies,
        "n_days": result.n_days,
        "cscv_blocks": cscv_blocks,
        "cscv_splits": result.splits,
        "pbo": result.pbo,
        "logit_median": result.logit_median,
        "benchmark_policy_id": benchmark_policy_id,
        "spa_pvalue": test.consistent if test else None,
        "spa_pvalue_lower": test.lower if test else None,
        "spa_pvalue_upper": test.upper if test else None,
    }
    return pl.DataFrame([row], schema=OVERFITTING_SCHEMA)


# -- bootstrap intervals ----------------------------------------------------------------------


def return_intervals(samples: Sequence[np.ndarray]) -> pl.DataFrame:
    """One row per sample of returns (columns `INTERVAL_SCHEMA`): the 95 % percentile intervals of
    its median and mean, those of arch's

        IIDBootstrap(x, seed=BOOTSTRAP_SEED).conf_int(lambda v: np.array([np.median(v), v.mean()]),
                                                      reps=BOOTSTRAP_REPS, method="percentile")

    (and of a fresh seeded bootstrap per statistic: the draws depend on the length and the seed
    only). The resampling indices are drawn exactly as arch draws them — `Generator.integers(n,
    size=n)` once per repetition, from `default_rng(seed)` — and both statistics of every resample
    computed in compiled passes (`nb.bootstrap`), not by a Python call per repetition: the median
    exactly as arch's, the mean up to the rounding of its sum (a relative 1e-15). Samples of the
    same length share the draws. The next block of draws is drawn while the compiled pass works
    on the last (it releases the GIL). No trades: nulls.
    """
    medians: dict[int, np.ndarray] = {}
    means: dict[int, np.ndarray] = {}
    by_length: dict[int, list[int]] = {}
    for i, sample in enumerate(samples):
        if len(sample):
            by_length.setdefault(len(sample), []).append(i)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantlab-bootstrap") as pool:
        for n, members in by_length.items():
            values = np.array([samples[i] for i in members], dtype=np.float64)  # one row per sample
            orders = np.argsort(values, axis=1, kind="stable")
            ascending = np.take_along_axis(values, orders, axis=1)
            statistics = np.empty((2, len(members), BOOTSTRAP_REPS))  # medians, means
            generator = np.random.default_rng(BOOTSTRAP_SEED)
            step = min(BOOTSTRAP_REPS, max(1, _CHUNK_CELLS // n))
            buffers = np.empty((2, step, n), dtype=np.int64)  # one drawn while the other is used
            working: Future[None] | None = None
            for block, lo in enumerate(range(0, BOOTSTRAP_REPS, step)):
                hi = min(BOOTSTRAP_REPS, lo + step)
                drawn = buffers[block % 2, : hi - lo]
                for r in range(hi - lo):  # arch's IIDBootstrap.update_indices, once per repetition
                    drawn[r] = generator.integers(n, size=n, dtype=np.int64)
                if working is not None:
                    working.result()
                working = pool.submit(
                    resample_statistics,
                    values,
                    ascending,
                    orders,
                    drawn,
                    statistics[0, :, lo:hi],
                    statistics[1, :, lo:hi],
                )
            if working is not None:
                working.result()
            for row, i in enumerate(members):
                medians[i], means[i] = statistics[0, row], statistics[1, row]
    alpha = (1.0 - INTERVAL_SIZE) / 2  # arch's percentiles, computed as arch computes them
    q = [100 * alpha, 100 * (1.0 - alpha)]
    rows = []
    for i in range(len(samples)):
        if i in medians:
            rows.append((*np.percentile(medians[i], q).tolist(), *np.percentile(means[i], q).tolist()))
        else:
            rows.append((None, None, None, None))
    return pl.DataFrame(rows, schema=INTERVAL_SCHEMA, orient="row")


# -- in words ---------------------------------------------------------------------------------


def benchmark_phrase(benchmark: Policy, horizon_ms: int) -> str:
    """How the sentence names the benchmark: "holding to the horizon" for the default."""
    if policy_id_of(benchmark) == policy_id_of(hold_to_horizon(horizon_ms)):
        return "holding to the horizon"
    return f"the benchmark {policy_json(benchmark)}"


def overfitting_sentence(row: Mapping[str, Any], *, benchmark: str) -> str:
    """The overfitting row (`OVERFITTING_SCHEMA`) as a researcher reads it, e.g. "PBO 0.62: the
    in-sample winner lands in the bottom half out of sample in 62 % of splits; SPA p = 0.31
    against holding to the horizon: no policy reliably beats it". `benchmark` from `benchmark_phrase`."""
    return f"{_pbo_words(row)}; {_spa_words(row, benchmark)}"


def _pbo_words(row: Mapping[str, Any]) -> str:
    pbo = row["pbo"]
    if pbo is None:
        if row["n_policies"] < 2:
            return "PBO n/a: a single policy, nothing was selected"
        return f"PBO n/a: {_days(row['n_days'])} with trades, too few for {row['cscv_blocks']} CSCV blocks"
    shown = f"{pbo:.2f}"
    if pbo == 0:
        return f"PBO {shown}: the in-sample winner never lands in the bottom half out of sample ({row['cscv_splits']} splits)"
    share = round(100 * float(shown))
    how_often = "fewer than 1 %" if share == 0 else f"{'only ' if pbo < 0.5 else ''}{share} %"
    return f"PBO {shown}: the in-sample winner lands in the bottom half out of sample in {how_often} of splits"


def _spa_words(row: Mapping[str, Any], benchmark: str) -> str:
    p = row["spa_pvalue"]
    if p is None:
        return f"SPA n/a: {_days(row['n_days'])} with trades, fewer than the {SPA_MIN_DAYS} the test needs"
    # p is a share of 1,000 repetitions: three decimals say it exactly
    shown = "p < 0.001" if p == 0 else f"p = {f'{p:.3f}'.rstrip('0').rstrip('.')}"
    if p < SPA_LEVEL:
        return f"SPA against {benchmark}: at least one policy beats it ({shown})"
    return f"SPA {shown} against {benchmark}: no policy reliably beats it"


def _days(n: int) -> str:
    return f"{n} day{'' if n == 1 else 's'}"
