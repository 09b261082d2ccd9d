"""The frontier of an optimization run (README "Run a backtest", Optimization): every policy of a
`Sweep` simulated over the same entries, with its metrics, feasibility, Pareto flag and rank.

A group with no trades never meets the constraints. `pareto` = not dominated on
(median_return_bps higher, p95_mae_bps higher) within the caller group, rows without trades never
on it. `rank` within the group: feasible first, then the objective descending (nulls last), ties
by `policy_id` (README "Semantics chosen where the design leaves a choice": Summary and frontier).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.confidence import DAY_MS
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.inputs import DEFAULT_CALLER
from quantlab_pipeline.core.nb.sweep import aggregate_policies
from quantlab_pipeline.core.policy import IS_STOP_OUT, PolicyExits, compile_policies, policy_exits, round_trip_costs_bps
from quantlab_pipeline.core.policy_spec import Policy, policy_id_of, policy_json
from quantlab_pipeline.core.spec import Execution
from quantlab_pipeline.core.sweep_spec import Constraints, Sweep

# Policies simulated per kernel call: bounds the exits held at once (policies x trades of each array).
POLICY_CHUNK = 128
# What a sweep holds (docs/performance.md, "10,000-policy sweeps"): per (policy, entry) of a chunk
# the exits (exit time, price and lowest price held, 8 B each, and the reason, 1 B), twice when
# streamed parts are joined; per policy its object, id and JSON, a frontier row per group and
# its daily sums (an upper bound, measured at ~1.5 KB); per day of a policy a sum and a count.
EXIT_BYTES = 2 * (8 + 8 + 8 + 1)
POLICY_BYTES = 4096
DAY_BYTES = 16

FRONTIER_SCHEMA = pl.Schema(
    {
        "run_id": pl.String,
        "caller_name": pl.String,
        "policy_id": pl.String,
        "policy_params": pl.String,
        "meets_constraints": pl.Boolean,
        "objective_score": pl.Float64,
        "avg_return_bps": pl.Float64,
        "median_return_bps": pl.Float64,
        "stop_out_rate": pl.Float64,
        "p95_mae_bps": pl.Float64,
        "avg_tail_capture": pl.Float64,
        "trades_count": pl.Int64,
        "pareto": pl.Boolean,
        "rank": pl.Int64,
    }
)


_STAT_NAMES = (
    "trades_count",
    "avg_return_bps",
    "median_return_bps",
    "stop_out_rate",
    "p95_mae_bps",
    "avg_tail_capture",
    "avg_time_exposed_ms",
)


@dataclass(frozen=True)
class SweepResults:
    """A sweep's frontier, and per simulated policy (`simulated_policies`: the grid, then a
    benchmark outside it) the sums and counts of its realized returns per UTC day of entry
    (`day_numbers`: days since 1970-01-01, ascending; `daily_sums[i, j]`, `daily_counts[i, j]`)."""

    frontier: pl.DataFrame
    policy_ids: tuple[str, ...]
    day_numbers: np.ndarray
    daily_sums: np.ndarray
    daily_counts: np.ndarray


def run_sweep(
    segments: Iterable[tuple[pl.DataFrame, Candles]],
    sweep: Sweep,
    *,
    run_id: str,
    interval_ms: int,
    horizon_ms: int,
    execution: Execution,
    benchmark: Policy | None = None,
) -> pl.DataFrame:
    """`results/frontier.parquet`: one row per policy (and per policy x caller with `per_caller`);
    see `sweep_results`."""
    return sweep_results(
        segments,
        sweep,
        run_id=run_id,
        interval_ms=interval_ms,
        horizon_ms=horizon_ms,
        execution=execution,
        benchmark=benchmark,
    ).frontier


def sweep_results(
    segments: Iterable[tuple[pl.DataFrame, Candles]],
    sweep: Sweep,
    *,
    run_id: str,
    interval_ms: int,
    horizon_ms: int,
    execution: Execution,
    benchmark: Policy | None = None,
) -> SweepResults:
    """The frontier and the daily sums of a sweep.

    A `benchmark` (docs/confidence.md) is simulated with the grid, on the same entries
    (`simulated_policies`), but is a row only if the grid holds it: it is what the grid is tested
    against, not one of its candidates, so it never changes the frontier's rows or ranks.

    `segments` are the partition's `(paths, candles)`: one pair, or several when a large month is
    streamed in parts (re-iterable: it is walked once per `POLICY_CHUNK` policies). Each chunk of
    policies is one parallel kernel call per segment, then one compiled pass over its exits
    (`nb.sweep.aggregate_policies`): no per-trade frame (docs/performance.md). Rows: the
    all-callers group (`caller_name` null) first, then callers by name; within a group by `rank`.
    """
    simulated = simulated_policies(sweep, benchmark)
    costs = round_trip_costs_bps(execution)
    paths_of: _SweepPaths | None = None
    stats, sums, counts = [], [], []
    for lo in range(0, len(simulated), POLICY_CHUNK):
        compiled = compile_policies(simulated[lo : lo + POLICY_CHUNK])
        parts: list[PolicyExits] = []
        frames: list[pl.DataFrame] = []
        for paths, candles in segments:
            parts.append(policy_exits(paths, candles, compiled, interval_ms=interval_ms, horizon_ms=horizon_ms))
            frames.append(paths)
            del candles  # a streamed part is freed before the next one is read
        if paths_of is None:
            paths_of = _SweepPaths.of(frames, per_caller=sweep.per_caller)
        out_ts, out_px, out_reason, out_low = (  # one segment (the usual month): no copy
            getattr(parts[0], name) if len(parts) == 1 else np.concatenate([getattr(p, name) for p in parts], axis=1)
            for name in _EXIT_NAMES
        )
        del parts
        chunk_stats, chunk_sums, chunk_counts = aggregate_policies(
            out_ts,
            out_px,
            out_reason,
            out_low,
            paths_of.entry_ts,
            paths_of.p0,
            paths_of.peak,
            costs,
            IS_STOP_OUT,
            paths_of.group_paths,
            paths_of.group_offsets,
            paths_of.day_index,
            paths_of.day_numbers.shape[0],
        )
        stats.append(chunk_stats)
        sums.append(chunk_sums)
        counts.append(chunk_counts)
    if paths_of is None:  # no policy: the paths still name the groups
        paths_of = _SweepPaths.of([paths for paths, _ in segments], per_caller=sweep.per_caller)
    n_days = paths_of.day_numbers.shape[0]
    frame = _frontier(
        sweep,
        np.concatenate(stats)[: len(sweep.policies)] if stats else np.empty((0, 1, len(_STAT_NAMES))),
        paths_of.caller_names,
        run_id,
    )
    return SweepResults(
        frontier=frame,
        policy_ids=tuple(policy_id_of(p) for p in simulated),
        day_numbers=paths_of.day_numbers,
        daily_sums=np.concatenate(sums) if sums else np.zeros((0, n_days)),
        daily_counts=np.concatenate(counts) if counts else np.zeros((0, n_days), dtype=np.int64),
    )


_EXIT_NAMES = ("out_ts", "out_px", "out_reason", "out_low")


@dataclass(frozen=True)
class _SweepPaths:
    """The per-path inputs of the aggregation, over the segments' paths in order: the groups
    (0 = every path; with `per_caller`, k >= 1 = the paths of `caller_names[k - 1]`) and the day index."""

    entry_ts: np.ndarray
    p0: np.ndarray
    peak: np.ndarray
    caller_names: list[str]
    group_paths: np.ndarray
    group_offsets: np.ndarray
    day_numbers: np.ndarray
    day_index: np.ndarray

    @classmethod
    def of(cls, frames: list[pl.DataFrame], *, per_caller: bool) -> _SweepPaths:
        paths = pl.concat([f.select("caller_name", "entry_ts_ms", "p0", "peak_multiple") for f in frames])
        # a null caller is the default one (README "Inputs")
        caller = paths.get_column("caller_name").cast(pl.String).fill_null(DEFAULT_CALLER)
        caller_names = sorted(caller.unique().to_list())
        entry_ts = np.ascontiguousarray(paths.get_column("entry_ts_ms").to_numpy(), dtype=np.int64)
        groups = [np.arange(paths.height, dtype=np.int64)]
        if per_caller:
            codes = caller.to_frame().join(
                pl.DataFrame({"caller_name": caller_names, "_code": range(len(caller_names))}),
                on="caller_name",
                how="left",
                maintain_order="left",
            )
            code = codes.get_column("_code").to_numpy()
            groups += [np.flatnonzero(code == k) for k in range(len(caller_names))]
        day = entry_ts // DAY_MS
        day_numbers = np.unique(day)
        return cls(
            entry_ts=entry_ts,
            p0=np.ascontiguousarray(paths.get_column("p0").to_numpy(), dtype=np.float64),
            peak=np.asarray(paths.get_column("peak_multiple").to_numpy(), dtype=np.float64),  # null → NaN
            caller_names=caller_names,
            group_paths=np.concatenate(groups).astype(np.int64),
            group_offsets=np.cumsum([0, *(g.shape[0] for g in groups)]).astype(np.int64),
            day_numbers=day_numbers.astype(np.int64),
            day_index=np.searchsorted(day_numbers, day).astype(np.int64),
        )


def _frontier(sweep: Sweep, stats: np.ndarray, caller_names: list[str], run_id: str) -> pl.DataFrame:
    """The frontier's rows from `stats[policy, group, metric]` (groups as `_SweepPaths`)."""
    n_groups = len(caller_names) + 1 if sweep.per_caller else 1
    n_policies = len(sweep.policies)
    columns: dict[str, Any] = {
        "policy_index": np.tile(np.arange(n_policies, dtype=np.int64), n_groups),
        "_group": np.repeat(np.arange(n_groups, dtype=np.int64), n_policies),
    }
    for k, name in enumerate(_STAT_NAMES):
        columns[name] = np.ascontiguousarray(stats[:, :n_groups, k].T).reshape(-1)
    stats_frame = pl.DataFrame(columns).with_columns(
        pl.col(*_STAT_NAMES[1:]).fill_nan(None), pl.col("trades_count").fill_nan(0).cast(pl.Int64)
    )
    groups = pl.DataFrame(
        {"_group": range(n_groups), "caller_name": [None, *caller_names][:n_groups]},
        schema={"_group": pl.Int64, "caller_name": pl.String},
    )
    policies = pl.DataFrame(
        {
            "policy_index": range(n_policies),
            "policy_id": [policy_id_of(p) for p in sweep.policies],
            "policy_params": [policy_json(p) for p in sweep.policies],
        },
        schema={"policy_index": pl.Int64, "policy_id": pl.String, "policy_params": pl.String},
    )
    frame = (
        stats_frame.join(groups, on="_group")
        .join(policies, on="policy_index")
        .with_columns(
            _feasible(sweep.constraints).fill_null(False).alias("meets_constraints"),
            pl.col(sweep.objective).alias("objective_score"),
        )
    )
    frame = frame.with_columns(pl.Series("pareto", _pareto_by_group(frame)))
    return (
        frame.sort(
            ["_group", "meets_constraints", "objective_score", "policy_id"],
            descending=[False, True, True, False],
            nulls_last=True,
        )
        .with_columns(
            pl.lit(run_id, dtype=pl.String).alias("run_id"),
            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("_group").alias("rank"),
        )
        .select(FRONTIER_SCHEMA.names())
        .cast(FRONTIER_SCHEMA)
    )


