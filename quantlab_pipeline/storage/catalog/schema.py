"""The catalog's tables: one column list per table drives the DDL, the Arrow schema of bulk
inserts and the public columns (docs/catalog.md "Catalog schema")."""

from __future__ import annotations

from typing import Any, NamedTuple

import duckdb
import polars as pl
import pyarrow as pa

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.storage.layout import ARTIFACT_PATHS, STEP_ARTIFACTS

# 2: timing_walkforward_ms; 3: the portfolio's figures and timing_portfolio_ms; 4: pbo, spa_pvalue
# (docs/catalog.md)
CATALOG_SCHEMA_VERSION = "4"
CATALOG_STATUSES: tuple[str, ...] = ("completed", "failed")  # the catalog holds terminal runs only
MANIFEST_STATUSES = ("running", "completed", "failed")
ARTIFACT_TYPES: tuple[str, ...] = tuple(ARTIFACT_PATHS)
# One timing per step: an artifact written along with its step's (the portfolio's curve and
# positions) has no time of its own.
_COMPANIONS = {a for step, written in STEP_ARTIFACTS.items() for a in written if a != step}
TIMING_STEPS: tuple[str, ...] = (*(a for a in ARTIFACT_PATHS if a != "errors" and a not in _COMPANIONS), "total")

Columns = tuple[tuple[str, str, pa.DataType], ...]
OVERFITTING_COLUMNS: tuple[str, ...] = ("pbo", "spa_pvalue")
OVERFITTING_FIGURES: Columns = tuple((name, "DOUBLE", pa.float64()) for name in OVERFITTING_COLUMNS)

# The window-to-date figures of `results/portfolio.parquet` (docs/portfolio.md), as `portfolio_<name>`
# columns of a policy run-month with a portfolio: the window's last month holds the whole window's.
# Listed here rather than imported from core.portfolio, which loads numba (a test keeps them equal).
PORTFOLIO_FIGURES: tuple[tuple[str, str, pa.DataType], ...] = (
    *((name, "DOUBLE", pa.float64()) for name in ("capital", "equity_end", "total_return", "max_drawdown")),
    *((name, "DOUBLE", pa.float64()) for name in ("sharpe", "sortino", "exposure")),
    *((name, "BIGINT", pa.int64()) for name in ("max_open_positions", "calls_taken")),
    *((name, "BIGINT", pa.int64()) for name in ("calls_skipped_cash", "calls_skipped_max_positions")),
)
PORTFOLIO_COLUMNS: Columns = tuple((f"portfolio_{name}", sql, typ) for name, sql, typ in PORTFOLIO_FIGURES)

RUN_COLUMNS: Columns = (
    ("run_id", "VARCHAR NOT NULL", pa.string()),
    ("month", "VARCHAR NOT NULL", pa.string()),
    ("run_type", "VARCHAR NOT NULL", pa.string()),
    ("status", "VARCHAR NOT NULL", pa.string()),
    ("created_at", "TIMESTAMP", pa.timestamp("us")),
    ("started_at", "TIMESTAMP", pa.timestamp("us")),
    ("completed_at", "TIMESTAMP", pa.timestamp("us")),
    ("policy_id", "VARCHAR", pa.string()),
    ("interval", "VARCHAR", pa.string()),
    ("window_from", "DATE", pa.date32()),
    ("window_to", "DATE", pa.date32()),
    ("calls_count", "BIGINT", pa.int64()),
    ("git_commit", "VARCHAR", pa.string()),
    ("git_branch", "VARCHAR", pa.string()),
    ("git_dirty", "BOOLEAN", pa.bool_()),
    ("quantlab_version", "VARCHAR", pa.string()),
    ("schema_version", "VARCHAR", pa.string()),
    ("artifacts_schema_version", "VARCHAR", pa.string()),
    ("spec_json", "VARCHAR", pa.string()),
    *((f"timing_{step}_ms", "BIGINT", pa.int64()) for step in TIMING_STEPS),
    ("error_message", "VARCHAR", pa.string()),
    ("error_phase", "VARCHAR", pa.string()),
    *PORTFOLIO_COLUMNS,
    # optimization runs: the month's PBO and SPA p-value (results/overfitting.parquet, docs/confidence.md)
    *OVERFITTING_FIGURES,
    ("run_dir", "VARCHAR NOT NULL", pa.string()),
    ("manifest_path", "VARCHAR NOT NULL", pa.string()),
    ("manifest_sha256", "VARCHAR NOT NULL", pa.string()),
    ("fingerprint", "VARCHAR NOT NULL", pa.string()),
    ("cataloged_at", "TIMESTAMP NOT NULL", pa.timestamp("us")),
    ("updated_at", "TIMESTAMP NOT NULL", pa.timestamp("us")),
)
ARTIFACT_COLUMNS: Columns = (
    ("run_id", "VARCHAR NOT NULL", pa.string()),
    ("month", "VARCHAR NOT NULL", pa.string()),
    ("artifact_type", "VARCHAR NOT NULL", pa.string()),
    ("path", "VARCHAR NOT NULL", pa.string()),
    ("rows", "BIGINT", pa.int64()),
    ("bytes", "BIGINT NOT NULL", pa.int64()),
    ("sha256", "VARCHAR NOT NULL", pa.string()),
)
REJECTED_COLUMNS: Columns = (
    ("run_dir", "VARCHAR NOT NULL", pa.string()),
    ("reason", "VARCHAR NOT NULL", pa.string()),
    ("seen_at", "TIMESTAMP NOT NULL", pa.timestamp("us")),
    ("fingerprint", "VARCHAR NOT NULL", pa.string()),
)
# `fingerprint` is bookkeeping (stat of run.json and _SUCCESS), not part of the public rows.
PUBLIC_RUN_COLUMNS: tuple[str, ...] = tuple(c for c, _, _ in RUN_COLUMNS if c != "fingerprint")
PUBLIC_ARTIFACT_COLUMNS: tuple[str, ...] = tuple(c for c, _, _ in ARTIFACT_COLUMNS)


