"""One job per run type (the artifacts that complete it, docs/artifacts.md "What a run writes") and the spec job.

`features`, `walkforward` and the portfolio are in the jobs of the run types they can apply to; a
run whose spec turns them off materializes nothing for them (`orchestration.research`,
`orchestration.portfolio`).
"""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from quantlab_pipeline.orchestration.assets import alerts, paths, run_spec, summary, trades
from quantlab_pipeline.orchestration.optimization import frontier
from quantlab_pipeline.orchestration.partitions import run_month_partitions
from quantlab_pipeline.orchestration.portfolio import portfolio
from quantlab_pipeline.orchestration.research import features, walkforward

run_spec_job = define_asset_job(
    "run_spec_job",
    selection=AssetSelection.assets(run_spec),
    partitions_def=run_month_partitions,
    description="Store a run spec (partition: any month of the run).",
)
path_only_job = define_asset_job(
    "path_only_job",
    selection=AssetSelection.assets(alerts, paths, features),
    partitions_def=run_month_partitions,
    description="A path-only run for one month: alerts, the truth layer and features.",
)
policy_job = define_asset_job(
    "policy_job",
    selection=AssetSelection.assets(alerts, paths, features, trades, summary, portfolio),
    partitions_def=run_month_partitions,
    description="A policy run for one month: alerts, truth layer, features, trades, summary and the portfolio.",
)
optimization_job = define_asset_job(
    "optimization_job",
    selection=AssetSelection.assets(alerts, paths, frontier, walkforward),
    partitions_def=run_month_partitions,
    description="An optimization run for one month: alerts, truth layer, the policy frontier with its daily "
    "matrix and overfitting figures and, with walk-forward, its validation on the month.",
)

JOB_BY_RUN_TYPE = {
    "path-only": path_only_job.name,
    "policy": policy_job.name,
    "optimization": optimization_job.name,
}
BACKTEST_JOBS = [run_spec_job, path_only_job, policy_job, optimization_job]
