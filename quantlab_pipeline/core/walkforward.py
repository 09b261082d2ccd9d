"""Walk-forward validation of the frontier (docs/research.md "Walk-forward optimization").

For a tested month m, the policy is chosen on the K months before it (in-sample: the frontier of
those months' trades, with the sweep's objective, constraints and ranking) and then scored on
month m alone (out-of-sample: month m's frontier row of that policy, the same grid). Their
difference is the overfitting of one selection.

In-sample metrics are metrics of the union of the K months' trades, not averages of monthly
figures: medians and the 5th percentile do not combine. With K = 1 that union is one month, and
its frontier is the stored frontier of month m-1; with K > 1 the asset sweeps the K months'
trades together (`core.frontier.run_sweep` over their segments).

`training_pbo` says how likely the selection on the training months is an artefact of the
search: PBO by CSCV over their days (docs/confidence.md).

Over the whole window, `window_gap` compares the walk-forward strategy with the best single
policy in hindsight, both by the objective's average monthly score: a report of what each
would have scored month by month, not a selection over pooled trades.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from quantlab_pipeline.core.confidence import cscv, daily_values

# The frontier's per-policy metrics, reported in-sample (is_) and out-of-sample (oos_).
METRICS: tuple[str, ...] = (
    "objective_score",
    "trades_count",
    "avg_return_bps",
    "median_return_bps",
    "stop_out_rate",
    "p95_mae_bps",
    "avg_tail_capture",
)

WALKFORWARD_SCHEMA = pl.Schema(
    {
        "run_id": pl.String,
        "month": pl.String,
        "train_months": pl.String,
        "caller_name": pl.String,
        "objective": pl.String,
        "policy_id": pl.String,
        "policy_params": pl.String,
        **{f"is_{m}": pl.Int64 if m == "trades_count" else pl.Float64 for m in METRICS},
        **{f"oos_{m}": pl.Int64 if m == "trades_count" else pl.Float64 for m in METRICS},
        "oos_meets_constraints": pl.Boolean,
        "score_gap": pl.Float64,
        # PBO of the selection (docs/confidence.md): CSCV over the training months' days
        "train_pbo": pl.Float64,
    }
)


def walk_forward(
    in_sample: pl.DataFrame,
    out_of_sample: pl.DataFrame,
    *,
    run_id: str,
    month: str,
    train_months: tuple[str, ...],
    objective: str,
    train_pbo: float | None = None,
) -> pl.DataFrame:
    """`results/walkforward.parquet` of tested month `month`: one row per caller group of the
    in-sample frontier (the all-callers group, caller_name null, first).

    The selected policy is the group's rank-1 row when it meets the constraints; a group with no
    feasible policy has a row with a null policy and null metrics. `score_gap` = in-sample minus
    out-of-sample objective score: positive when the selection did worse on the month it had not
    seen. A selected policy without trades in month m has null out-of-sample metrics.
    `train_pbo` (`training_pbo`) is the same on every row: the selection is over all callers' days.
    """
    groups = in_sample.select("caller_name").unique(maintain_order=True)
    selected = in_sample.filter((pl.col("rank") == 1) & pl.col("meets_constraints")).select(
        "caller_name", "policy_id", "policy_params", *(pl.col(m).alias(f"is_{m}") for m in METRICS)
    )
    tested = out_of_sample.select(
        "caller_name",
        "policy_id",
        *(pl.col(m).alias(f"oos_{m}") for m in METRICS),
        pl.col("meets_constraints").alias("oos_meets_constraints"),
    )
    return (
        groups.join(selected, on="caller_name", how="left", nulls_equal=True, maintain_order="left")
        .join(tested, on=["caller_name", "policy_id"], how="left", nulls_equal=True, maintain_order="left")
        .with_columns(
            pl.lit(run_id).alias("run_id"),
            pl.lit(month).alias("month"),
            pl.lit(",".join(train_months)).alias("train_months"),
            pl.lit(objective).alias("objective"),
            pl.lit(train_pbo, dtype=pl.Float64).alias("train_pbo"),
            # a selected policy with no trades in the month has no out-of-sample score
            pl.when(pl.col("oos_trades_count") > 0).then(pl.col("oos_objective_score")).alias("oos_objective_score"),
        )
        .with_columns((pl.col("is_objective_score") - pl.col("oos_objective_score")).alias("score_gap"))
        .select(WALKFORWARD_SCHEMA.names())
        .cast(WALKFORWARD_SCHEMA)
    )


def training_pbo(matrices: list[pl.DataFrame | None], policy_ids: list[str], blocks: int) -> float | None:
    """PBO of choosing among `policy_ids` on the training months (docs/confidence.md): CSCV over
    their daily matrices (`results/policy_daily.parquet`) concatenated, their days in order. A day
    in two months' matrices (an alert of a month's last minutes entering on the next month's
    first day) is one day: its mean over both months' trades. None when a training month has no
    matrix (written before confidence existed) or CSCV does not apply."""
    stored = [m for m in matrices if m is not None]
    if not matrices or len(stored) < len(matrices):
        return None
    merged = (
        pl.concat(stored)
        .group_by("policy_id", "day")
        .agg(
            pl.col("trades").sum(),
            (pl.col("mean_return_bps") * pl.col("trades")).sum().alias("_sum"),
        )
        .with_columns((pl.col("_sum") / pl.col("trades")).alias("mean_return_bps"))
    )
    return cscv(daily_values(merged, sorted(set(policy_ids))), blocks).pbo


@dataclass(frozen=True)
class WindowGap:
    """The walk-forward strategy over the tested months beside the best single policy in hindsight.

    Scores are the objective's monthly values averaged over the tested months, each month
    weighing the same, on both sides; `gap` = hindsight − walk-forward, what a researcher would
    have believed in (the best policy, known afterwards) but not earned (choosing beforehand).
    """

    objective: str
    tested_months: tuple[str, ...]
    walk_forward_score: float | None
    walk_forward_trades: int
    hindsight_policy_id: str | None
    hindsight_score: float | None
    hindsight_trades: int

    @property
    def gap(self) -> float | None:
        if self.walk_forward_score is None or self.hindsight_score is None:
            return None
        return self.hindsight_score - self.walk_forward_score


def window_gap(walkforward: pl.DataFrame, frontiers: pl.DataFrame) -> WindowGap:
    """The overfitting gap of the all-callers group over the tested months.

    `walkforward` are the tested months' walk-forward rows; `frontiers` the same months'
    frontier rows with a `month` column. A month where walk-forward had no feasible policy, or
    its policy no trade, has no score and leaves the walk-forward score null: the strategy did
    not run that month. The hindsight policy is the one with the best average monthly score
    among the policies that met the constraints in every tested month (ties by `policy_id`).
    """
    overall = walkforward.filter(pl.col("caller_name").is_null())
    months = tuple(sorted(overall.get_column("month").unique().to_list()))
    objective = overall.get_column("objective")[0] if overall.height else ""
    scored = overall.get_column("oos_objective_score").drop_nulls()
    pooled = (
        frontiers.filter(pl.col("caller_name").is_null() & pl.col("month").is_in(list(months)))
        .group_by("policy_id")
        .agg(
            pl.col("meets_constraints").all().alias("_feasible"),
            pl.len().alias("_months"),
            pl.col("trades_count").sum().alias("_trades"),
            pl.col("objective_score").mean().alias("_score"),
        )
        .filter(pl.col("_feasible") & (pl.col("_months") == len(months)) & pl.col("_score").is_not_null())
        .sort(["_score", "policy_id"], descending=[True, False])
    )
    best = pooled.row(0, named=True) if pooled.height else None
    return WindowGap(
        objective=objective,
        tested_months=months,
        walk_forward_score=float(scored.mean()) if scored.len() == len(months) and months else None,  # type: ignore[arg-type]
        walk_forward_trades=int(overall.get_column("oos_trades_count").fill_null(0).sum()),
        hindsight_policy_id=best["policy_id"] if best else None,
        hindsight_score=float(best["_score"]) if best else None,
        hindsight_trades=int(best["_trades"]) if best else 0,
    )
