"""The catalog in Dagster (DESIGN §9, §11): the `backtest_catalog` asset, its job and the sensor.

The sensor only looks at the disk (a stat per terminal run directory, no hashing, no database)
and requests `catalog_sync_job`; the sync itself runs in that job, serialised by the `catalog`
pool (configure it with one slot) and by the catalog's file lock.
"""

import json
import os

from dagster import (
    AssetExecutionContext,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    asset,
    define_asset_job,
    sensor,
)
from dagster_duckdb import DuckDBResource

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.orchestration.resources import RunStoreResource
from quantlab_pipeline.storage.catalog import sync_catalog, terminal_fingerprint
from quantlab_pipeline.storage.layout import default_catalog_path

CATALOG_POOL = "catalog"
SENSOR_INTERVAL_ENV = "QUANTLAB_CATALOG_SENSOR_INTERVAL"
DEFAULT_SENSOR_INTERVAL_S = 30


def catalog_resources() -> dict[str, object]:
    """`catalog_duckdb` and `run_store`, configured from `QUANTLAB_CATALOG` / `QUANTLAB_RUNS_DIR`."""
    return {
        "catalog_duckdb": DuckDBResource(database=default_catalog_path()),
        "run_store": RunStoreResource(),
    }


def catalog_sensor_interval() -> int:
    """Seconds between sensor ticks, from `QUANTLAB_CATALOG_SENSOR_INTERVAL` (default 30)."""
    raw = os.environ.get(SENSOR_INTERVAL_ENV, str(DEFAULT_SENSOR_INTERVAL_S))
    try:
        seconds = int(raw)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise QuantlabError(f"{SENSOR_INTERVAL_ENV}: expected a positive number of seconds, got {raw!r}")
    return seconds


@asset(
    pool=CATALOG_POOL,
    group_name="catalog",
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


catalog_sync_job = define_asset_job(
    "catalog_sync_job",
    selection=[backtest_catalog],
    description="Reconcile the DuckDB catalog with the run directories.",
)


@sensor(
    job=catalog_sync_job,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=catalog_sensor_interval(),
    description="Requests a catalog sync when terminal run directories appear, change or disappear.",
)
def catalog_sync_sensor(context: SensorEvaluationContext, run_store: RunStoreResource):
    """Cursor `{"fingerprint", "seq"}`: the digest of the terminal directories' stats last synced,
    and a counter, so a state seen before (an archive restored) still gets a fresh run key."""
    if not run_store.root.is_dir():
        return SkipReason(f"runs directory {run_store.root} does not exist yet")
    digest, count = terminal_fingerprint(run_store.root)
    previous = json.loads(context.cursor) if context.cursor else {}
    if previous.get("fingerprint") == digest:
        return SkipReason(f"no change in {count} terminal run directories")
    seq = previous.get("seq", 0) + 1
    context.update_cursor(json.dumps({"fingerprint": digest, "seq": seq}))
    return RunRequest(
        run_key=f"catalog-sync-{seq}-{digest[:16]}",
        tags={"quantlab/terminal_runs": str(count)},
    )
