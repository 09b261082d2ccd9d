"""Driving Dagster from the CLI: the instance, run creation, and per-month materialization.

Everything goes through the same `DAGSTER_HOME` instance the UI shows, so CLI runs, their
partitions and materializations appear in `dagster dev`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import AssetKey, AssetMaterialization, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, Definitions

from quantlab_pipeline.core.errors import EnvironmentFault, QuantlabError, first_line
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.orchestration.defs import build_defs
from quantlab_pipeline.orchestration.io_managers import spec_metadata
from quantlab_pipeline.orchestration.partitions import RUN_PARTITIONS_NAME, month_run_key
from quantlab_pipeline.orchestration.settings import Settings
from quantlab_pipeline.storage.layout import ARTIFACT_PHASES, REQUIRED_ARTIFACTS
from quantlab_pipeline.storage.lifecycle import month_status, steps_to_finish
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import write_spec
from quantlab_pipeline.storage.writer import writer_gone

# The CLI prints its own progress and one line per failure; Dagster's console log would add
# stack traces (each failure's trace is in the month's logs/stderr.txt and the Dagster UI).
_QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def project_root() -> Path | None:
    """The nearest folder above the cwd (or above this package) holding `dagster.yaml` + `workspace.yaml`."""
    starts = [Path.cwd(), Path(__file__).resolve().parent]
    for start in starts:
        for folder in (start, *start.parents):
            if (folder / "dagster.yaml").is_file() and (folder / "workspace.yaml").is_file():
                return folder
    return None


def ensure_dagster_home() -> str:
    """Point `DAGSTER_HOME` at the project's `dagster.yaml` folder when unset.

    Dagster's fallback is a temporary instance that is deleted on exit, taking the registered
    run partitions and the materialization history with it.
    """
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        root = project_root()
        if root is None:
            raise QuantlabError(
                "DAGSTER_HOME is unset and no project dagster.yaml was found above the current directory; "
                "set DAGSTER_HOME to a folder for the Dagster instance"
            )
        home = str(root)
        os.environ["DAGSTER_HOME"] = home
    Path(home).mkdir(parents=True, exist_ok=True)
    return home


@functools.cache
def _definitions(runs_dir: str) -> Definitions:
    """The project's definitions with the run store at `runs_dir` (the CLI's `--runs-dir`)."""
    return build_defs(dataclasses.replace(Settings.from_env(), runs_dir=runs_dir))


def get_instance() -> DagsterInstance:
    """The instance at `DAGSTER_HOME`; an unusable home or `dagster.yaml` is one line naming it."""
    home = ensure_dagster_home()
    try:
        return DagsterInstance.get()
    except Exception as exc:  # YAML, config schema, SQLite on a read-only home, …
        raise EnvironmentFault(f"Dagster instance at {home} (dagster.yaml): {first_line(exc)}") from None


def create_run(spec: RunSpec, *, runs_dir: str, instance: DagsterInstance) -> None:
    """Store the spec, register the run partition, and record the `run_spec` materialization.

    The spec is written through the same storage call as the `run_spec` IO manager and reported
    as a runless materialization with the same metadata: the UI shows it as materialized without
    the cost of a Dagster run per backtest.
    """
    stored = write_spec(runs_dir, spec)
    instance.add_dynamic_partitions(RUN_PARTITIONS_NAME, [spec.run_id])
    instance.report_runless_asset_event(
        AssetMaterialization(
            asset_key=AssetKey("run_spec"), partition=spec.run_id, metadata=spec_metadata(Path(runs_dir), stored)
        )
    )


def run_tags(spec: RunSpec, month: str) -> dict[str, str]:
    """What a month's Dagster run is, as tags the Runs page filters by."""
    tags = {"quantlab/run_id": spec.run_id, "quantlab/run_type": spec.run_type, "quantlab/month": month}
    if spec.policy_id:
        tags["quantlab/policy_id"] = spec.policy_id
    return tags


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
    key = month_run_key(month, spec.run_id)
    headline = {}
    for artifact in REQUIRED_ARTIFACTS[spec.run_type]:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(artifact), asset_partitions=[key]), limit=1
        ).records
        if records and records[0].asset_materialization is not None:
            metadata = records[0].asset_materialization.metadata
            headline[artifact] = {k: v.value for k, v in metadata.items()}
    return headline


def month_result(
    spec: RunSpec, month: str, *, runs_dir: str, instance: DagsterInstance, dagster_run_id: str | None = None
) -> MonthResult:
    """A month as its directory and the instance record it: state, error line, headline numbers."""
    status = month_status(RunDirectory(runs_dir, month, spec.run_id))
    return MonthResult(
        month=month,
        status=status.state,
        run_dir=status.path,
        dagster_run_id=dagster_run_id,
        error=status.detail if status.state != "completed" else None,
        headline=_headline(instance, spec, month),
    )


def materialize_month(
    spec: RunSpec,
    month: str,
    *,
    runs_dir: str,
    instance: DagsterInstance,
    steps: Sequence[str] | None = None,
) -> MonthResult:
    """Materialize partition `month|run_id` through the run type's job (`steps`: only these
    artifacts); report the month's state on disk."""
    from quantlab_pipeline.orchestration.jobs import JOB_BY_RUN_TYPE

    job = _definitions(str(runs_dir)).resolve_job_def(JOB_BY_RUN_TYPE[spec.run_type])
    result = job.execute_in_process(
        instance=instance,
        partition_key=month_run_key(month, spec.run_id),
        run_config=_QUIET,
        tags=run_tags(spec, month),
        asset_selection=[AssetKey(step) for step in steps] if steps else None,
        raise_on_error=False,
    )
    outcome = month_result(spec, month, runs_dir=runs_dir, instance=instance, dagster_run_id=result.run_id)
    if not result.success and (outcome.error is None or outcome.status in ("missing", "running")):
        # Failed before the directory was touched, or could not record it (a full disk): the
        # run's own error says why, and this process is no longer writing the month.
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        info = failure.step_failure_data.error if failure else None
        while info is not None and info.cause is not None:  # Dagster wraps the user's error
            info = info.cause
        outcome.error = first_line(info.message) if info else "run failed"
        outcome.status = "failed"
    return outcome


def record_interruption(spec: RunSpec, month: str, *, runs_dir: str, instance: DagsterInstance) -> MonthResult:
    """A Ctrl-C outside any step (between steps, in Dagster's own bookkeeping): record it where
    the step would have, and fail the Dagster run left `STARTED`."""
    run_dir = RunDirectory(runs_dir, month, spec.run_id)
    manifest = run_dir.manifest()
    if manifest is not None and manifest.get("status") == "running":
        pending = steps_to_finish(run_dir) or list(REQUIRED_ARTIFACTS[spec.run_type])
        run_dir.record_failure(
            spec, phase=ARTIFACT_PHASES[pending[0]], exc=KeyboardInterrupt("interrupted"), reason="interrupted"
        )
    settle_dead_dagster_run(run_dir, instance, force=True)  # this process was the writer
    return month_result(spec, month, runs_dir=runs_dir, instance=instance)


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
