"""Month runs: every month a command runs is a real Dagster run of the run type's job, created
in the instance with a code-location origin — so the UI can re-execute it — and then executed
in this process, in a run worker, or queued for the daemon (`--submit`), which launches it
wherever the instance's run launcher says (a subprocess here, a Docker container or a Kubernetes
pod in `deploy/`). Which of these, and in what order, is the month runner's business
(`month_runner`, docs/architecture.md); this module creates a month's run and reads its result.

The run's config carries the runs directory (the `run_store` resource), so a re-execution from
the UI or a worker on another machine writes where the CLI did.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    QueuedRunCoordinator,
    RunsFilter,
)

from quantlab_pipeline.core.errors import QuantlabError, first_line
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.orchestration import dagster_adapter
from quantlab_pipeline.orchestration.jobs import JOB_BY_RUN_TYPE
from quantlab_pipeline.orchestration.launch import project_root, run_tags
from quantlab_pipeline.orchestration.partitions import RUN_MONTH_PARTITIONS_NAME, month_run_key
from quantlab_pipeline.storage.layout import ARTIFACT_PHASES, required_artifacts
from quantlab_pipeline.storage.lifecycle import month_status, steps_to_finish
from quantlab_pipeline.storage.paths import ProjectPaths
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.writer import writer_gone

# The CLI prints its own progress and one line per failure; Dagster's console log would add
# stack traces (each failure's trace is in the month's logs/stderr.txt and the Dagster UI).
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@functools.cache
def _working_directory() -> str:
    root = project_root()
    return str(root) if root else os.getcwd()


@functools.cache
def _job(run_type: str) -> dagster_adapter.JobOrigins:
    """The run type's job as this process reconstructs it, and its origin in the workspace
    (built once per process: reconstructing the job resolves its whole definition)."""
    return dagster_adapter.job_origins(JOB_BY_RUN_TYPE[run_type], working_directory=_working_directory())


def create_month_run(
    spec: RunSpec, month: str, *, paths: ProjectPaths, instance: DagsterInstance, steps: Sequence[str] | None = None
) -> DagsterRun:
    """A `NOT_STARTED` run of the month's partition, tagged and with its origins, ready to execute
    here or to queue. It selects `steps` when given, else the artifacts the spec asks for: an asset
    of the job the spec turns off (`--no-features`, no portfolio) left in the selection would be
    planned and never materialized, and Dagster rebuilds each asset's partition status by looking
    up every run that ever left one — seconds per page view at a lab's scale (docs/dagster.md).
    A month outside the run's window has no partition: refused (`SpecError`) before anything is
    created."""
    spec.month_window(month)
    job = _job(spec.run_type)
    key = month_run_key(spec, month)
    dagster_adapter.add_partition_keys(instance, RUN_MONTH_PARTITIONS_NAME, [key])  # a run created before this layout
    tags = {**run_tags(spec, month), "dagster/partition": key}
    run_config = {**QUIET_LOGS, "resources": {"run_store": {"config": {"runs_dir": str(paths.resolved().runs_dir)}}}}
    return instance.create_run_for_job(
        job_def=job.reconstructable.get_definition(),
        run_config=run_config,
        tags=tags,
        asset_selection={AssetKey(step) for step in steps or required_artifacts(spec.run_type, spec.to_dict())},
        remote_job_origin=job.remote_origin,
        job_code_origin=job.reconstructable.get_python_origin(),
    )


@dataclass
class MonthResult:
    month: str
    status: str  # the month's state on disk (storage.lifecycle): completed, failed, interrupted, …
    run_dir: Path
    dagster_run_id: str | None
    error: str | None = None
    headline: dict[str, Any] = field(default_factory=dict)


def _headline(instance: DagsterInstance, spec: RunSpec, month: str) -> dict[str, dict[str, Any]]:
    """Each artifact's latest materialization metadata for the partition (what the UI shows)."""
    key = month_run_key(spec, month)
    headline = {}
    for artifact in required_artifacts(spec.run_type, spec.to_dict()):
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(artifact), asset_partitions=[key]), limit=1
        ).records
        if records and records[0].asset_materialization is not None:
            metadata = records[0].asset_materialization.metadata
            headline[artifact] = {k: v.value for k, v in metadata.items()}
    return headline


def month_result(
    spec: RunSpec, month: str, *, paths: ProjectPaths, instance: DagsterInstance, run: DagsterRun | None = None
) -> MonthResult:
    """A month as its directory and the instance record it. When its Dagster run failed without the
    directory saying so (before the directory was touched, or a full disk kept it from recording),
    the run's own error says why."""
    status = month_status(RunDirectory(paths.runs_dir, month, spec.run_id))
    outcome = MonthResult(
        month=month,
        status=status.state,
        run_dir=status.path,
        dagster_run_id=run.run_id if run else None,
        error=status.detail if status.state != "completed" else None,
        headline=_headline(instance, spec, month),
    )
    if run is not None and run.status == DagsterRunStatus.FAILURE and outcome.status in ("missing", "running"):
        outcome.error, outcome.status = _run_error(instance, run.run_id), "failed"
    return outcome