def _ddl(table: str, columns: Columns, key: str) -> str:
    body = ", ".join(f'"{name}" {sql}' for name, sql, _ in columns)
    return f"CREATE TABLE {table} ({body}, PRIMARY KEY ({key}))"


DDL = (
    "CREATE TABLE catalog_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
    _ddl("runs", RUN_COLUMNS, "run_id, month"),
    _ddl("artifacts", ARTIFACT_COLUMNS, "run_id, month, artifact_type"),
    _ddl("rejected_runs", REJECTED_COLUMNS, "run_dir"),
)


class RunKey(NamedTuple):
    run_id: str
    month: str

    def __str__(self) -> str:
        return f"{self.month}/run_id={self.run_id}"


class Rejection(NamedTuple):
    run_dir: str
    reason: str


KEY_COLUMNS: Columns = (("run_id", "VARCHAR", pa.string()), ("month", "VARCHAR", pa.string()))

# The columns' types as Polars builds them. Rows become Arrow through Polars, not through pyarrow's
# conversion of Python objects, which imports pandas where it is installed: ~1 s that every
# catalog_sync_job run (a fresh process) paid before a sync of one new run (docs/catalog.md).
_POLARS_TYPES: dict[pa.DataType, pl.DataType] = {
    pa.string(): pl.String(),
    pa.int64(): pl.Int64(),
    pa.float64(): pl.Float64(),
    pa.bool_(): pl.Boolean(),
    pa.date32(): pl.Date(),
    pa.timestamp("us"): pl.Datetime("us"),
}


def arrow_table(columns: Columns, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as an Arrow table of the table's column types (a missing key is null), for one bulk
    `INSERT … BY NAME` or a join."""
    return pl.DataFrame(rows, schema={name: _POLARS_TYPES[typ] for name, _, typ in columns}).to_arrow()


def has_catalog_tables(conn: duckdb.DuckDBPyConnection) -> bool:
    names = conn.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_catalog = current_database()"
    ).fetchall()
    return "catalog_meta" in {n for (n,) in names}


def check_schema_version(conn: duckdb.DuckDBPyConnection, path: object) -> None:
    """Refuse a catalog written by another schema version: it is derived, so rebuilding is safe."""
    row = conn.execute("SELECT value FROM catalog_meta WHERE key = 'schema_version'").fetchone()
    found = row[0] if row else None
    if found != CATALOG_SCHEMA_VERSION:
        raise QuantlabError(
            f"catalog {path} has schema version {found!r}, this quantlab uses "
            f"{CATALOG_SCHEMA_VERSION!r}; the catalog is derived from the run directories: "
            "delete it and run `quantlab backtest catalog-sync`"
        )
