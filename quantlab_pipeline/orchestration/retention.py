"""Deleting runs for good (docs/lifecycle.md "Deleting and pruning runs"): the Dagster part —
its Dagster runs with their event logs and compute logs, its partition keys, the runless
`run_spec` materialization — and the files (storage/retention.py), in an order a delete cut short
can be finished by running it again: Dagster first, then the month directories, the spec last.

A run is found by what it is named with: the `quantlab/run_id` tag every month run carries and
the partition keys of `partition_keys_of` (UI launches and backfills of its partitions). Nothing
else is touched: no other run's records, and the catalog drops the rows at its next sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.orchestration.dagster_adapter import KeptConnectionSqliteEventLogStorage
from quantlab_pipeline.orchestration.partitions import RUN_MONTH_PARTITIONS_NAME, partition_keys_of
from quantlab_pipeline.storage.retention import RunFiles, archive_runs, disk_usage, remove_run_files

RUN_TAG = "quantlab/run_id"
# Dagster runs that may still start or write: a run with one of them is live.
_IN_FLIGHT = {
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
}
# The assets partitioned by each partitions definition whose materializations are recorded without
# a Dagster run (orchestration/launch.py `create_run`): deleting the run's runs does not remove them.
RUNLESS_ASSETS = {RUN_MONTH_PARTITIONS_NAME: (AssetKey("run_spec"),)}


@dataclass
class Removal:
    """One run to delete: its files, and what the instance holds of it."""

    files: RunFiles
    dagster_runs: dict[str, DagsterRunStatus] = field(default_factory=dict)
    partitions: list[tuple[str, str]] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.files.run_id


@dataclass(frozen=True)
class Removed:
    runs: int
    runs_dir_bytes: int  # how much the runs directory shrank
    instance_bytes: int  # how much the instance's storage shrank
    instance_dir: Path
    archive: tuple[int, int] | None  # (files, bytes) archived first
    notes: list[str]


def plan_removal(instance: DagsterInstance, files: list[RunFiles]) -> list[Removal]:
    """What deleting each run removes; a live run (a month being written, a Dagster run queued
    or in progress) is a one-line refusal naming it, and nothing is removed."""
    plans = []
    for run in files:
        plan = Removal(run)
        keys = partition_keys_of(run.spec) if run.spec else []
        filters = [{RUN_TAG: run.run_id}]
        filters += [{"dagster/partition": key} for _, key in keys]
        for tags in filters:
            for record in instance.get_run_records(RunsFilter(tags=tags)):
                plan.dagster_runs[record.dagster_run.run_id] = record.dagster_run.status
        plan.partitions = [(name, key) for name, key in keys if instance.has_dynamic_partition(name, key)]
        if run.live:
            raise QuantlabError(
                f"run {run.run_id} is live: {run.live[0].month} is being written ({run.live[0].path}); "
                "nothing was deleted"
            )
        busy = sorted(rid for rid, status in plan.dagster_runs.items() if status in _IN_FLIGHT)
        if busy:
            raise QuantlabError(
                f"run {run.run_id} is live: Dagster run {busy[0]} is {plan.dagster_runs[busy[0]].value}; "
                "wait for it to end or terminate it; nothing was deleted"
            )
        plans.append(plan)
    return plans


def remove_runs(
    instance: DagsterInstance, runs_dir: Path, plans: list[Removal], archive: str | Path | None = None
) -> Removed:
    """Delete the planned runs (after archiving their files to `archive`, when given)."""
    instance_dir = Path(instance.root_directory)
    archived = archive_runs(runs_dir, [p.files for p in plans], archive) if archive is not None else None
    instance_before = disk_usage(instance_dir)
    notes: list[str] = []
    for plan in plans:
        for dagster_run_id in plan.dagster_runs:
            instance.delete_run(dagster_run_id)
            instance.compute_log_manager.delete_logs(prefix=[dagster_run_id])
        for name, key in plan.partitions:
            for asset_key in RUNLESS_ASSETS.get(name, ()):
                try:
                    instance.wipe_asset_partitions(asset_key, [key])
                except NotImplementedError:  # Dagster's own SQL storages
                    notes.append(
                        f"this instance's event log cannot remove the {asset_key.to_user_string()} "
                        f"materialization of partition {key}; it stays in the asset's history"
                    )
            instance.delete_dynamic_partition(name, key)
        remove_run_files(runs_dir, plan.files)
    if isinstance(instance.event_log_storage, KeptConnectionSqliteEventLogStorage):
        instance.event_log_storage.reclaim_space()  # the deleted events' pages, back to the file system
    return Removed(
        runs=len(plans),
        runs_dir_bytes=sum(p.files.bytes for p in plans),
        instance_bytes=max(instance_before - disk_usage(instance_dir), 0),
        instance_dir=instance_dir,
        archive=archived,
        notes=notes,
    )
