"""The catalog in Dagster (README "The catalog"): the `backtest_catalog` asset, its job and the sensor.

The sensor only looks at the disk (a stat per terminal run directory, no hashing, no database)
and requests `catalog_sync_job`; the sync itself runs in that job, serialised by the `catalog`
pool (configure it with one slot) and by the catalog's file lock.
"""

import json

from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    asset,
    define_asset_job,
    sensor,
)
from dagster_duckdb import DuckDBResource

from quantlab_pipeline.orchestration.partitions import OWNER
from quantlab_pipeline.orchestration.resources import RunStoreResource
from quantlab_pipeline.storage.catalog import sync_catalog, terminal_fingerprint

CATALOG_POOL = "catalog"


@asset(
    pool=CATALOG_POOL,
    group_name="catalog",
    # One lineage graph: the catalog indexes what the backtest assets write; the edges come from
    # the last artifact of each run type's chain, so the graph reads as the pipeline.
    deps=[
        AssetDep(name, partition_mapping=AllPartitionMapping())
        for name in ("features", "summary", "frontier", "walkforward")
    ],
    owners=[OWNER],
    kinds={"duckdb"},
    description="DuckDB index of the terminal run directories, reconciled with the disk.",
)
def backtest_catalog(
    context: AssetExecutionContext, catalog_duckdb: DuckDBResource, run_store: RunStoreResource
) -> MaterializeResult:
    report = sync_catalog(catalog_duckdb.database, run_store.root, connect=catalog_duckdb.get_connection)
    stats = report.stats
    context.log.info(
        f"catalog {report.catalog_path}: registered {len(report.registered)}, updated {len(report.updated)}, "
        f"removed {len(report.removed)}, rejected {len(report.rejected)}, skipped {len(report.skipped)}"
    )
    for run_dir, reason in report.rejected:
        context.log.warning(f"rejected {run_dir}: {reason}")
    return MaterializeResult(
        metadata={
            "registered": len(report.registered),
            "updated": len(report.updated),
            "removed": len(report.removed),
            "skipped": len(report.skipped),
            "rejected": len(report.rejected),
            "unchanged": report.unchanged,
            "total_runs": stats.total_runs,
            "runs_by_status": MetadataValue.json(stats.runs_by_status),
            "runs_by_type": MetadataValue.json(stats.runs_by_type),
            "total_artifacts": stats.total_artifacts,
            "artifacts_by_type": MetadataValue.json(stats.artifacts_by_type),
            "rejected_runs": MetadataValue.json([{"run_dir": d, "reason": r} for d, r in report.rejected]),
            "dagster/row_count": stats.total_runs,
            "path": MetadataValue.path(str(report.catalog_path)),
            "runs_dir": MetadataValue.path(str(report.runs_dir)),
        }
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


def build_catalog_sync_sensor(interval_s: int, warnings: tuple[str, ...] = ()) -> SensorDefinition:
    """The sensor, ticking every `interval_s` seconds; `warnings` (settings that fell back to their
    default) are logged on every tick so a bad value is visible without breaking the location."""

    @sensor(
        name="catalog_sync_sensor",
        job=catalog_sync_job,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_s,
        description="Requests a catalog sync when terminal run directories appear, change or disappear.",
    )
    def catalog_sync_sensor(context: SensorEvaluationContext, run_store: RunStoreResource):
        """Cursor `{"fingerprint", "seq"}`: the digest of the terminal directories' stats last synced,
        and a counter, so a state seen before (an archive restored) still gets a fresh run key."""
        for warning in warnings:
            context.log.warning(warning)
        if not run_store.root.is_dir():
            return SkipReason(f"runs directory {run_store.root.resolve()} does not exist yet")
        digest, count = terminal_fingerprint(run_store.root)
        previous = json.loads(context.cursor) if context.cursor else {}
        if previous.get("fingerprint") == digest:
            return SkipReason(f"no change in {count} terminal run directories under {run_store.root.resolve()}")
        seq = previous.get("seq", 0) + 1
        context.update_cursor(json.dumps({"fingerprint": digest, "seq": seq}))
        return RunRequest(
            run_key=f"catalog-sync-{seq}-{digest[:16]}",
            tags={"quantlab/terminal_runs": str(count)},
        )

    return catalog_sync_sensor
