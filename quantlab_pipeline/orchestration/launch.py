"""Driving Dagster from the CLI: the instance, run creation, and per-month materialization.

Everything goes through the same `DAGSTER_HOME` instance the UI shows, so CLI runs, their
partitions and materializations appear in `dagster dev`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from dagster import AssetKey, AssetMaterialization, DagsterInstance

from quantlab_pipeline.core.errors import EnvironmentFault, QuantlabError, first_line
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.core.sweep_spec import parse_sweep
from quantlab_pipeline.orchestration import dagster_adapter
from quantlab_pipeline.orchestration.io_managers import spec_metadata
from quantlab_pipeline.orchestration.partitions import RUN_MONTH_PARTITIONS_NAME, month_run_key, run_month_keys
from quantlab_pipeline.storage.atomic import atomic_write_bytes
from quantlab_pipeline.storage.paths import ProjectPaths
from quantlab_pipeline.storage.specs import write_spec


def project_root() -> Path | None:
    """The nearest folder above the cwd (or above this package) holding `dagster.yaml` + `workspace.yaml`."""
    starts = [Path.cwd(), Path(__file__).resolve().parent]
    for start in starts:
        for folder in (start, *start.parents):
            if (folder / "dagster.yaml").is_file() and (folder / "workspace.yaml").is_file():
                return folder
    return None


def check_dagster_home() -> str:
    """`DAGSTER_HOME` (set to the project's folder when unset), refused in one line if it is
    relative or not a folder; nothing created."""
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
    if not os.path.isabs(home):
        raise QuantlabError(f"DAGSTER_HOME={home}: must be an absolute path")
    if os.path.exists(home) and not os.path.isdir(home):
        raise QuantlabError(f"DAGSTER_HOME={home}: not a directory")
    return home


def ensure_dagster_home(notice: Callable[[str], None] | None = None) -> str:
    """Point `DAGSTER_HOME` at the project's `dagster.yaml` folder when unset.

    Dagster's fallback is a temporary instance that is deleted on exit, taking the registered
    run partitions and the materialization history with it. A relative path or a file is refused
    in one line; a folder that does not exist yet is created with the project's `dagster.yaml`
    (its run queue included), and `notice` told so (docs/faults.md).
    """
    home = check_dagster_home()
    folder = Path(home)
    if not folder.exists():
        root = project_root()
        try:
            folder.mkdir(parents=True)
            if root is not None:
                atomic_write_bytes(folder / "dagster.yaml", (root / "dagster.yaml").read_bytes())
        except OSError as exc:
            raise EnvironmentFault(f"DAGSTER_HOME={home}: cannot create it ({exc.strerror})") from None
        if notice is not None:
            origin = f"with {root / 'dagster.yaml'}" if root is not None else "(no project dagster.yaml found)"
            notice(f"created DAGSTER_HOME {home} {origin}")
    return home


def get_instance(notice: Callable[[str], None] | None = None) -> DagsterInstance:
    """The instance at `DAGSTER_HOME`; an unusable home or `dagster.yaml` is one line naming it."""
    home = ensure_dagster_home(notice)
    try:
        return DagsterInstance.get()
    except Exception as exc:  # YAML, config schema, SQLite on a read-only home, …
        raise EnvironmentFault(f"Dagster instance at {home} (dagster.yaml): {first_line(exc)}") from None


# The daemon beats every 30 s; two missed beats and more and it is taken for stopped.
DAEMON_HEARTBEAT_FRESH_S = 90.0


def queue_daemon_running(instance: DagsterInstance) -> bool:
    """Whether a daemon that launches queued runs has beaten lately (docs/faults.md)."""
    beat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
    return beat is not None and time.time() - beat.timestamp < DAEMON_HEARTBEAT_FRESH_S


def create_run(spec: RunSpec, *, paths: ProjectPaths, instance: DagsterInstance) -> None:
    """Store the spec, register its run-month partitions, and record the `run_spec`
    materialization of each.

    The spec is written through the same storage call as the `run_spec` IO manager and reported
    as runless materializations with the same metadata: the UI shows it as materialized without
    the cost of a Dagster run per backtest.
    """
    stored = write_spec(paths.runs_dir, spec)
    dagster_adapter.add_partition_keys(instance, RUN_MONTH_PARTITIONS_NAME, run_month_keys(spec))
    metadata = spec_metadata(paths.runs_dir, stored)
    for month in spec.months():
        instance.report_runless_asset_event(
            AssetMaterialization(
                asset_key=AssetKey("run_spec"), partition=month_run_key(spec, month), metadata=metadata
            )
        )


# A walk-forward month needs the months before it completed: its queued runs carry this tag (value:
# the run id), which dagster.yaml limits to one run in flight per value, so the queue starts them
# one at a time, in the order they were queued (docs/research.md "Walk-forward optimization").
IN_ORDER_TAG = "quantlab/in_order"


def run_tags(spec: RunSpec, month: str) -> dict[str, str]:
    """What a month's Dagster run is, as tags the Runs page filters by (and the queue limits)."""
    tags = {"quantlab/run_id": spec.run_id, "quantlab/run_type": spec.run_type, "quantlab/month": month}
    if spec.policy_id:
        tags["quantlab/policy_id"] = spec.policy_id
    if spec.run_type == "optimization" and parse_sweep(spec.sweep).train_months is not None:
        tags[IN_ORDER_TAG] = spec.run_id
    return tags
