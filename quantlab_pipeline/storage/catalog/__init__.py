"""The DuckDB catalog: an index of the terminal run directories, kept equal to disk (docs/catalog.md
"The catalog"). One module per concern; the public API is re-exported here.

- `schema` — tables, columns, schema version
- `connection` — opening with retries, read-only readers, transactions
- `validation` — reading and validating one run directory
- `fingerprint` — the sensor's stat-only view of the terminal directories
- `progress` — the journal position and digest a sync leaves for the next one and the sensor
- `sync` — planning and applying a reconciling sync (incremental or full)
- `query` — filters and queries
- `archive` — archiving a month
"""

from quantlab_pipeline.storage.catalog.archive import ArchiveReport, archive_month
from quantlab_pipeline.storage.catalog.connection import READ_TIMEOUT_S, WRITE_TIMEOUT_S
from quantlab_pipeline.storage.catalog.fingerprint import terminal_fingerprint
from quantlab_pipeline.storage.catalog.progress import SyncMark, read_mark
from quantlab_pipeline.storage.catalog.query import (
    CatalogStats,
    RunFilter,
    catalog_stats,
    get_artifact_path,
    query_artifacts,
    query_runs,
    rejected_runs,
    unverified_artifacts,
)
from quantlab_pipeline.storage.catalog.schema import (
    ARTIFACT_TYPES,
    CATALOG_SCHEMA_VERSION,
    CATALOG_STATUSES,
    PUBLIC_ARTIFACT_COLUMNS,
    PUBLIC_RUN_COLUMNS,
    Rejection,
    RunKey,
)
from quantlab_pipeline.storage.catalog.sync import LOCK_TIMEOUT_S, SyncReport, sync_catalog

__all__ = [
    "ARTIFACT_TYPES",
    "CATALOG_SCHEMA_VERSION",
    "CATALOG_STATUSES",
    "LOCK_TIMEOUT_S",
    "PUBLIC_ARTIFACT_COLUMNS",
    "PUBLIC_RUN_COLUMNS",
    "READ_TIMEOUT_S",
    "WRITE_TIMEOUT_S",
    "ArchiveReport",
    "CatalogStats",
    "Rejection",
    "RunFilter",
    "RunKey",
    "SyncMark",
    "SyncReport",
    "archive_month",
    "catalog_stats",
    "get_artifact_path",
    "query_artifacts",
    "query_runs",
    "read_mark",
    "rejected_runs",
    "sync_catalog",
    "terminal_fingerprint",
    "unverified_artifacts",
]
