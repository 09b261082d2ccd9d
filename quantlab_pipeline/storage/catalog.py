"""The DuckDB catalog (DESIGN §9): an index of the terminal run directories, kept equal to disk.

`sync_catalog` is a reconciler, not an appender: completed runs (valid `_SUCCESS`) and failed runs
are registered or updated, anything no longer terminal or gone leaves the catalog, and invalid
directories land in `rejected_runs` with a reason. It works in three phases so the database is
locked only briefly: read the stored state, inspect the disk (no database open), then apply every
change in one transaction — readers see the catalog before or after a sync, never half of one.

Paths: `run_dir`, `manifest_path` and `artifacts.path` are stored **resolved (absolute)**, so a
path read from the catalog works from any working directory. Timestamps are stored as UTC
`TIMESTAMP`s and returned as timezone-aware UTC datetimes.

Concurrency: writers hold `<db>.lock` (a `filelock.FileLock`) for the whole sync; every DuckDB
open retries lock conflicts with bounded backoff and then fails with one line. Readers open the
database read-only.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa
from filelock import FileLock, Timeout

from quantlab_pipeline.core.errors import QuantlabError, SpecError
from quantlab_pipeline.core.spec import RUN_TYPES, validate_month, validate_run_id
from quantlab_pipeline.storage.atomic import atomic_write, sha256_bytes, sha256_file
from quantlab_pipeline.storage.layout import (
    ARTIFACT_PATHS,
    ARTIFACT_SCHEMA_VERSION,
    MANIFEST,
    REQUIRED_ARTIFACTS,
    SUCCESS_MARKER,
    SUPPORTED_MANIFEST_VERSIONS,
    iter_run_dirs,
)

CATALOG_SCHEMA_VERSION = "1"
CATALOG_STATUSES: tuple[str, ...] = ("completed", "failed")  # the catalog holds terminal runs only
MANIFEST_STATUSES = ("running", "completed", "failed")
ARTIFACT_TYPES: tuple[str, ...] = tuple(ARTIFACT_PATHS)
TIMING_STEPS: tuple[str, ...] = (*(a for a in ARTIFACT_PATHS if a != "errors"), "total")
OUTPUT_FORMATS = ("table", "json", "csv")

READ_TIMEOUT_S = 20.0  # a reader waits this long for a sync's write phase
WRITE_TIMEOUT_S = 120.0  # a writer waits this long for readers to let go of the file
LOCK_TIMEOUT_S = 600.0  # a sync waits this long for another sync (the file lock)

_LOCK_CONFLICTS = ("Could not set lock", "different configuration")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# -- schema ------------------------------------------------------------------------------------
# One list per table drives the DDL, the Arrow schema of bulk inserts and the public columns.

_RUN_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
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
    ("run_dir", "VARCHAR NOT NULL", pa.string()),
    ("manifest_path", "VARCHAR NOT NULL", pa.string()),
    ("manifest_sha256", "VARCHAR NOT NULL", pa.string()),
    ("fingerprint", "VARCHAR NOT NULL", pa.string()),
    ("cataloged_at", "TIMESTAMP NOT NULL", pa.timestamp("us")),
    ("updated_at", "TIMESTAMP NOT NULL", pa.timestamp("us")),
)
_ARTIFACT_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("run_id", "VARCHAR NOT NULL", pa.string()),
    ("month", "VARCHAR NOT NULL", pa.string()),
    ("artifact_type", "VARCHAR NOT NULL", pa.string()),
    ("path", "VARCHAR NOT NULL", pa.string()),
    ("rows", "BIGINT", pa.int64()),
    ("bytes", "BIGINT NOT NULL", pa.int64()),
    ("sha256", "VARCHAR NOT NULL", pa.string()),
)
_REJECTED_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("run_dir", "VARCHAR NOT NULL", pa.string()),
    ("reason", "VARCHAR NOT NULL", pa.string()),
    ("seen_at", "TIMESTAMP NOT NULL", pa.timestamp("us")),
    ("fingerprint", "VARCHAR NOT NULL", pa.string()),
)
# `fingerprint` is bookkeeping (stat of run.json and _SUCCESS), not part of the public rows.
PUBLIC_RUN_COLUMNS: tuple[str, ...] = tuple(c for c, _, _ in _RUN_COLUMNS if c != "fingerprint")
PUBLIC_ARTIFACT_COLUMNS: tuple[str, ...] = tuple(c for c, _, _ in _ARTIFACT_COLUMNS)


def _ddl(table: str, columns, key: str) -> str:
    body = ", ".join(f'"{name}" {sql}' for name, sql, _ in columns)
    return f"CREATE TABLE {table} ({body}, PRIMARY KEY ({key}))"


_DDL = (
    "CREATE TABLE catalog_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
    _ddl("runs", _RUN_COLUMNS, "run_id, month"),
    _ddl("artifacts", _ARTIFACT_COLUMNS, "run_id, month, artifact_type"),
    _ddl("rejected_runs", _REJECTED_COLUMNS, "run_dir"),
)


def _arrow(columns, rows: list[dict[str, Any]]) -> pa.Table:
    schema = pa.schema([(name, typ) for name, _, typ in columns])
    return pa.Table.from_pylist(rows, schema=schema)


# -- results -----------------------------------------------------------------------------------


class RunKey(NamedTuple):
    run_id: str
    month: str

    def __str__(self) -> str:
        return f"{self.month}/run_id={self.run_id}"


class Rejection(NamedTuple):
    run_dir: str
    reason: str


@dataclass(frozen=True)
class CatalogStats:
    total_runs: int
    runs_by_status: dict[str, int]  # every catalog status, zeros included
    runs_by_type: dict[str, int]  # run types present, in RUN_TYPES order
    total_artifacts: int
    artifacts_by_type: dict[str, int]  # artifact types present, in layout order


@dataclass
class SyncReport:
    """What one sync changed (registered/updated/removed) and what it found (skipped/rejected)."""

    catalog_path: Path
    runs_dir: Path
    initialized: bool = False
    registered: list[RunKey] = field(default_factory=list)
    updated: list[RunKey] = field(default_factory=list)
    removed: list[RunKey] = field(default_factory=list)
    skipped: list[RunKey] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    unchanged: int = 0
    stats: CatalogStats | None = None


@dataclass(frozen=True)
class ArchiveReport:
    archive: Path
    month: str
    run_dirs: list[str]
    files: int
    bytes: int
    sync: SyncReport


# -- opening the database ----------------------------------------------------------------------

Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


def _open(path: Path, *, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
    """Open the catalog, retrying (jittered exponential backoff) while another process holds it."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not any(marker in str(exc) for marker in _LOCK_CONFLICTS):
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise QuantlabError(f"catalog {path}: cannot open: {first}") from None
            if time.monotonic() + delay > deadline:
                raise QuantlabError(
                    f"catalog {path} is locked by another process (a catalog sync?) "
                    f"for more than {timeout:g}s; try again"
                ) from None
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.5)