def sweep_peak_bytes(n_policies: int, n_entries: int, *, n_groups: int = 1, n_days: int = 0) -> int:
    """The most memory a sweep of `n_policies` over `n_entries` holds beyond its inputs (the
    month's candles and paths): one chunk's exits, and per policy its rows and daily sums."""
    chunk = min(n_policies, POLICY_CHUNK)
    return chunk * n_entries * EXIT_BYTES + n_policies * (n_groups * POLICY_BYTES + n_days * DAY_BYTES)


def check_sweep_memory(n_policies: int, n_entries: int, available_bytes: int | None, *, where: str) -> None:
    """Refuse (one line) a sweep whose `sweep_peak_bytes` exceed the memory available; a grid's
    size is limited by that, not by a count. `available_bytes` None: unknown, never refused."""
    needed = sweep_peak_bytes(n_policies, n_entries)
    if available_bytes is not None and needed > available_bytes:
        raise SpecError(
            f"{where}: {n_policies:,} policies over {n_entries:,} entries need {_gib(needed)} of memory, "
            f"{_gib(available_bytes)} available; narrow the parameter lists or the months"
        )


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def simulated_policies(sweep: Sweep, benchmark: Policy | None) -> tuple[Policy, ...]:
    """What a sweep simulates: the grid, then the benchmark unless the grid holds it (same
    `policy_id`); the benchmark's index is that of its id among them."""
    if benchmark is None or policy_id_of(benchmark) in {policy_id_of(p) for p in sweep.policies}:
        return sweep.policies
    return (*sweep.policies, benchmark)


