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

import numpy as np
import polars as pl

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.confidence import INTERVAL_SCHEMA, DailySums, return_intervals
from quantlab_pipeline.core.inputs import DEFAULT_CALLER
from quantlab_pipeline.core.policy import simulate_policies
from quantlab_pipeline.core.policy_spec import Policy, policy_id_of, policy_json
from quantlab_pipeline.core.spec import Execution
from quantlab_pipeline.core.summary import metric_exprs
from quantlab_pipeline.core.sweep_spec import Constraints, Sweep

# Policies simulated per kernel call: bounds the per-trade outcome frame (policies x trades rows).
POLICY_CHUNK = 128

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
    policies is one parallel kernel call per segment; the per-trade outcomes are then aggregated
    by polars, never per policy in Python. Rows: the all-callers group (`caller_name` null)
    first, then callers by name; within a group by `rank`. With `intervals`, the `BEST_ROWS`
    best rows of each group get the bootstrap intervals of their trades' returns (`_Best` keeps
    the returns of the policies still among them from chunk to chunk).
    """
    stats = []
    callers: set[str] = set()
    simulated = simulated_policies(sweep, benchmark)
    daily: list[tuple[int, DailySums]] = []
    keys: list[pl.DataFrame] = []  # per segment: what orders its paths in the month (trades' order)
    best = _Best(sweep) if intervals else None
    for lo in range(0, len(simulated), POLICY_CHUNK):
        parts = []
        for segment, (paths, candles) in enumerate(segments):
            # a null caller is the default one (README "Inputs")
            caller = paths.get_column("caller_name").cast(pl.String).fill_null(DEFAULT_CALLER)
            callers.update(caller.unique().to_list())
            if not lo:
                keys.append(paths.select("alert_ts_ms", pl.col("call_id").cast(pl.String)))
            chunk = simulated[lo : lo + POLICY_CHUNK]
            outcomes = simulate_policies(
                paths, candles, chunk, interval_ms=interval_ms, horizon_ms=horizon_ms, execution=execution
            )
            daily.append((lo, _daily_sums(outcomes, len(chunk))))
            parts.append(
                outcomes.with_columns(
                    pl.col("policy_index") + lo,
                    caller.gather(outcomes.get_column("path_index")).alias("caller_name"),
                    pl.lit(segment, dtype=pl.Int64).alias("_segment"),
                )
            )
            del candles  # a streamed part is freed before the next one is read
        outcomes = pl.concat(parts)
        chunk_stats = [outcomes.group_by("policy_index").agg(metric_exprs(*_STAT_NAMES)).with_columns(_group=pl.lit(0))]
        if sweep.per_caller:
            chunk_stats.append(outcomes.group_by("policy_index", "caller_name").agg(metric_exprs(*_STAT_NAMES)))
        stats += chunk_stats
        if best is not None:
            best.offer(chunk_stats, outcomes)
    # _group 0 = all callers, k >= 1 = caller_names[k - 1]
    caller_names = sorted(callers)
    codes = pl.DataFrame(
        {"caller_name": caller_names, "_group": range(1, len(caller_names) + 1)},
        schema={"caller_name": pl.String, "_group": pl.Int64},
    )
    stats_frame = pl.concat(
        [
            (s if "_group" in s.columns else s.join(codes, on="caller_name")).select(
                pl.col("policy_index", "_group").cast(pl.Int64), *_STAT_NAMES
            )
            for s in stats
        ]
    )

    # stats of a benchmark outside the grid (index len(sweep.policies)) find no policy row below
    groups = pl.DataFrame(
        {
            "_group": [0, *range(1, len(caller_names) + 1)] if sweep.per_caller else [0],
            "caller_name": [None, *caller_names] if sweep.per_caller else [None],
        },
        schema={"_group": pl.Int64, "caller_name": pl.String},
    )
    frame = groups.join(_policies(sweep), how="cross").join(stats_frame, on=["policy_index", "_group"], how="left")
    frame = _ranked(frame, sweep)
    frame = frame.with_columns(pl.Series("pareto", _pareto_by_group(frame)))
    frame = frame.with_columns(
        pl.lit(run_id, dtype=pl.String).alias("run_id"),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("_group").alias("rank"),
    )
    frame = pl.concat([frame, best.intervals(frame, keys) if best else _no_intervals(frame.height)], how="horizontal")
    return SweepResult(
        frontier=frame.select(FRONTIER_SCHEMA.names()).cast(FRONTIER_SCHEMA),
        policy_ids=tuple(policy_id_of(p) for p in simulated),
        daily=DailySums.stack(daily, len(simulated)),
    )


def _daily_sums(outcomes: pl.DataFrame, n_policies: int) -> DailySums:
    """Per (policy of the chunk, entry day): the sum and count of the trades' returns. The one
    place a sweep aggregates by day: a kernel that returns these arrays replaces it."""
    return DailySums.of_trades(
        outcomes.get_column("policy_index").to_numpy(),
        outcomes.get_column("entry_ts_ms").to_numpy(),
        outcomes.get_column("realized_return_bps").to_numpy(),
        n_policies,
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
        pl.col("trades_count").fill_null(0),
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
    at most `BEST_ROWS` policies per group are kept, whatever the grid's size."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.policies = _policies(sweep)
        self.stats = pl.DataFrame()
        self.trades = pl.DataFrame()

    def offer(self, chunk_stats: list[pl.DataFrame], outcomes: pl.DataFrame) -> None:
        grid = len(self.sweep.policies)  # a benchmark outside the grid is no row
        fresh = [
            s.with_columns(
                pl.col("caller_name") if "caller_name" in s.columns else pl.lit(None, pl.String).alias("caller_name")
            )
            .select(pl.col("policy_index").cast(pl.Int64), "caller_name", *_STAT_NAMES)
            .filter(pl.col("policy_index") < grid)
            for s in chunk_stats
        ]
        candidates = pl.concat([self.stats, *fresh]) if self.stats.height else pl.concat(fresh)
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
        kept = self.stats.get_column("policy_index").unique().implode()
        trades = outcomes.filter(pl.col("policy_index").is_in(kept)).select(
            "policy_index", "caller_name", "_segment", "path_index", "realized_return_bps"
        )
        previous = self.trades.filter(pl.col("policy_index").is_in(kept)) if self.trades.height else None
        self.trades = trades if previous is None else pl.concat([previous, trades])

    def intervals(self, frame: pl.DataFrame, keys: list[pl.DataFrame]) -> pl.DataFrame:
        """`INTERVAL_SCHEMA` columns for `frame`'s rows (ranked): its rows of rank ≤ `BEST_ROWS`
        from their trades' returns, in the month's order of paths (a policy run's trades' order,
        which the draws follow), all callers' or the row's caller's; null below."""
        order = pl.concat(
            [
                k.with_row_index("path_index").with_columns(pl.lit(i, dtype=pl.Int64).alias("_segment"))
                for i, k in enumerate(keys)
            ]
        ).with_columns(pl.col("path_index").cast(pl.Int64))
        trades = (
            self.trades.with_columns(pl.col("path_index").cast(pl.Int64))
            .join(order, on=["_segment", "path_index"])
            .sort("alert_ts_ms", "call_id")
        )
        samples = []
        for policy_index, caller, rank in frame.select("policy_index", "caller_name", "rank").iter_rows():
            mine = trades.filter(pl.col("policy_index") == policy_index) if rank <= BEST_ROWS else trades.clear()
            if caller is not None:
                mine = mine.filter(pl.col("caller_name") == caller)
            samples.append(mine.get_column("realized_return_bps").to_numpy())
        return return_intervals(samples)  # no trades (and every row below the best): nulls


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
    (null metrics) are neither dominated nor on the frontier."""
    median = frame.get_column("median_return_bps").fill_null(np.nan).to_numpy()
    mae = frame.get_column("p95_mae_bps").fill_null(np.nan).to_numpy()
    group = frame.get_column("_group").to_numpy()
    pareto = np.zeros(frame.height, dtype=bool)
    for g in np.unique(group):
        rows = np.flatnonzero((group == g) & ~np.isnan(median) & ~np.isnan(mae))
        m, a = median[rows], mae[rows]
        # dominated[i, j]: row j dominates row i
        dominated = (
            (m[None, :] >= m[:, None])
            & (a[None, :] >= a[:, None])
            & ((m[None, :] > m[:, None]) | (a[None, :] > a[:, None]))
        )
        pareto[rows] = ~dominated.any(axis=1)
    return pareto
