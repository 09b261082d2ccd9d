"""`sync_catalog`: make the catalog equal the terminal run directories (README "Sync to catalog").

A reconciler, not an appender: completed runs (valid `_SUCCESS`) and failed runs are registered
or updated, anything no longer terminal or gone leaves the catalog, and invalid directories land
in `rejected_runs` with a reason. Three phases keep the database locked only briefly: read the
stored state, inspect the disk with the database closed, then apply every change in one
transaction — readers see the catalog before or after a sync, never half of one.

Paths are stored resolved (absolute), so a path read from the catalog works from any working
directory; timestamps are UTC `TIMESTAMP`s. Syncs are serialised by `<db>.lock`.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from filelock import FileLock, Timeout

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.storage.catalog.connection import Connect, session, transaction, writer
from quantlab_pipeline.storage.catalog.fingerprint import dir_fingerprint
from quantlab_pipeline.storage.catalog.query import CatalogStats, read_stats
from quantlab_pipeline.storage.catalog.schema import (
    ARTIFACT_COLUMNS,
    CATALOG_SCHEMA_VERSION,
    DDL,
    RUN_COLUMNS,
    Rejection,
    RunKey,
    arrow_table,
    check_schema_version,
    has_catalog_tables,
)
from quantlab_pipeline.storage.catalog.validation import REJECTING, Rows, read_terminal
from quantlab_pipeline.storage.faults import fault_point
from quantlab_pipeline.storage.layout import iter_run_dirs

LOCK_TIMEOUT_S = 600.0  # a sync waits this long for another sync (the file lock)


@dataclass
class SyncReport:
    """What one sync changed (registered/updated/removed) and what it found (skipped/rejected),
    with the catalog's statistics after it."""

    catalog_path: Path
    runs_dir: Path
    stats: CatalogStats
    initialized: bool = False
    registered: list[RunKey] = field(default_factory=list)
    updated: list[RunKey] = field(default_factory=list)
    removed: list[RunKey] = field(default_factory=list)
    skipped: list[RunKey] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    unchanged: int = 0


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


def _ensure_schema(conn: duckdb.DuckDBPyConnection, path: Path) -> bool:
    """Create the catalog tables on first use; True when this call created them."""
    if has_catalog_tables(conn):
        check_schema_version(conn, path)
        return False
    with transaction(conn, path):
        for ddl in DDL:
            conn.execute(ddl)
        conn.execute("INSERT INTO catalog_meta VALUES ('schema_version', ?)", [CATALOG_SCHEMA_VERSION])
    return True


def _load_state(
    conn: duckdb.DuckDBPyConnection,
) -> tuple[dict[RunKey, _StoredRun], dict[str, _StoredRejection]]:
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass
class _Plan:
    """The changes one sync will apply, decided with the database closed, and what it saw."""

    upserts: list[Rows] = field(default_factory=list)
    refresh: list[tuple[str, str, str]] = field(default_factory=list)  # (fingerprint, run_id, month)
    rejected: dict[str, tuple[str, str, dt.datetime]] = field(default_factory=dict)  # dir -> (reason, fp, seen_at)
    present: set[RunKey] = field(default_factory=set)
    registered: list[RunKey] = field(default_factory=list)
    updated: list[RunKey] = field(default_factory=list)
    skipped: list[RunKey] = field(default_factory=list)
    unchanged: int = 0


def _plan(
    runs_dir: Path,
    stored_runs: dict[RunKey, _StoredRun],
    stored_rejected: dict[str, _StoredRejection],
    verify: bool,
) -> _Plan:
    plan, now = _Plan(), _now()
    for month, run_id, run_dir in iter_run_dirs(runs_dir):
        key, fp, where = RunKey(run_id, month), dir_fingerprint(run_dir), str(run_dir)
        stored, old_rejection = stored_runs.get(key), stored_rejected.get(where)
        if not verify:
            if stored and stored.fingerprint == fp and stored.run_dir == where and _artifacts_intact(stored):
                plan.present.add(key)
                plan.unchanged += 1
                continue
            if old_rejection and old_rejection.fingerprint == fp:
                plan.rejected[where] = (old_rejection.reason, fp, old_rejection.seen_at)
                continue
        try:
            found = read_terminal(month, run_id, run_dir, verify)
        except (*REJECTING, OSError) as exc:
            if dir_fingerprint(run_dir) != fp:  # rewritten while read: the next sync decides
                plan.skipped.append(key)
                continue
            reason = str(exc) if isinstance(exc, REJECTING) else f"unreadable: {exc}"
            seen_at = now
            if old_rejection is not None and old_rejection.reason == reason:
                seen_at = old_rejection.seen_at  # the same rejection: keep when it was first seen
            plan.rejected[where] = (reason, fp, seen_at)
            continue
        if found is None:
            plan.skipped.append(key)
            continue
        row, artifact_rows = found
        plan.present.add(key)
        artifacts = tuple(sorted((a["artifact_type"], a["path"], a["bytes"]) for a in artifact_rows))
        same = (row["manifest_sha256"], where, artifacts)
        if stored and (stored.manifest_sha256, stored.run_dir, stored.artifacts) == same:
            plan.unchanged += 1  # same manifest, only its stat moved (e.g. touched)
            if stored.fingerprint != fp:
                plan.refresh.append((fp, run_id, month))
            continue
        row.update(fingerprint=fp, cataloged_at=stored.cataloged_at if stored else now, updated_at=now)
        for a in artifact_rows:
            a.update(run_id=run_id, month=month)
        plan.upserts.append((row, artifact_rows))
        (plan.updated if stored else plan.registered).append(key)
    return plan


