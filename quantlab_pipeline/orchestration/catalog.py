"""The catalog in Dagster (docs/catalog.md): the `backtest_catalog` asset, its job and the sensor.

The sensor only looks at the disk — the journal's end (a few stats) against the position the
last sync applied (`<catalog>.sync.json`), and now and then the stat of every terminal run
directory against the catalog's digest, for changes made behind quantlab's back — and requests
`catalog_sync_job`; the sync itself runs in that job, serialised by the `catalog` pool (configure
it with one slot) and by the catalog's file lock.
"""

import json
import time
from pathlib import Path

from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    DagsterRunStatus,
    DefaultSensorStatus,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    asset,
    define_asset_job,
    sensor,
)
from dagster_duckdb import DuckDBResource

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.orchestration.partitions import OWNER
from quantlab_pipeline.orchestration.resources import RunStoreResource
from quantlab_pipeline.storage.catalog import read_mark, sync_catalog, terminal_fingerprint, unverified_artifacts
from quantlab_pipeline.storage.journal import Journal
from quantlab_pipeline.storage.paths import ProjectPaths

CATALOG_POOL = "catalog"
FULL_SYNC_TAG = "quantlab/catalog_sync"  # "full" on a run of the job: every directory is inspected


def _project_paths(run_store: RunStoreResource, catalog_duckdb: DuckDBResource) -> ProjectPaths:
    """The two resources' text config as the project's paths (docs/architecture.md "Settings")."""
    return ProjectPaths(run_store.root, Path(catalog_duckdb.database))


@asset(
    pool=CATALOG_POOL,
    group_name="catalog",
    # One lineage graph: the catalog indexes what the backtest assets write; the edges come from
    # the last artifact of each run type's chain, so the graph reads as the pipeline.
    deps=[
        AssetDep(name, partition_mapping=AllPartitionMapping())
        for name in ("features", "summary", "portfolio", "frontier", "walkforward")
    ],
    owners=[OWNER],
    kinds={"duckdb"},
    description="DuckDB index of the terminal run directories, reconciled with the disk.",
    check_specs=[
        AssetCheckSpec(
            "catalog_artifacts_verified",
            asset="backtest_catalog",
            description="Every artifact this sync registered or updated (every catalogued one, on a full "
            "sync) exists at its recorded size and sha256.",
        )
    ],
)
def backtest_catalog(
    context: AssetExecutionContext, catalog_duckdb: DuckDBResource, run_store: RunStoreResource
) -> MaterializeResult:
    """Incremental unless the run is tagged `quantlab/catalog_sync: full`. The resource names the
    database; the storage layer opens it, giving up within `WRITE_TIMEOUT_S` with one line naming
    whoever holds it (the sensor requests the sync again on a later tick)."""
    full = context.run.tags.get(FULL_SYNC_TAG) == "full"
    paths = _project_paths(run_store, catalog_duckdb)
    try:
        report = sync_catalog(paths.catalog_path, paths.runs_dir, full=full)
    except QuantlabError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    stats = report.stats
    context.log.info(
        f"catalog {report.catalog_path} ({'full' if report.full else 'incremental'} sync, journal at "
        f"{report.position or '-'}): registered {len(report.registered)}, updated {len(report.updated)}, "
        f"removed {len(report.removed)}, rejected {len(report.rejected)}, skipped {len(report.skipped)}"
    )
    for run_dir, reason in report.rejected:
        context.log.warning(f"rejected {run_dir}: {reason}")
    # What this sync wrote, not the whole catalog: a sync costs what changed (docs/catalog.md).
    checked, bad = unverified_artifacts(
        paths.catalog_path, None if report.full else [*report.registered, *report.updated]
    )
    return MaterializeResult(
        check_results=[
            AssetCheckResult(
                check_name="catalog_artifacts_verified",
                passed=not bad,
                metadata={"artifacts": checked, "not_matching": len(bad), "examples": MetadataValue.json(bad[:10])},
            )
        ],
        metadata={
            "registered": len(report.registered),
            "updated": len(report.updated),
            "removed": len(report.removed),
            "skipped": len(report.skipped),
            "rejected": len(report.rejected),
            "unchanged": report.unchanged,
            "full_sync": report.full,
            "journal_position": str(report.position or "-"),
            "total_runs": stats.total_runs,
            "runs_by_status": MetadataValue.json(stats.runs_by_status),
            "runs_by_type": MetadataValue.json(stats.runs_by_type),
            "total_artifacts": stats.total_artifacts,
            "artifacts_by_type": MetadataValue.json(stats.artifacts_by_type),
            "rejected_runs": MetadataValue.json([{"run_dir": d, "reason": r} for d, r in report.rejected]),
            "dagster/row_count": stats.total_runs,
            "path": MetadataValue.path(str(report.catalog_path)),
            "runs_dir": MetadataValue.path(str(report.runs_dir)),
        },
    )