@contextmanager
def _writer(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = _open(path, read_only=False, timeout=WRITE_TIMEOUT_S)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def _reader(catalog_path: str | Path, timeout: float) -> Iterator[duckdb.DuckDBPyConnection]:
    path = Path(catalog_path)
    if not path.is_file():
        raise QuantlabError(f"catalog {path} not found; run `quantlab backtest catalog-sync` first")
    conn = _open(path, read_only=True, timeout=timeout)
    try:
        if not _has_catalog_tables(conn):
            raise QuantlabError(f"catalog {path} has no catalog tables; run `quantlab backtest catalog-sync` first")
        _check_schema_version(conn, path)
        yield conn
    finally:
        conn.close()


def _has_catalog_tables(conn: duckdb.DuckDBPyConnection) -> bool:
    names = conn.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_catalog = current_database()"
    ).fetchall()
    return "catalog_meta" in {n for (n,) in names}


def _check_schema_version(conn: duckdb.DuckDBPyConnection, path: Path) -> None:
    row = conn.execute("SELECT value FROM catalog_meta WHERE key = 'schema_version'").fetchone()
    found = row[0] if row else None
    if found != CATALOG_SCHEMA_VERSION:
        raise QuantlabError(
            f"catalog {path} has schema version {found!r}, this quantlab uses "
            f"{CATALOG_SCHEMA_VERSION!r}; the catalog is derived from the run directories: "
            "delete it and run `quantlab backtest catalog-sync`"
        )


def _ensure_schema(conn: duckdb.DuckDBPyConnection, path: Path) -> bool:
    """Create the catalog tables on first use; True when this call created them."""
    if _has_catalog_tables(conn):
        _check_schema_version(conn, path)
        return False
    conn.execute("BEGIN TRANSACTION")
    for ddl in _DDL:
        conn.execute(ddl)
    conn.execute("INSERT INTO catalog_meta VALUES ('schema_version', ?)", [CATALOG_SCHEMA_VERSION])
    conn.execute("COMMIT")
    return True


# -- reading run directories -------------------------------------------------------------------


class _Invalid(Exception):
    """A run directory that must be rejected; the message is the one-line reason."""