def sync_catalog(
    catalog_path: str | Path,
    runs_dir: str | Path,
    *,
    verify: bool = False,
    connect: Connect | None = None,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> SyncReport:
    """Make the catalog equal the terminal run directories under `runs_dir`.

    Unchanged directories (same stat of run.json and _SUCCESS, artifacts at their sizes) cost a
    few stats. `verify=True` re-examines every directory from scratch, sha256 of artifacts
    included; a catalog this sync creates is always built that way, so deleting the catalog
    cannot re-admit a run that a `verify` sync rejected. A rejection sticks until the
    directory's run.json or _SUCCESS changes (or a `verify` sync).
    `connect` opens a read-write connection (Dagster passes `DuckDBResource.get_connection`).
    """
    path = Path(catalog_path)
    root = Path(runs_dir).resolve()
    if not root.is_dir():
        raise QuantlabError(f"runs directory {runs_dir} does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    connect = connect or partial(writer, path)
    lock = FileLock(f"{path}.lock", timeout=lock_timeout)
    try:
        lock.acquire()
    except Timeout:
        raise QuantlabError(f"catalog {path}: another sync holds {path}.lock for more than {lock_timeout:g}s") from None
    try:
        fault_point("catalog.sync")
        with session(connect) as conn:
            initialized = _ensure_schema(conn, path)
            stored_runs, stored_rejected = _load_state(conn)
            stats = read_stats(conn)
        plan = _plan(root, stored_runs, stored_rejected, verify or initialized)
        removed = sorted(k for k in stored_runs if k not in plan.present)
        rejected_changed = {
            d: v
            for d, v in plan.rejected.items()
            if d not in stored_rejected or (stored_rejected[d].reason, stored_rejected[d].fingerprint) != v[:2]
        }
        rejected_gone = [d for d in stored_rejected if d not in plan.rejected]
        if plan.upserts or plan.refresh or removed or rejected_changed or rejected_gone:
            with session(connect) as conn:
                with transaction(conn, path):
                    _apply(conn, plan.upserts, plan.refresh, removed, rejected_changed, rejected_gone)
                stats = read_stats(conn)
    finally:
        lock.release()
    return SyncReport(
        catalog_path=path,
        runs_dir=root,
        stats=stats,
        initialized=initialized,
        registered=plan.registered,
        updated=plan.updated,
        removed=removed,
        skipped=plan.skipped,
        rejected=[Rejection(d, r) for d, (r, _, _) in sorted(plan.rejected.items())],
        unchanged=plan.unchanged,
    )


def _apply(
    conn: duckdb.DuckDBPyConnection,
    upserts: list[Rows],
    refresh: list[tuple[str, str, str]],
    removed: list[RunKey],
    rejected_changed: dict[str, tuple[str, str, dt.datetime]],
    rejected_gone: list[str],
) -> None:
    """Every change of one sync, inside the caller's transaction (a run's rows are never half-written)."""
    gone_keys: list[dict[str, Any]] = [{"run_id": r["run_id"], "month": r["month"]} for r, _ in upserts]
    gone_keys += [{"run_id": k.run_id, "month": k.month} for k in removed]
    if gone_keys:
        keys = pa.schema([("run_id", pa.string()), ("month", pa.string())])
        conn.register("_gone", pa.Table.from_pylist(gone_keys, schema=keys))
        for name in ("artifacts", "runs"):
            conn.execute(f"DELETE FROM {name} USING _gone g WHERE {name}.run_id = g.run_id AND {name}.month = g.month")
        conn.unregister("_gone")
    if upserts:
        conn.register("_new_runs", arrow_table(RUN_COLUMNS, [r for r, _ in upserts]))
        conn.execute("INSERT INTO runs BY NAME SELECT * FROM _new_runs")
        conn.unregister("_new_runs")
        artifact_rows = [a for _, arts in upserts for a in arts]
        if artifact_rows:
            conn.register("_new_artifacts", arrow_table(ARTIFACT_COLUMNS, artifact_rows))
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
