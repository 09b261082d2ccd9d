"""Driving Dagster from the CLI: the instance, run creation, and per-month materialization.

Everything goes through the same `DAGSTER_HOME` instance the UI shows, so CLI runs, their
partitions and materializations appear in `dagster dev`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import AssetKey, AssetMaterialization, DagsterInstance, Definitions

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.orchestration.defs import build_defs
from quantlab_pipeline.orchestration.io_managers import spec_metadata
from quantlab_pipeline.orchestration.partitions import RUN_PARTITIONS_NAME, month_run_key
from quantlab_pipeline.orchestration.settings import Settings
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import write_spec

# Dagster's own console logs would drown the progress lines; warnings and errors still show.
_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


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
    ensure_dagster_home()
    return DagsterInstance.get()


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
    status: str
    run_dir: Path
    dagster_run_id: str
    error: str | None = None
    headline: dict[str, Any] = field(default_factory=dict)


def materialize_month(spec: RunSpec, month: str, *, runs_dir: str, instance: DagsterInstance) -> MonthResult:
    """Materialize the run type's job for partition `month|run_id`; report the run directory state."""
    from quantlab_pipeline.orchestration.jobs import JOB_BY_RUN_TYPE

    job = _definitions(str(runs_dir)).resolve_job_def(JOB_BY_RUN_TYPE[spec.run_type])
    result = job.execute_in_process(
        instance=instance,
        partition_key=month_run_key(month, spec.run_id),
        run_config=_QUIET,
        tags=run_tags(spec, month),
        raise_on_error=False,
    )
    run_dir = RunDirectory(runs_dir, month, spec.run_id)
    manifest = run_dir.manifest() or {}
    headline: dict[str, Any] = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        headline[mat.asset_key.path[-1]] = {k: v.value for k, v in mat.metadata.items()}
    error = (manifest.get("error") or {}).get("message")
    if error is None and not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        info = failure.step_failure_data.error if failure else None
        error = info.message.strip().splitlines()[0] if info else "run failed"
    return MonthResult(
        month=month,
        status=manifest.get("status", "failed" if not result.success else "missing"),
        run_dir=run_dir.path,
        dagster_run_id=result.run_id,
        error=error,
        headline=headline,
    )
