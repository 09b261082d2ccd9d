"""One job per run type (the artifacts that complete it: README "What a run writes") and the spec job."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from quantlab_pipeline.orchestration.assets import alerts, frontier, paths, run_spec, summary, trades
from quantlab_pipeline.orchestration.partitions import month_run_partitions, run_partitions

run_spec_job = define_asset_job(
    "run_spec_job",
    selection=AssetSelection.assets(run_spec),
    partitions_def=run_partitions,
    description="Store a run spec (partition = run id).",
)
path_only_job = define_asset_job(
    "path_only_job",
    selection=AssetSelection.assets(alerts, paths),
    partitions_def=month_run_partitions,
    description="A path-only run for one month: alerts and the truth layer.",
)
policy_job = define_asset_job(
    "policy_job",
    selection=AssetSelection.assets(alerts, paths, trades, summary),
    partitions_def=month_run_partitions,
    description="A policy run for one month: alerts, truth layer, trades and summary.",
)
optimization_job = define_asset_job(
    "optimization_job",
    selection=AssetSelection.assets(alerts, paths, frontier),
    partitions_def=month_run_partitions,
    description="An optimization run for one month: alerts, truth layer and the policy frontier.",
)

JOB_BY_RUN_TYPE = {
    "path-only": path_only_job.name,
    "policy": policy_job.name,
    "optimization": optimization_job.name,
}
BACKTEST_JOBS = [run_spec_job, path_only_job, policy_job, optimization_job]