def _read_json_file(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The exact bytes of a small JSON file (run.json, _SUCCESS) and its parsed object.

    The bytes are returned too: the marker's `manifest_sha256` is checked against the very bytes
    parsed. (Twin of `RunDirectory.read_manifest`, which returns the object only.)
    """
    data = path.read_bytes()
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise _Invalid(f"{path.name}: invalid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _Invalid(f"{path.name}: expected a JSON object")
    return data, obj


def _stat_token(path: Path) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "-"
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_size}"


def _dir_fingerprint(run_dir: Path) -> str:
    """Stat of run.json and _SUCCESS: both are replaced atomically, so any rewrite changes it."""
    return f"{_stat_token(run_dir / MANIFEST)}|{_stat_token(run_dir / SUCCESS_MARKER)}"


def _get(obj: dict[str, Any], key: str, types: type | tuple[type, ...], where: str, required: bool = False):
    value = obj.get(key)
    if value is None:
        if required:
            raise _Invalid(f"{where}: '{key}' is missing")
        return None
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _Invalid(f"{where}: '{key}' has type bool")
    if not isinstance(value, types):
        raise _Invalid(f"{where}: '{key}' has type {type(value).__name__}")
    return value


def _get_dict(obj: dict[str, Any], key: str, where: str, required: bool = False) -> dict[str, Any]:
    return _get(obj, key, dict, where, required) or {}


def _timestamp(obj: dict[str, Any], key: str, where: str, required: bool = False) -> dt.datetime | None:
    value = _get(obj, key, str, where, required)
    if value is None:
        return None
    try:
        ts = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _Invalid(f"{where}: '{key}' is not an ISO-8601 timestamp: {value!r}") from None
    if ts.tzinfo is not None:
        ts = ts.astimezone(dt.UTC).replace(tzinfo=None)
    return ts


def _date(obj: dict[str, Any], key: str, where: str) -> dt.date | None:
    value = _get(obj, key, str, where)
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _Invalid(f"{where}: '{key}' is not an ISO date: {value!r}") from None


def _manifest_row(manifest: dict[str, Any], month: str, run_id: str) -> dict[str, Any]:
    """The `runs` columns a manifest determines; `_Invalid` names the first bad field."""
    where = MANIFEST
    if manifest.get("run_id") != run_id:
        raise _Invalid(f"{where}: run_id {manifest.get('run_id')!r} does not match the directory")
    if manifest.get("month") != month:
        raise _Invalid(f"{where}: month {manifest.get('month')!r} does not match the directory")
    versions = _get_dict(manifest, "schema_version", where, required=True)
    if versions.get("manifest") not in SUPPORTED_MANIFEST_VERSIONS:
        raise _Invalid(
            f"{where}: schema_version.manifest {versions.get('manifest')!r} is not supported "
            f"(supported: {', '.join(sorted(SUPPORTED_MANIFEST_VERSIONS))})"
        )
    if versions.get("artifacts") != ARTIFACT_SCHEMA_VERSION:
        raise _Invalid(
            f"{where}: schema_version.artifacts {versions.get('artifacts')!r} is not supported "
            f"(supported: {ARTIFACT_SCHEMA_VERSION})"
        )
    run_type = manifest.get("run_type")
    if run_type not in RUN_TYPES:
        raise _Invalid(f"{where}: run_type {run_type!r} is not one of {', '.join(RUN_TYPES)}")
    status = manifest.get("status")
    if status not in MANIFEST_STATUSES:
        raise _Invalid(f"{where}: status {status!r} is not one of {', '.join(MANIFEST_STATUSES)}")
    spec = _get_dict(manifest, "spec", where, required=True)
    dataset = _get_dict(manifest, "dataset", where)
    provenance = _get_dict(manifest, "provenance", where) or _get_dict(spec, "provenance", f"{where}: spec")
    timing = _get_dict(manifest, "timing", where)
    error = _get_dict(manifest, "error", where)
    calls_count = _get(dataset, "calls_count", int, f"{where}: dataset")
    if calls_count is not None and calls_count < 0:
        raise _Invalid(f"{where}: dataset: 'calls_count' is negative")
    row = {
        "run_id": run_id,
        "month": month,
        "run_type": run_type,
        "status": status,
        "created_at": _timestamp(manifest, "created_at", where, required=True),
        "started_at": _timestamp(manifest, "started_at", where),
        "completed_at": _timestamp(manifest, "completed_at", where, required=status == "completed"),
        "policy_id": _get(spec, "policy_id", str, f"{where}: spec"),
        "interval": _get(dataset, "interval", str, f"{where}: dataset")
        or _get(spec, "interval", str, f"{where}: spec"),
        "window_from": _date(dataset, "from", f"{where}: dataset"),
        "window_to": _date(dataset, "to", f"{where}: dataset"),
        "calls_count": calls_count,
        "git_commit": _get(provenance, "git_commit", str, f"{where}: provenance"),
        "git_branch": _get(provenance, "git_branch", str, f"{where}: provenance"),
        "git_dirty": _get(provenance, "git_dirty", bool, f"{where}: provenance"),
        "quantlab_version": _get(provenance, "quantlab_version", str, f"{where}: provenance"),
        "schema_version": versions["manifest"],
        "artifacts_schema_version": versions["artifacts"],
        "spec_json": json.dumps(spec, sort_keys=True),
        "error_message": _get(error, "message", str, f"{where}: error"),
        "error_phase": _get(error, "phase", str, f"{where}: error"),
    }
    for step in TIMING_STEPS:
        value = _get(timing, f"{step}_ms", (int, float), f"{where}: timing")
        row[f"timing_{step}_ms"] = None if value is None else round(value)
    return row


def _checked_artifacts(manifest: dict[str, Any], run_dir: Path, run_type: str, verify: bool) -> list[dict[str, Any]]:
    """Every recorded artifact must exist inside the run directory at its recorded size
    (and, with `verify`, its recorded sha256); the run type's required ones must be recorded."""
    recorded = _get_dict(manifest, "artifacts", MANIFEST)
    missing = [a for a in REQUIRED_ARTIFACTS[run_type] if a not in recorded]
    if missing:
        raise _Invalid(f"{MANIFEST}: run_type {run_type} requires artifact(s) {', '.join(missing)}")
    base = run_dir.resolve()
    rows = []
    for name, entry in recorded.items():
        where = f"{MANIFEST}: artifacts.{name}"
        if name not in ARTIFACT_PATHS:
            raise _Invalid(f"{where}: unknown artifact type")
        if not isinstance(entry, dict):
            raise _Invalid(f"{where}: expected an object")
        rel = _get(entry, "path", str, where, required=True)
        size = _get(entry, "bytes", int, where, required=True)
        n_rows = _get(entry, "rows", int, where)
        sha = _get(entry, "sha256", str, where, required=True)
        if not _SHA256_RE.match(sha):
            raise _Invalid(f"{where}: 'sha256' is not a hex sha256")
        path = (base / rel).resolve()
        if Path(rel).is_absolute() or not path.is_relative_to(base):
            raise _Invalid(f"{where}: path {rel!r} is outside the run directory")
        try:
            on_disk = path.stat().st_size
        except FileNotFoundError:
            raise _Invalid(f"artifact {name}: {rel} is missing") from None
        if on_disk != size:
            raise _Invalid(f"artifact {name}: {rel} has {on_disk} bytes, run.json records {size}")
        if verify and sha256_file(path) != sha:
            raise _Invalid(f"artifact {name}: {rel} sha256 does not match run.json")
        rows.append({"artifact_type": name, "path": str(path), "rows": n_rows, "bytes": size, "sha256": sha})
    return rows


def _read_terminal(
    month: str, run_id: str, run_dir: Path, verify: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """`(runs row, artifact rows)` of a terminal directory, None when it is not terminal (skipped).

    Raises `_Invalid` with the reason when the directory must be rejected.
    """
    manifest_path, marker_path = run_dir / MANIFEST, run_dir / SUCCESS_MARKER
    try:
        _, marker = _read_json_file(marker_path)
    except FileNotFoundError:
        marker = None
    try:
        manifest_bytes, manifest = _read_json_file(manifest_path)
    except FileNotFoundError:
        if marker is None:
            return None  # a directory being created
        raise _Invalid(f"{SUCCESS_MARKER} present but {MANIFEST} is missing") from None
    if marker is None:
        status = manifest.get("status")
        if status in MANIFEST_STATUSES and status != "failed":
            return None  # running, or completed with the marker about to be written
        row = _manifest_row(manifest, month, run_id)
        artifacts: list[dict[str, Any]] = []  # a failed run is registered without artifacts
    else:
        for key, expected in (("run_id", run_id), ("month", month)):
            if marker.get(key) != expected:
                raise _Invalid(f"{SUCCESS_MARKER}: {key} {marker.get(key)!r} does not match the directory")
        if marker.get("manifest_sha256") != sha256_bytes(manifest_bytes):
            raise _Invalid(f"{SUCCESS_MARKER}: manifest_sha256 does not match {MANIFEST}")
        row = _manifest_row(manifest, month, run_id)
        if row["status"] != "completed":
            raise _Invalid(f"{MANIFEST}: status is {row['status']!r} but {SUCCESS_MARKER} is present")
        artifacts = _checked_artifacts(manifest, run_dir, row["run_type"], verify)
    row.update(
        run_dir=str(run_dir),
        manifest_path=str(manifest_path),
        manifest_sha256=sha256_bytes(manifest_bytes),
    )
    return row, artifacts


# -- sync --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StoredRun:
    run_dir: str
    status: str
    manifest_sha256: str
    fingerprint: str
    cataloged_at: dt.datetime
    artifacts: tuple[tuple[str, str, int], ...]  # (type, absolute path, bytes), sorted


@dataclass(frozen=True)
class _StoredRejection:
    reason: str
    fingerprint: str
    seen_at: dt.datetime


def _load_state(conn) -> tuple[dict[RunKey, _StoredRun], dict[str, _StoredRejection]]:
    artifacts: dict[RunKey, list[tuple[str, str, int]]] = {}
    for run_id, month, kind, path, size in conn.execute(
        "SELECT run_id, month, artifact_type, path, bytes FROM artifacts"
    ).fetchall():
        artifacts.setdefault(RunKey(run_id, month), []).append((kind, path, size))
    runs = {
        RunKey(run_id, month): _StoredRun(
            run_dir,
            status,
            sha,
            fingerprint,
            cataloged_at,
            tuple(sorted(artifacts.get(RunKey(run_id, month), ()))),
        )
        for run_id, month, run_dir, status, sha, fingerprint, cataloged_at in conn.execute(
            "SELECT run_id, month, run_dir, status, manifest_sha256, fingerprint, cataloged_at FROM runs"
        ).fetchall()
    }
    rejected = {
        run_dir: _StoredRejection(reason, fingerprint, seen_at)
        for run_dir, reason, fingerprint, seen_at in conn.execute(
            "SELECT run_dir, reason, fingerprint, seen_at FROM rejected_runs"
        ).fetchall()
    }
    return runs, rejected


def _artifacts_intact(stored: _StoredRun) -> bool:
    """A stat per artifact: still there at the size recorded when it was registered."""
    for _, path, size in stored.artifacts:
        try:
            if os.stat(path).st_size != size:
                return False
        except FileNotFoundError:
            return False
    return True


def _stats(conn) -> CatalogStats:
    by_status = dict.fromkeys(CATALOG_STATUSES, 0)
    by_status.update(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    types = dict(conn.execute("SELECT run_type, count(*) FROM runs GROUP BY run_type").fetchall())
    kinds = dict(conn.execute("SELECT artifact_type, count(*) FROM artifacts GROUP BY artifact_type").fetchall())
    return CatalogStats(
        total_runs=sum(by_status.values()),
        runs_by_status=by_status,
        runs_by_type={t: types[t] for t in RUN_TYPES if t in types},
        total_artifacts=sum(kinds.values()),
        artifacts_by_type={k: kinds[k] for k in ARTIFACT_TYPES if k in kinds},
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@contextmanager
def _session(connect: Connect) -> Iterator[duckdb.DuckDBPyConnection]:
    with connect() as conn:
        try:
            yield conn
        finally:
            conn.close()  # `DuckDBResource.get_connection` does not close when the body raises


@dataclass
class _Plan:
    """The changes one sync will apply, decided with the database closed."""

    upserts: list[tuple[dict[str, Any], list[dict[str, Any]]]] = field(default_factory=list)
    refresh: list[tuple[str, str, str]] = field(default_factory=list)  # (fingerprint, run_id, month)
    rejected: dict[str, tuple[str, str, dt.datetime]] = field(default_factory=dict)  # dir -> (reason, fp, seen_at)
    present: set[RunKey] = field(default_factory=set)


def _plan(
    report: SyncReport,
    stored_runs: dict[RunKey, _StoredRun],
    stored_rejected: dict[str, _StoredRejection],
    verify: bool,
) -> _Plan:
    plan, now = _Plan(), _now()
    for month, run_id, run_dir in iter_run_dirs(report.runs_dir):
        key, fp, where = RunKey(run_id, month), _dir_fingerprint(run_dir), str(run_dir)
        stored, old_rejection = stored_runs.get(key), stored_rejected.get(where)
        if not verify:
            if stored and stored.fingerprint == fp and stored.run_dir == where and _artifacts_intact(stored):
                plan.present.add(key)
                report.unchanged += 1
                continue
            if old_rejection and old_rejection.fingerprint == fp:
                plan.rejected[where] = (old_rejection.reason, fp, old_rejection.seen_at)
                continue
        try:
            found = _read_terminal(month, run_id, run_dir, verify)
        except (_Invalid, OSError) as exc:
            if _dir_fingerprint(run_dir) != fp:  # rewritten while read: the next sync decides
                report.skipped.append(key)
                continue
            reason = str(exc) if isinstance(exc, _Invalid) else f"unreadable: {exc}"
            keep = old_rejection is not None and old_rejection.reason == reason
            plan.rejected[where] = (reason, fp, old_rejection.seen_at if keep else now)
            continue
        if found is None:
            report.skipped.append(key)
            continue
        row, artifact_rows = found
        plan.present.add(key)
        artifacts = tuple(sorted((a["artifact_type"], a["path"], a["bytes"]) for a in artifact_rows))
        same = (row["manifest_sha256"], where, artifacts)
        if stored and (stored.manifest_sha256, stored.run_dir, stored.artifacts) == same:
            report.unchanged += 1  # same manifest, only its stat moved (e.g. touched)
            if stored.fingerprint != fp:
                plan.refresh.append((fp, run_id, month))
            continue
        row.update(fingerprint=fp, cataloged_at=stored.cataloged_at if stored else now, updated_at=now)
        for a in artifact_rows:
            a.update(run_id=run_id, month=month)
        plan.upserts.append((row, artifact_rows))
        (report.updated if stored else report.registered).append(key)
    report.removed = sorted(k for k in stored_runs if k not in plan.present)
    report.rejected = [Rejection(d, r) for d, (r, _, _) in sorted(plan.rejected.items())]
    return plan


def sync_catalog(
    catalog_path: str | Path,
    runs_dir: str | Path,
    *,
    verify: bool = False,
    connect: Connect | None = None,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> SyncReport:
    """Make the catalog equal the terminal run directories under `runs_dir` (DESIGN §9).

    Unchanged directories (same stat of run.json and _SUCCESS, artifacts at their sizes) cost a
    few stats. `verify=True` re-examines every directory from scratch, sha256 of artifacts
    included. A rejection sticks until the directory's run.json or _SUCCESS changes (or a
    `verify` sync), so a run rejected by `--verify` is not re-registered by a cheaper sync.
    `connect` opens a read-write connection (Dagster passes `DuckDBResource.get_connection`).
    """
    path = Path(catalog_path)
    root = Path(runs_dir).resolve()
    if not root.is_dir():
        raise QuantlabError(f"runs directory {runs_dir} does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    connect = connect or partial(_writer, path)
    report = SyncReport(catalog_path=path, runs_dir=root)
    lock = FileLock(f"{path}.lock", timeout=lock_timeout)
    try:
        lock.acquire()
    except Timeout:
        raise QuantlabError(f"catalog {path}: another sync holds {path}.lock for more than {lock_timeout:g}s") from None
    try:
        with _session(connect) as conn:
            report.initialized = _ensure_schema(conn, path)
            stored_runs, stored_rejected = _load_state(conn)
            report.stats = _stats(conn)
        plan = _plan(report, stored_runs, stored_rejected, verify)
        rejected_changed = {
            d: v
            for d, v in plan.rejected.items()
            if d not in stored_rejected or (stored_rejected[d].reason, stored_rejected[d].fingerprint) != v[:2]
        }
        rejected_gone = [d for d in stored_rejected if d not in plan.rejected]
        if plan.upserts or plan.refresh or report.removed or rejected_changed or rejected_gone:
            with _session(connect) as conn:
                _apply(conn, plan.upserts, plan.refresh, report.removed, rejected_changed, rejected_gone)
                report.stats = _stats(conn)
    finally:
        lock.release()
    return report


def _apply(conn, upserts, refresh, removed, rejected_changed, rejected_gone) -> None:
    """Every change of one sync in one transaction (a run's rows are never half-written)."""
    gone_keys = [{"run_id": r["run_id"], "month": r["month"]} for r, _ in upserts]
    gone_keys += [{"run_id": k.run_id, "month": k.month} for k in removed]
    conn.execute("BEGIN TRANSACTION")
    try:
        if gone_keys:
            keys = pa.schema([("run_id", pa.string()), ("month", pa.string())])
            conn.register("_gone", pa.Table.from_pylist(gone_keys, schema=keys))
            for name in ("artifacts", "runs"):
                conn.execute(
                    f"DELETE FROM {name} USING _gone g WHERE {name}.run_id = g.run_id AND {name}.month = g.month"
                )
            conn.unregister("_gone")
        if upserts:
            conn.register("_new_runs", _arrow(_RUN_COLUMNS, [r for r, _ in upserts]))
            conn.execute("INSERT INTO runs BY NAME SELECT * FROM _new_runs")
            conn.unregister("_new_runs")
            artifact_rows = [a for _, arts in upserts for a in arts]
            if artifact_rows:
                conn.register("_new_artifacts", _arrow(_ARTIFACT_COLUMNS, artifact_rows))
                conn.execute("INSERT INTO artifacts BY NAME SELECT * FROM _new_artifacts")
                conn.unregister("_new_artifacts")
        if refresh:
            conn.executemany("UPDATE runs SET fingerprint = ? WHERE run_id = ? AND month = ?", refresh)
        for run_dir in [*rejected_gone, *rejected_changed]:
            conn.execute("DELETE FROM rejected_runs WHERE run_dir = ?", [run_dir])
        if rejected_changed:
            conn.executemany(
                "INSERT INTO rejected_runs (run_dir, reason, fingerprint, seen_at) VALUES (?, ?, ?, ?)",
                [(d, reason, fp, seen) for d, (reason, fp, seen) in rejected_changed.items()],
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# -- the sensor's view ---------------------------------------------------------------------------


def terminal_fingerprint(runs_dir: str | Path) -> tuple[str, int]:
    """`(digest, count)` of the terminal run directories, for the sensor: no hashing of
    artifacts, no catalog access. A directory counts when it has `_SUCCESS`, or a run.json that
    says `failed` (or that is unreadable: the sync rejects it); its entry is the stat of both
    files, so a new, rewritten, unmarked or removed run changes the digest."""
    digest, count = hashlib.sha256(), 0
    for month, run_id, run_dir in iter_run_dirs(runs_dir):
        if (run_dir / SUCCESS_MARKER).exists():
            state = "marked"
        else:
            try:
                state = _read_json_file(run_dir / MANIFEST)[1].get("status")
            except FileNotFoundError:
                continue
            except (_Invalid, OSError):
                state = "invalid"
            if state in MANIFEST_STATUSES and state != "failed":
                continue
        digest.update(f"{month}/{run_id}:{state}:{_dir_fingerprint(run_dir)}\n".encode())
        count += 1
    return digest.hexdigest(), count


# -- queries -------------------------------------------------------------------------------------


def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise SpecError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _parse_date(value: str | dt.date, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        raise SpecError(f"{name}: expected a date YYYY-MM-DD, got a datetime")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and _DATE_RE.match(value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise SpecError(f"{name}: expected a date YYYY-MM-DD, got {value!r}")


def _limit_clause(limit: int | None) -> tuple[str, list[int]]:
    """`LIMIT ?` for a positive integer; None means no limit."""
    if limit is None:
        return "", []
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise SpecError(f"limit: expected a positive integer, got {limit!r}")
    return " LIMIT ?", [limit]


def _run_filters(
    run_type=None,
    status=None,
    from_date=None,
    to_date=None,
    month=None,
    policy_id=None,
    git_branch=None,
    run_id=None,
) -> tuple[str, list[Any]]:
    """A WHERE clause over `runs r` with every value bound; validation errors name the filter."""
    clauses: list[str] = []
    params: list[Any] = []
    if run_type is not None:
        clauses.append("r.run_type = ?")
        params.append(_choice(run_type, RUN_TYPES, "run_type"))
    if status is not None:
        clauses.append("r.status = ?")
        params.append(_choice(status, CATALOG_STATUSES, "status"))
    lo = _parse_date(from_date, "from_date") if from_date is not None else None
    hi = _parse_date(to_date, "to_date") if to_date is not None else None
    if lo and hi and hi < lo:
        raise SpecError(f"to_date {hi} is before from_date {lo}")
    if lo is not None:
        clauses.append("r.created_at >= ?")
        params.append(dt.datetime.combine(lo, dt.time()))
    if hi is not None:  # inclusive: everything before the next midnight
        clauses.append("r.created_at < ?")
        params.append(dt.datetime.combine(hi + dt.timedelta(days=1), dt.time()))
    if month is not None:
        clauses.append("r.month = ?")
        params.append(validate_month(month))
    if policy_id is not None:
        clauses.append("r.policy_id = ?")
        params.append(str(policy_id))
    if git_branch is not None:
        clauses.append("r.git_branch = ?")
        params.append(str(git_branch))
    if run_id is not None:
        clauses.append("r.run_id = ?")
        params.append(validate_run_id(run_id))
    return (" AND ".join(clauses) or "TRUE"), params


_NEWEST_FIRST = "ORDER BY r.created_at DESC NULLS LAST, r.run_id, r.month"


def _rows(cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    out = []
    for values in cursor.fetchall():
        row = dict(zip(names, values))
        for key, value in row.items():
            if isinstance(value, dt.datetime):
                row[key] = value.replace(tzinfo=dt.UTC)
        out.append(row)
    return out


def query_runs(
    catalog_path: str | Path,
    run_type: str | None = None,
    status: str | None = None,
    from_date: str | dt.date | None = None,
    to_date: str | dt.date | None = None,
    month: str | None = None,
    policy_id: str | None = None,
    git_branch: str | None = None,
    run_id: str | None = None,
    limit: int | None = 10,
    *,
    timeout: float = READ_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Catalog runs, newest `created_at` first (`limit=None`: all). `from_date`/`to_date` are
    inclusive UTC dates on `created_at`; `month` is the data month. Safe while a sync is writing
    (read-only + retry)."""
    where, params = _run_filters(run_type, status, from_date, to_date, month, policy_id, git_branch, run_id)
    limit_sql, limit_params = _limit_clause(limit)
    columns = ", ".join(f'r."{c}"' for c in PUBLIC_RUN_COLUMNS)
    sql = f"SELECT {columns} FROM runs r WHERE {where} {_NEWEST_FIRST}{limit_sql}"
    with _reader(catalog_path, timeout) as conn:
        return _rows(conn.execute(sql, [*params, *limit_params]))


def query_artifacts(
    catalog_path: str | Path,
    artifact_type: str,
    run_type: str | None = None,
    status: str | None = None,
    from_date: str | dt.date | None = None,
    to_date: str | dt.date | None = None,
    month: str | None = None,
    policy_id: str | None = None,
    git_branch: str | None = None,
    run_id: str | None = None,
    limit: int | None = 10,
    *,
    timeout: float = READ_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Artifacts of one type of the runs matching the same filters as `query_runs` (same order),
    e.g. every completed policy run's trades file for `read_parquet([...])`."""
    kind = _choice(artifact_type, ARTIFACT_TYPES, "artifact_type")
    where, params = _run_filters(run_type, status, from_date, to_date, month, policy_id, git_branch, run_id)
    limit_sql, limit_params = _limit_clause(limit)
    columns = ", ".join(f'a."{c}"' for c in PUBLIC_ARTIFACT_COLUMNS)
    sql = (
        f"SELECT {columns} FROM artifacts a JOIN runs r USING (run_id, month) "
        f"WHERE a.artifact_type = ? AND {where} {_NEWEST_FIRST}{limit_sql}"
    )
    with _reader(catalog_path, timeout) as conn:
        return _rows(conn.execute(sql, [kind, *params, *limit_params]))


def get_artifact_path(
    catalog_path: str | Path,
    run_id: str,
    artifact_type: str,
    month: str | None = None,
    *,
    timeout: float = READ_TIMEOUT_S,
) -> str | list[str] | None:
    """Absolute path of a run's artifact. With `month`: that month's path or None. Without: the
    path string when one month of the run has it, a list ordered by month when several do, None
    when none (a run spanning months has one directory per month)."""
    params: list[Any] = [validate_run_id(run_id), _choice(artifact_type, ARTIFACT_TYPES, "artifact_type")]
    sql = "SELECT path FROM artifacts WHERE run_id = ? AND artifact_type = ?"
    if month is not None:
        sql += " AND month = ?"
        params.append(validate_month(month))
    with _reader(catalog_path, timeout) as conn:
        paths = [p for (p,) in conn.execute(sql + " ORDER BY month", params).fetchall()]
    if not paths:
        return None
    return paths[0] if len(paths) == 1 else paths


def rejected_runs(catalog_path: str | Path, *, timeout: float = READ_TIMEOUT_S) -> list[Rejection]:
    with _reader(catalog_path, timeout) as conn:
        rows = conn.execute("SELECT run_dir, reason FROM rejected_runs ORDER BY run_dir").fetchall()
    return [Rejection(d, r) for d, r in rows]


def catalog_stats(catalog_path: str | Path, *, timeout: float = READ_TIMEOUT_S) -> CatalogStats:
    with _reader(catalog_path, timeout) as conn:
        return _stats(conn)


# -- archive -------------------------------------------------------------------------------------


class _Entry(NamedTuple):
    path: Path
    name: str  # the archive member name, `YYYY-MM/...`
    size: int | None  # None: not a regular file
    mtime_ns: int


def _tree(month_dir: Path, month: str) -> list[_Entry]:
    """Everything under a month directory, in archive order."""

    def entry(path: Path, name: str) -> _Entry:
        st = path.lstat()
        return _Entry(path, name, st.st_size if stat.S_ISREG(st.st_mode) else None, st.st_mtime_ns)

    entries = [entry(month_dir, month)]
    for dirpath, dirnames, filenames in os.walk(month_dir):
        dirnames.sort()
        base = Path(dirpath)
        for name in [*dirnames, *sorted(filenames)]:
            entries.append(entry(base / name, f"{month}/{(base / name).relative_to(month_dir)}"))
    return entries


def _verify_archive(archive: Path, expected: list[_Entry]) -> None:
    """Re-open the archive: same members, same sizes, every byte readable (gzip CRC checked)."""
    found: list[tuple[str, int | None]] = []
    with gzip.open(archive, "rb") as gz:
        with tarfile.open(fileobj=gz, mode="r|") as tar:
            for member in tar:
                size = None
                if member.isfile():
                    stream, size = tar.extractfile(member), 0
                    while chunk := stream.read(1 << 20):
                        size += len(chunk)
                found.append((member.name, size))
        while gz.read(1 << 20):  # to the gzip trailer, so its CRC and length are checked
            pass
    want = [(e.name, e.size) for e in expected]
    if found != want:
        first = next((w for w, f in zip(want, found) if w != f), (want + found)[min(len(want), len(found))])
        raise QuantlabError(
            f"archive {archive} failed verification ({len(found)} members, expected {len(want)}; "
            f"first difference at {first[0]}); nothing was removed"
        )


def archive_month(
    runs_dir: str | Path,
    month: str,
    dest: str | Path,
    catalog_path: str | Path,
    *,
    connect: Connect | None = None,
) -> ArchiveReport:
    """Archive `runs/<month>/` to `dest` (.tar.gz, members `YYYY-MM/run_id=…/…`; restore with
    `tar -xzf dest -C runs`), verify it, remove the month's directories, reconcile the catalog.

    Refuses to overwrite `dest`; removes nothing unless the archive verified and the month did
    not change while it was written.
    """
    month = validate_month(month)
    root = Path(runs_dir)
    month_dir = root / month
    run_dirs = [p.name for m, _, p in iter_run_dirs(root) if m == month]
    if not run_dirs:
        raise QuantlabError(f"no run directories for {month} under {root}")
    dest = Path(dest)
    if dest.exists():
        raise QuantlabError(f"archive {dest} already exists; refusing to overwrite it")
    if dest.resolve().is_relative_to(month_dir.resolve()):
        raise QuantlabError(f"archive {dest} is inside {month_dir}, which it is about to remove")
    entries = _tree(month_dir, month)

    def write(fh) -> None:
        with tarfile.open(fileobj=fh, mode="w:gz") as tar:
            for e in entries:
                tar.add(e.path, arcname=e.name, recursive=False)

    atomic_write(dest, write)
    try:
        _verify_archive(dest, entries)
    except (QuantlabError, OSError, tarfile.TarError, EOFError) as exc:
        dest.unlink(missing_ok=True)
        if isinstance(exc, QuantlabError):
            raise
        raise QuantlabError(f"archive {dest} failed verification ({exc}); nothing was removed") from None
    if _tree(month_dir, month) != entries:
        raise QuantlabError(f"{month_dir} changed while it was archived; {dest} is kept but nothing was removed")
    shutil.rmtree(month_dir)
    files = [e.size for e in entries if e.size is not None]
    return ArchiveReport(
        archive=dest,
        month=month,
        run_dirs=run_dirs,
        files=len(files),
        bytes=sum(files),
        sync=sync_catalog(catalog_path, root, connect=connect),
    )