def _run_error(instance: DagsterInstance, run_id: str) -> str:
    for record in instance.get_records_for_run(run_id).records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.is_step_failure and event.step_failure_data is not None:
            info = event.step_failure_data.error
            while info is not None and info.cause is not None:  # Dagster wraps the user's error
                info = info.cause
            if info is not None:
                return first_line(info.message)
    return "run failed"


def materialize_month(
    spec: RunSpec, month: str, *, paths: ProjectPaths, instance: DagsterInstance, steps: Sequence[str] | None = None
) -> MonthResult:
    """Create the month's run and execute it in this process; report the month's state."""
    run = create_month_run(spec, month, paths=paths, instance=instance, steps=steps)
    dagster_adapter.execute_run_here(_job(spec.run_type).reconstructable, run, instance)
    return month_result(spec, month, paths=paths, instance=instance, run=instance.get_run_by_id(run.run_id))


def settle_worker_exit(run_id: str, exitcode: int, instance: DagsterInstance) -> None:
    """Fail the run of a run worker that has exited without finishing it — ended by a signal
    (kill -9, the OOM killer) or stopped before it started the run — so the UI does not show it
    running, or waiting to start, for ever."""
    run = instance.get_run_by_id(run_id)
    if run is None or run.is_finished:
        return
    how = f"by {signal.Signals(-exitcode).name}" if -exitcode in signal.valid_signals() else f"with status {exitcode}"
    instance.report_run_failed(run, f"the run worker ended {how} before it finished the run")


def submit_month(
    spec: RunSpec, month: str, *, paths: ProjectPaths, instance: DagsterInstance, steps: Sequence[str] | None = None
) -> DagsterRun:
    """Queue the month's run: the daemon launches it when the instance's limits allow."""
    check_queue(instance)
    run = create_month_run(spec, month, paths=paths, instance=instance, steps=steps)
    return instance.submit_run(run.run_id, workspace=None)  # type: ignore[arg-type]  # the queue needs none


def check_queue(instance: DagsterInstance) -> None:
    """A one-line error unless the instance queues runs (what `--submit` hands them to)."""
    if not isinstance(instance.run_coordinator, QueuedRunCoordinator):
        raise QuantlabError(
            "--submit: this Dagster instance has no run queue; use the project's dagster.yaml "
            "(run_coordinator: QueuedRunCoordinator) or run in the foreground"
        )


def latest_month_runs(instance: DagsterInstance, run_id: str) -> dict[str, DagsterRun]:
    """The newest Dagster run of each month of a quantlab run (CLI, resume or UI re-execution)."""
    runs = instance.get_runs(RunsFilter(tags={"quantlab/run_id": run_id}))  # newest first
    latest: dict[str, DagsterRun] = {}
    for run in runs:
        latest.setdefault(run.tags.get("quantlab/month", ""), run)
    latest.pop("", None)
    return latest


def record_interruption(spec: RunSpec, month: str, *, paths: ProjectPaths, instance: DagsterInstance) -> MonthResult:
    """A Ctrl-C outside any step (between steps, in Dagster's own bookkeeping): record it where
    the step would have, and fail the Dagster run left `STARTED`."""
    run_dir = RunDirectory(paths.runs_dir, month, spec.run_id)
    manifest = run_dir.manifest()
    if manifest is not None and manifest.get("status") == "running":
        pending = steps_to_finish(run_dir) or list(required_artifacts(spec.run_type, spec.to_dict()))
        run_dir.record_failure(
            spec, phase=ARTIFACT_PHASES[pending[0]], exc=KeyboardInterrupt("interrupted"), reason="interrupted"
        )
    settle_dead_dagster_run(run_dir, instance, force=True)  # this process was the writer
    return month_result(spec, month, paths=paths, instance=instance)


def settle_dead_dagster_run(run_dir: RunDirectory, instance: DagsterInstance, *, force: bool = False) -> None:
    """Mark the month's last Dagster run failed when it still says `STARTED` but its writer is
    gone (a kill -9 leaves it so): the UI then shows what the directory shows."""
    manifest = run_dir.manifest() or {}
    writer = manifest.get("writer") or {}
    run_id = writer.get("dagster_run_id")
    if not run_id or (not force and writer_gone(writer) is None):
        return
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status in (DagsterRunStatus.STARTED, DagsterRunStatus.STARTING):
        instance.report_run_failed(run)
