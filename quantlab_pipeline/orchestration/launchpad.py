"""`new_backtest_job`: start a backtest from the UI's launchpad without inventing a run id.

The job's one op does what `quantlab runs create` does (docs/dagster.md "Dagster"): a fresh run id, the
spec, its run-month partitions and the `run_spec` materializations, and it tags its own Dagster run
with the run id. The months then run as ordinary queued runs of the run type's job, requested by
`new_backtest_months_sensor` when the job succeeds: a sensor is how Dagster turns one run's
outcome into further runs, so they go through the instance's run queue and concurrency limits
like any run started from the UI.

Wired in `quantlab_pipeline.definitions`, not in `build_defs`: the op calls
`launch.create_run`, and `launch` imports `defs`. (No `from __future__ import annotations`:
Dagster reads the op's config class from its annotation at definition time.)
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    Definitions,
    Failure,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    RunStatusSensorContext,
    job,
    op,
    run_status_sensor,
)

from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.orchestration.assets import RunSpecConfig
from quantlab_pipeline.orchestration.jobs import JOB_BY_RUN_TYPE, optimization_job, path_only_job, policy_job
from quantlab_pipeline.orchestration.launch import create_run, run_tags
from quantlab_pipeline.orchestration.partitions import check_months_exist, month_run_key
from quantlab_pipeline.orchestration.resources import RunStoreResource
from quantlab_pipeline.storage.paths import ProjectPaths
from quantlab_pipeline.storage.run_creation import create_run_spec
from quantlab_pipeline.storage.specs import read_spec

RUN_ID_TAG = "quantlab/run_id"  # the key `launch.run_tags` gives every month's run too


@op(
    description="Create a backtest: a fresh run id, its spec (runs/_specs/<run_id>.json), its run-month "
    "partitions and their `run_spec` materializations. Each month then runs as a run of the run type's job."
)
def create_backtest(context: OpExecutionContext, config: RunSpecConfig, run_store: RunStoreResource) -> str:
    try:
        spec = create_run_spec(config.request())
        check_months_exist(spec.months())
    except SpecError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    create_run(spec, paths=ProjectPaths(runs_dir=run_store.root), instance=context.instance)
    context.instance.add_run_tags(context.run_id, {RUN_ID_TAG: spec.run_id})
    context.log.info(
        f"run_id {spec.run_id}: {spec.run_type} over {', '.join(spec.months())}; "
        f"{JOB_BY_RUN_TYPE[spec.run_type]} runs follow, one per month"
    )
    context.add_output_metadata(month_runs_metadata(spec))
    return spec.run_id


def _runs_url(tag: str, value: str) -> str:
    """The UI's Runs page filtered by one tag (a path of the UI the launcher's run links to)."""
    return "/runs?" + urlencode({"q[]": f"tag:{tag}={value}"})


def month_runs_metadata(spec: RunSpec) -> dict[str, MetadataValue]:
    """What the launcher's run shows of the months it starts: their partitions, each linked to its
    runs, and every run of the backtest. The month runs are created by the sensor after this run
    succeeds, so they are linked through the tags they will carry, not by run id."""
    job = JOB_BY_RUN_TYPE[spec.run_type]
    rows = [
        f"| {month} | `{month_run_key(spec, month)}` | [{job} runs]({_runs_url('dagster/partition', month_run_key(spec, month))}) |"
        for month in spec.months()
    ]
    table = "\n".join(["| month | partition | runs |", "| --- | --- | --- |", *rows])
    return {
        "quantlab_run_id": MetadataValue.text(spec.run_id),
        "month_runs": MetadataValue.md(table),
        "all_month_runs": MetadataValue.url(_runs_url(RUN_ID_TAG, spec.run_id)),
    }


@job(description="Start a backtest from the launchpad: fill in the run, the run id is made for you.")
def new_backtest_job() -> None:
    create_backtest()


@run_status_sensor(
    name="new_backtest_months_sensor",
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[new_backtest_job],
    request_jobs=[path_only_job, policy_job, optimization_job],
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="After new_backtest_job: one run of the run type's job per month of the new backtest.",
)
def new_backtest_months_sensor(context: RunStatusSensorContext, run_store: RunStoreResource) -> Iterator[RunRequest]:
    run_id = context.dagster_run.tags[RUN_ID_TAG]  # set by create_backtest before the run succeeded
    # The months use the run store the launcher was given (launchpad resource config), if any.
    run_config: dict[str, Any] = dict(context.dagster_run.run_config)
    store: dict[str, Any] | None = (run_config.get("resources") or {}).get("run_store")
    configured = (store or {}).get("config", {}).get("runs_dir")  # run config is text: a path from here on
    spec = read_spec(Path(configured) if configured else run_store.root, run_id)
    for month in spec.months():
        yield RunRequest(
            run_key=month_run_key(spec, month),
            job_name=JOB_BY_RUN_TYPE[spec.run_type],
            partition_key=month_run_key(spec, month),
            run_config={"resources": {"run_store": store}} if store else {},
            tags=run_tags(spec, month),
        )


LAUNCHPAD = Definitions(jobs=[new_backtest_job], sensors=[new_backtest_months_sensor])