def _feasible(constraints: Constraints) -> pl.Expr:
    ok = pl.col("trades_count") > 0
    if constraints.max_stop_out_rate is not None:
        ok = ok & (pl.col("stop_out_rate") <= constraints.max_stop_out_rate)
    if constraints.min_p95_mae_bps is not None:
        ok = ok & (pl.col("p95_mae_bps") >= constraints.min_p95_mae_bps)
    if constraints.max_avg_time_exposed_ms is not None:
        ok = ok & (pl.col("avg_time_exposed_ms") <= constraints.max_avg_time_exposed_ms)
    return ok


def _pareto_by_group(frame: pl.DataFrame) -> np.ndarray:
    """Per row: not dominated within its `_group` on (median_return_bps, p95_mae_bps), both higher
    is better; a row dominates another when it is >= on both and > on one. Rows without trades
    (null metrics) are neither dominated nor on the frontier.

    Sorted by median descending, a row is dominated exactly when a row of a higher median has a
    p95 MAE at least as high, or a row of the same median a higher one: a running maximum, so a
    grid of 10,000 policies needs no 10,000 x 10,000 comparison."""
    median = frame.get_column("median_return_bps").fill_null(np.nan).to_numpy()
    mae = frame.get_column("p95_mae_bps").fill_null(np.nan).to_numpy()
    group = frame.get_column("_group").to_numpy()
    pareto = np.zeros(frame.height, dtype=bool)
    for g in np.unique(group):
        rows = np.flatnonzero((group == g) & ~np.isnan(median) & ~np.isnan(mae))
        if rows.size == 0:
            continue
        order = np.lexsort((-mae[rows], -median[rows]))  # median descending, then MAE descending
        m, a = median[rows][order], mae[rows][order]
        first = np.r_[True, m[1:] != m[:-1]]  # the first row of each run of equal medians
        starts = np.flatnonzero(first)
        best_same = np.repeat(a[starts], np.diff(np.r_[starts, m.size]))  # the run's highest MAE
        run_max = np.maximum.accumulate(a)
        # the highest MAE among rows of a strictly higher median: the running max before the run
        before = np.repeat(np.r_[-np.inf, run_max[starts[1:] - 1]], np.diff(np.r_[starts, m.size]))
        dominated = (before >= a) | (best_same > a)
        pareto[rows[order]] = ~dominated
    return pareto
