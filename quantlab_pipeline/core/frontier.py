"""The frontier of an optimization run (README "A first backtest", Optimization): every policy of a
`Sweep` simulated over the same entries, with its metrics, feasibility, Pareto flag and rank.

A group with no trades never meets the constraints. `pareto` = not dominated on
(median_return_bps higher, p95_mae_bps higher) within the caller group, rows without trades never
on it. `rank` within the group: feasible first, then the objective descending (nulls last), ties
by `policy_id` (docs/semantics.md "Semantics chosen where the design leaves a choice": Summary and frontier).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.confidence import DAY_MS, INTERVAL_SCHEMA, DailySums, return_intervals
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.inputs import DEFAULT_CALLER
from quantlab_pipeline.core.nb.sweep import aggregate_policies
from quantlab_pipeline.core.policy import (
    IS_STOP_OUT,
    ExitBuffers,
    PolicyExits,
    compile_policies,
    policy_exits,
    round_trip_costs_bps,
    trade_columns,
)
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

_COLUMNS = pl.Schema(
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
    | dict(INTERVAL_SCHEMA)  # the BEST_ROWS best rows of each group; null below
)
FRONTIER_SCHEMA = pl.Schema({**_COLUMNS, **INTERVAL_SCHEMA})  # intervals: the BEST_ROWS best rows of each group
BEST_ROWS = 10  # rows of each group with bootstrap intervals (docs/confidence.md)


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
class SweepResult:
    """A sweep's frontier and what confidence needs of it (docs/confidence.md): the per-(policy,
    day) sums of the simulated policies, rows in the order of `policy_ids` (the grid, then the
    benchmark when the grid does not hold it)."""

    frontier: pl.DataFrame
    policy_ids: tuple[str, ...]
    daily: DailySums


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
    """`results/frontier.parquet`: `sweep_month(...).frontier`."""
    return sweep_month(
        segments,
        sweep,
        run_id=run_id,
        interval_ms=interval_ms,
        horizon_ms=horizon_ms,
        execution=execution,
        benchmark=benchmark,
    ).frontier


def sweep_month(
    segments: Iterable[tuple[pl.DataFrame, Candles]],
    sweep: Sweep,
    *,
    run_id: str,
    interval_ms: int,
    horizon_ms: int,
    execution: Execution,
    benchmark: Policy | None = None,
    intervals: bool = True,
) -> SweepResult:
    """`results/frontier.parquet`: one row per policy (and per policy x caller with `per_caller`),
    and the daily sums of every simulated policy.

    A `benchmark` (docs/confidence.md) is simulated with the grid, on the same entries
    (`simulated_policies`), but is a row only if the grid holds it: it is what the grid is tested
    against, not one of its candidates, so it never changes the frontier's rows or ranks.

    `segments` are the partition's `(paths, candles)`: one pair, or several when a large month is
    streamed in parts (re-iterable: it is walked once per `POLICY_CHUNK` policies). Each chunk of
    policies is one parallel kernel call per segment, then one compiled pass over its exits
    (`nb.sweep.aggregate_policies`): no per-trade frame (docs/performance.md). Rows: the
    all-callers group (`caller_name` null) first, then callers by name; within a group by `rank`.
    With `intervals`, the `BEST_ROWS` best rows of each group get the bootstrap intervals of their
    trades' returns (`_Best` keeps the returns of the policies still among them from chunk to chunk).
    """
    simulated = simulated_policies(sweep, benchmark)
    costs = round_trip_costs_bps(execution)
    paths_of: _SweepPaths | None = None
    stats, sums, counts = [], [], []
    best = _Best(sweep) if intervals else None
    buffers: dict[int, ExitBuffers] = {}  # per segment: its exits' memory, reused from chunk to chunk
    for lo in range(0, len(simulated), POLICY_CHUNK):
        compiled = compile_policies(simulated[lo : lo + POLICY_CHUNK])
        parts: list[PolicyExits] = []
        frames: list[pl.DataFrame] = []
        for k, (paths, candles) in enumerate(segments):
            parts.append(
                policy_exits(
                    paths,
                    candles,
                    compiled,
                    interval_ms=interval_ms,
                    horizon_ms=horizon_ms,
                    buffers=buffers.setdefault(k, ExitBuffers()),
                )
            )
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
        if best is not None:
            exits = PolicyExits(paths_of.entry_ts, paths_of.p0, out_ts, out_px, out_reason, out_low)
            best.offer(lo, chunk_stats, exits, paths_of, costs)
    if paths_of is None:  # no policy: the paths still name the groups
        paths_of = _SweepPaths.of([paths for paths, _ in segments], per_caller=sweep.per_caller)
    frame = _frontier(
        sweep,
        np.concatenate(stats)[: len(sweep.policies)] if stats else np.empty((0, 1, len(_STAT_NAMES))),
        paths_of.caller_names,
        run_id,
    )
    frame = pl.concat(
        [frame, best.intervals(frame, paths_of) if best else _no_intervals(frame.height)], how="horizontal"
    )
    n_days = paths_of.day_numbers.shape[0]
    day_sums = np.concatenate(sums) if sums else np.zeros((0, n_days))
    day_counts = np.concatenate(counts) if counts else np.zeros((0, n_days), dtype=np.int64)
    traded = day_counts.sum(axis=0) > 0  # the days some trade entered on
    return SweepResult(
        frontier=frame.select(FRONTIER_SCHEMA.names()).cast(FRONTIER_SCHEMA),
        policy_ids=tuple(policy_id_of(p) for p in simulated),
        daily=DailySums(paths_of.day_numbers[traded], day_sums[:, traded], day_counts[:, traded]),
    )


_EXIT_NAMES = ("out_ts", "out_px", "out_reason", "out_low")


@dataclass(frozen=True)
class _SweepPaths:
    """The per-path inputs of the aggregation, over the segments' paths in order: the groups
    (0 = every path; with `per_caller`, k >= 1 = the paths of `caller_names[k - 1]`) and the day index."""

    entry_ts: np.ndarray
    p0: np.ndarray
    peak: np.ndarray
    caller: pl.Series
    keys: pl.DataFrame  # path_index, alert_ts_ms, call_id: the month's order of paths
    caller_names: list[str]
    group_paths: np.ndarray
    group_offsets: np.ndarray
    day_numbers: np.ndarray
    day_index: np.ndarray

    @classmethod
    def of(cls, frames: list[pl.DataFrame], *, per_caller: bool) -> _SweepPaths:
        columns = ("caller_name", "entry_ts_ms", "p0", "peak_multiple", "alert_ts_ms", "call_id")
        paths = pl.concat([f.select(*columns).with_columns(pl.col("call_id").cast(pl.String)) for f in frames])
        # a null caller is the default one (docs/inputs.md "Inputs")
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
            caller=caller,
            keys=paths.select("alert_ts_ms", "call_id")
            .with_row_index("path_index")
            .with_columns(pl.col("path_index").cast(pl.Int64)),
            caller_names=caller_names,
            group_paths=np.concatenate(groups).astype(np.int64),
            group_offsets=np.cumsum([0, *(g.shape[0] for g in groups)]).astype(np.int64),
            day_numbers=day_numbers.astype(np.int64),
            day_index=np.searchsorted(day_numbers, day).astype(np.int64),
        )


def _frontier(sweep: Sweep, stats: np.ndarray, caller_names: list[str], run_id: str) -> pl.DataFrame:
    """The frontier's rows from `stats[policy, group, metric]` (groups as `_SweepPaths`), ranked,
    with `policy_index` and `_group` still on them."""
    n_groups = len(caller_names) + 1 if sweep.per_caller else 1
    frame = _stats_frame(stats[:, :n_groups], 0).join(
        pl.DataFrame(
            {"_group": range(n_groups), "caller_name": [None, *caller_names][:n_groups]},
            schema={"_group": pl.Int64, "caller_name": pl.String},
        ),
        on="_group",
    )
    frame = _ranked(frame.join(_policies(sweep), on="policy_index"), sweep)
    return frame.with_columns(
        pl.Series("pareto", _pareto_by_group(frame)),
        pl.lit(run_id, dtype=pl.String).alias("run_id"),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("_group").alias("rank"),
    )


def _stats_frame(stats: np.ndarray, first: int) -> pl.DataFrame:
    """`stats[policy, group, metric]` of policies `first …` as rows `policy_index, _group, *metrics`
    (null metrics where the group has no trade, `trades_count` 0)."""
    n_policies, n_groups = stats.shape[:2]
    columns: dict[str, Any] = {
        "policy_index": np.tile(np.arange(first, first + n_policies, dtype=np.int64), n_groups),
        "_group": np.repeat(np.arange(n_groups, dtype=np.int64), n_policies),
    }
    for k, name in enumerate(_STAT_NAMES):
        columns[name] = np.ascontiguousarray(stats[:, :, k].T).reshape(-1)
    return pl.DataFrame(columns).with_columns(
        pl.col(*_STAT_NAMES[1:]).fill_nan(None), pl.col("trades_count").fill_nan(0).cast(pl.Int64)
    )


def _policies(sweep: Sweep) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "policy_index": range(len(sweep.policies)),
            "policy_id": [policy_id_of(p) for p in sweep.policies],
            "policy_params": [policy_json(p) for p in sweep.policies],
        },
        schema={"policy_index": pl.Int64, "policy_id": pl.String, "policy_params": pl.String},
    )


def _ranked(frame: pl.DataFrame, sweep: Sweep) -> pl.DataFrame:
    """Policy rows with their feasibility and objective, in rank order within each `_group`:
    feasible first, then the objective descending (nulls last), ties by `policy_id`."""
    return frame.with_columns(
        _feasible(sweep.constraints).fill_null(False).alias("meets_constraints"),
        pl.col(sweep.objective).alias("objective_score"),
    ).sort(
        ["_group", "meets_constraints", "objective_score", "policy_id"],
        descending=[False, True, True, False],
        nulls_last=True,
    )


def _no_intervals(height: int) -> pl.DataFrame:
    return pl.DataFrame({name: pl.Series(name, [None] * height, dtype=dt) for name, dt in INTERVAL_SCHEMA.items()})


class _Best:
    """The trades of the policies among the `BEST_ROWS` best of some group so far. A chunk's
    stats are final (each chunk sees every segment), so after each chunk the best of the
    policies seen are ranked as the frontier ranks them and the others' trades are dropped:
    at most `BEST_ROWS` policies per group are kept, whatever the grid's size. Their trades'
    returns come from the chunk's exits by the trade formulas (`nb.policy.trade_columns`)."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.policies = _policies(sweep)
        self.stats = pl.DataFrame()
        self.trades = pl.DataFrame()

    def offer(self, first: int, chunk_stats: np.ndarray, exits: PolicyExits, paths: _SweepPaths, costs: float) -> None:
        grid = len(self.sweep.policies)  # a benchmark outside the grid is no row
        codes = pl.DataFrame(
            {"_group": range(len(paths.caller_names) + 1), "caller_name": [None, *paths.caller_names]},
            schema={"_group": pl.Int64, "caller_name": pl.String},
        )
        fresh = (
            _stats_frame(chunk_stats, first)
            .filter((pl.col("trades_count") > 0) & (pl.col("policy_index") < grid))
            .join(codes, on="_group")
            .select("policy_index", "caller_name", *_STAT_NAMES)
        )
        candidates = pl.concat([self.stats, fresh]) if self.stats.height else fresh
        # `_group` here: any code per caller group, as ranking only needs groups apart
        ranked = _ranked(
            candidates.join(self.policies, on="policy_index").with_columns(
                pl.col("caller_name").rank("dense").fill_null(0).cast(pl.Int64).alias("_group")
            ),
            self.sweep,
        )
        self.stats = ranked.filter(pl.int_range(pl.len()).over("_group") < BEST_ROWS).select(
            "policy_index", "caller_name", *_STAT_NAMES
        )
        kept = np.unique(self.stats.get_column("policy_index").to_numpy())
        rows = kept[(kept >= first) & (kept < first + chunk_stats.shape[0])] - first
        policy_index, path_index, *_, realized, _, _, _, _ = trade_columns(
            exits.out_ts[rows],
            exits.out_px[rows],
            exits.out_reason[rows],
            exits.out_low[rows],
            exits.entry_ts,
            exits.p0,
            paths.peak,
            costs,
            IS_STOP_OUT,
        )
        trades = pl.DataFrame(
            {
                "policy_index": rows[policy_index] + first,
                "caller_name": paths.caller.gather(path_index),
                "path_index": path_index,
                "realized_return_bps": realized,
            }
        )
        previous = self.trades.filter(pl.col("policy_index").is_in(kept.tolist())) if self.trades.height else None
        self.trades = trades if previous is None else pl.concat([previous, trades])

    def intervals(self, frame: pl.DataFrame, paths: _SweepPaths) -> pl.DataFrame:
        """`INTERVAL_SCHEMA` columns for `frame`'s rows (ranked): its rows of rank ≤ `BEST_ROWS`
        from their trades' returns, in the month's order of paths (a policy run's trades' order,
        which the draws follow), all callers' or the row's caller's; null below."""
        trades = self.trades.join(paths.keys, on="path_index").sort("alert_ts_ms", "call_id")
        samples = []
        for policy_index, caller, rank in frame.select("policy_index", "caller_name", "rank").iter_rows():
            mine = trades.filter(pl.col("policy_index") == policy_index) if rank <= BEST_ROWS else trades.clear()
            if caller is not None:
                mine = mine.filter(pl.col("caller_name") == caller)
            samples.append(mine.get_column("realized_return_bps").to_numpy())
        return return_intervals(samples)  # no trades (and every row below the best): nulls


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