# A sync takes seconds; run monitoring ends one that is still going after this (a hung NFS, say),
# so the single catalog slot is never held for ever.
SYNC_MAX_RUNTIME_S = 900

catalog_sync_job = define_asset_job(
    "catalog_sync_job",
    selection=[backtest_catalog],
    tags={"dagster/max_runtime": str(SYNC_MAX_RUNTIME_S)},
    description="Reconcile the DuckDB catalog with the run directories.",
)


# How often the sensor stats every terminal run directory to catch what no journal line announced
# (a restored archive, a directory removed by hand): O(runs) stats, so not on every tick.
FULL_CHECK_EVERY_S = 600
_IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def _why_sync(paths: ProjectPaths, cursor: dict, now: float) -> tuple[str | None, bool]:
    """`(reason, full)`: why a sync is due (None: it is not), and whether it must be a full one.
    Updates `cursor["checked_at"]` when it stats every directory."""
    catalog = paths.catalog_path
    mark = read_mark(catalog)
    if mark is None or not catalog.exists():
        return f"catalog {catalog} has not been synced yet", False
    end = Journal(paths.runs_dir).end()
    if mark.position != end:
        return f"the journal is at {end}, the catalog at {mark.position or '-'}", False
    if now - cursor.get("checked_at", 0) < FULL_CHECK_EVERY_S:
        return None, False
    cursor["checked_at"] = now
    digest, count = terminal_fingerprint(paths.runs_dir)
    if digest != mark.digest:
        return f"{count} terminal run directories differ from the catalog outside the journal", True
    return None, False


def build_catalog_sync_sensor(interval_s: int, warnings: tuple[str, ...] = ()) -> SensorDefinition:
    """The sensor, ticking every `interval_s` seconds; `warnings` (settings that fell back to their
    default) are logged on every tick so a bad value is visible without breaking the location."""

    @sensor(
        name="catalog_sync_sensor",
        job=catalog_sync_job,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_s,
        description="Requests a catalog sync when the run directories' journal grows (and a full "
        "one when terminal directories changed outside it).",
    )
    def catalog_sync_sensor(
        context: SensorEvaluationContext, run_store: RunStoreResource, catalog_duckdb: DuckDBResource
    ):
        """Cursor `{"seq", "checked_at"}`: a counter that keeps run keys unique (a failed sync is
        requested again), and when every terminal directory was last statted."""
        for warning in warnings:
            context.log.warning(warning)
        paths = _project_paths(run_store, catalog_duckdb)
        root = paths.runs_dir
        if not root.is_dir():
            return SkipReason(f"runs directory {root.resolve()} does not exist yet")
        cursor = json.loads(context.cursor) if context.cursor else {}
        reason, full = _why_sync(paths, cursor, time.time())
        if reason is None:
            context.update_cursor(json.dumps(cursor))
            return SkipReason(f"the catalog is up to date with the journal of {root.resolve()}")
        if context.instance.get_run_records(RunsFilter(job_name=catalog_sync_job.name, statuses=_IN_FLIGHT), limit=1):
            return SkipReason(f"a catalog sync is queued or running ({reason})")
        cursor["seq"] = cursor.get("seq", 0) + 1
        context.update_cursor(json.dumps(cursor))
        end = Journal(root).end()
        context.log.info(f"requesting a {'full' if full else 'catalog'} sync: {reason}")
        return RunRequest(
            run_key=f"catalog-sync-{cursor['seq']}-{end or 'nojournal'}",
            tags={FULL_SYNC_TAG: "full" if full else "incremental"},
        )

    return catalog_sync_sensor
