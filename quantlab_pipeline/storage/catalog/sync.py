"""`sync_catalog`: make the catalog equal the terminal run directories (docs/catalog.md).

A reconciler, not an appender: completed runs (valid `_SUCCESS`) and failed runs are registered
or updated, anything no longer terminal or gone leaves the catalog, and invalid directories land
in `rejected_runs` with a reason. Three phases keep the database locked only briefly: read the
stored state, inspect the disk with the database closed, then apply every change in one
transaction — readers see the catalog before or after a sync, never half of one.

What a sync inspects: incrementally, only the directories the completion journal
(storage/journal.py) names since the position the catalog applied last — a sync then costs what
changed, not what exists; fully, every directory, when asked (`full`, `verify`), for a new catalog,
or when there is no journal or the stored position is no longer in it. Each directory inspected
is validated the same way in both. The position is stored with the rows it accounts for, and
never past a line whose change may still be in progress (its run lock held).

Paths are stored resolved (absolute), so a path read from the catalog works from any working
directory; timestamps are UTC `TIMESTAMP`s. Syncs are serialised by `<db>.lock`.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
from filelock import FileLock, Timeout

from quantlab_pipeline.core.errors import EnvironmentFault, QuantlabError
from quantlab_pipeline.storage.catalog import progress
from quantlab_pipeline.storage.catalog.connection import Connect, session, transaction, writer
from quantlab_pipeline.storage.catalog.fingerprint import dir_fingerprint, entry_hash, hex_digest
from quantlab_pipeline.storage.catalog.query import CatalogStats, read_stats
from quantlab_pipeline.storage.catalog.schema import (
    ARTIFACT_COLUMNS,
    CATALOG_SCHEMA_VERSION,
    DDL,
    KEY_COLUMNS,
    RUN_COLUMNS,
    Rejection,
    RunKey,
    arrow_table,
    check_schema_version,
    has_catalog_tables,
)
from quantlab_pipeline.storage.catalog.validation import REJECTING, Rows, read_terminal
from quantlab_pipeline.storage.faults import fault_point
from quantlab_pipeline.storage.journal import Batch, Journal, Position
from quantlab_pipeline.storage.layout import iter_run_dirs, lock_path, month_lock_path, run_dir_path
from quantlab_pipeline.storage.writer import MonthLock, RunLock

LOCK_TIMEOUT_S = 600.0  # a sync waits this long for another sync (the file lock)
FLUX_WAIT_S = 10.0  # a full sync waits this long, in all, for writes in progress to end


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
    full: bool = True  # every directory inspected (else only those the journal named)
    position: Position | None = None  # the journal position applied (None: the next sync is full)


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
    conn: duckdb.DuckDBPyConnection, keys: list[RunKey] | None = None, root: Path | None = None
) -> tuple[dict[RunKey, _StoredRun], dict[str, _StoredRejection]]:
    """The stored rows: all of them, or only those of `keys` (directories under `root`)."""
    where, rejected_where, params = "", "", []
    if keys is not None:
        conn.register("_keys", arrow_table(KEY_COLUMNS, [k._asdict() for k in keys]))
        where = " JOIN _keys USING (run_id, month)"
        rejected_where = " WHERE run_dir IN (SELECT unnest(?))"
        params = [[str(run_dir_path(root or Path(), k.month, k.run_id)) for k in keys]]
    artifacts: dict[RunKey, list[tuple[str, str, int]]] = {}
    for run_id, month, kind, path, size in conn.execute(
        f"SELECT run_id, month, artifact_type, path, bytes FROM artifacts{where}"
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
            f"SELECT run_id, month, run_dir, status, manifest_sha256, fingerprint, cataloged_at FROM runs{where}"
        ).fetchall()
    }
    rejected = {
        run_dir: _StoredRejection(reason, fingerprint, seen_at)
        for run_dir, reason, fingerprint, seen_at in conn.execute(
            f"SELECT run_dir, reason, fingerprint, seen_at FROM rejected_runs{rejected_where}", params
        ).fetchall()
    }
    if keys is not None:
        conn.unregister("_keys")
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
    in_flux: list[RunKey] = field(default_factory=list)  # still being changed when inspected


def _in_flux(root: Path, key: RunKey) -> bool:
    """Whether a change of the directory may be in progress: its writer holds the run lock, or an
    archive holds the month's. Checked *before* the directory is read (storage/journal.py)."""
    return (
        RunLock(lock_path(root, key.month, key.run_id)).held_elsewhere()
        or MonthLock(month_lock_path(root, key.month)).held_exclusively()
    )


def _plan(
    root: Path,
    dirs: Iterable[tuple[str, str, Path]],
    stored_runs: dict[RunKey, _StoredRun],
    stored_rejected: dict[str, _StoredRejection],
    verify: bool,
    wait_s: float | None,
) -> _Plan:
    """Inspect `dirs`. With `wait_s`, a directory being changed is waited for (up to `wait_s` in
    all) before it is read, and listed in `in_flux` if that was not long enough."""
    plan, now = _Plan(), _now()
    deadline = time.monotonic() + (wait_s or 0.0)
    for month, run_id, run_dir in dirs:
        key = RunKey(run_id, month)
        while wait_s is not None and _in_flux(root, key):
            if time.monotonic() >= deadline:
                plan.in_flux.append(key)
                break
            time.sleep(0.05)
        fp, where = dir_fingerprint(run_dir), str(run_dir)
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


def _open_lock(path: Path, timeout: float) -> FileLock:
    """The sync's file lock, held; a catalog folder that cannot hold it is one line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{path}.lock", timeout=timeout)
        lock.acquire()
    except Timeout:
        raise QuantlabError(f"catalog {path}: another sync holds {path}.lock for more than {timeout:g}s") from None
    except (NotADirectoryError, FileExistsError):
        raise QuantlabError(f"catalog {path}: a parent of it is not a directory") from None
    except OSError as exc:
        raise EnvironmentFault(f"catalog {path}: cannot lock {path}.lock: {exc.strerror or exc}") from None
    return lock


def sync_catalog(
    catalog_path: str | Path,
    runs_dir: str | Path,
    *,
    verify: bool = False,
    full: bool = False,
    connect: Connect | None = None,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> SyncReport:
    """Make the catalog equal the terminal run directories under `runs_dir`.

    Incremental unless `full`, `verify`, a new catalog or a journal that cannot say what changed
    (module docstring). Unchanged directories (same stat of run.json and _SUCCESS, artifacts at
    their sizes) cost a few stats. `verify=True` re-examines every directory from scratch, sha256
    of artifacts included; a catalog this sync creates is always built that way, so deleting the
    catalog cannot re-admit a run that a `verify` sync rejected. A rejection sticks until the
    directory's run.json or _SUCCESS changes (or a `verify` sync).
    `connect` opens a read-write connection (default: `connection.writer`, bounded retries).
    """
    path, runs = Path(catalog_path), Path(runs_dir)  # the Python API (docs/catalog.md) passes strings too
    if not runs.exists():
        raise QuantlabError(f"runs directory {runs} does not exist")
    if not runs.is_dir():
        raise QuantlabError(f"runs directory {runs} is not a directory")
    root = runs.resolve()
    connect = connect or partial(writer, path)
    journal = Journal(root)
    lock = _open_lock(path, lock_timeout)
    try:
        fault_point("catalog.sync")
        with session(connect) as conn:
            initialized = _ensure_schema(conn, path)
            since = progress.stored_position(conn, root)
            batch = None if (full or verify or initialized or since is None) else journal.read(since)
            digest = progress.stored_digest(conn)
            if batch is not None:  # a few directories: inspected and applied in this one session
                keys = list(dict.fromkeys(RunKey(e.run_id, e.month) for e in batch.entries))
                stored = _load_state(conn, keys, root)
                plan, removed, settled = _plan_batch(root, batch, *stored)
                position: Position | None = settled
                changes = _Changes(plan, removed, *stored)
                digest = _save(conn, path, root, changes, since, position, digest)
            else:
                start = journal.end()  # before the disk is read: later changes are announced after it
                stored = _load_state(conn)
            stats = read_stats(conn)
        if batch is None:  # every directory: inspected with the catalog closed
            plan = _plan(root, iter_run_dirs(root), *stored, verify or initialized, FLUX_WAIT_S)
            removed = sorted(k for k in stored[0] if k not in plan.present)
            position = start if not plan.in_flux else None
            changes = _Changes(plan, removed, *stored)
            if changes.any or position != since or not digest[1]:
                with session(connect) as conn:
                    digest = _save(conn, path, root, changes, since, position, digest)
                    stats = read_stats(conn)
        if position is not None:
            journal.drop_before(position)
        mark = progress.SyncMark(position, hex_digest(digest[0]))
        if progress.read_mark(path) != mark:
            progress.write_mark(path, mark)
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
        full=batch is None,
        position=position,
    )


def _plan_batch(
    root: Path, batch: Batch, stored_runs: dict[RunKey, _StoredRun], stored_rejected: dict[str, _StoredRejection]
) -> tuple[_Plan, list[RunKey], Position]:
    """Inspect the directories the journal named; the position to store stops at the first line
    of a directory still being changed, so the next sync reads it again."""
    keys = list(dict.fromkeys(RunKey(e.run_id, e.month) for e in batch.entries))
    in_flux = {k for k in keys if _in_flux(root, k)}  # before anything is read
    dirs = [(k.month, k.run_id, d) for k in keys if (d := run_dir_path(root, k.month, k.run_id)).is_dir()]
    plan = _plan(root, dirs, stored_runs, stored_rejected, verify=False, wait_s=None)
    plan.in_flux = sorted(in_flux)
    removed = sorted(k for k in keys if k in stored_runs and k not in plan.present)
    first = next((e.position for e in batch.entries if RunKey(e.run_id, e.month) in in_flux), batch.end)
    return plan, removed, first


class _Changes:
    """What one sync changes, given the plan and the stored rows it was made against."""

    def __init__(
        self,
        plan: _Plan,
        removed: list[RunKey],
        stored_runs: dict[RunKey, _StoredRun],
        stored_rejected: dict[str, _StoredRejection],
    ):
        self.plan, self.removed = plan, removed
        self.stored_runs, self.stored_rejected = stored_runs, stored_rejected
        self.rejected_changed = {
            d: v
            for d, v in plan.rejected.items()
            if d not in stored_rejected or (stored_rejected[d].reason, stored_rejected[d].fingerprint) != v[:2]
        }
        self.rejected_gone = [d for d in stored_rejected if d not in plan.rejected]
        self.any = bool(plan.upserts or plan.refresh or removed or self.rejected_changed or self.rejected_gone)

    def digest_after(self, digest: int) -> int:
        """The catalog's digest (storage/catalog/fingerprint.py) after these changes: each changed
        entry's old share taken out, its new one put in."""
        stored_runs, stored_rejected = self.stored_runs, self.stored_rejected
        for row, _ in self.plan.upserts:
            key = RunKey(row["run_id"], row["month"])
            if key in stored_runs:
                digest ^= entry_hash(key.month, key.run_id, stored_runs[key].fingerprint)
            digest ^= entry_hash(key.month, key.run_id, row["fingerprint"])
        for fp, run_id, month in self.plan.refresh:
            digest ^= entry_hash(month, run_id, stored_runs[RunKey(run_id, month)].fingerprint)
            digest ^= entry_hash(month, run_id, fp)
        for key in self.removed:
            digest ^= entry_hash(key.month, key.run_id, stored_runs[key].fingerprint)
        for run_dir in [*self.rejected_gone, *self.rejected_changed]:
            if run_dir in stored_rejected:
                digest ^= progress.rejection_hash(run_dir, stored_rejected[run_dir].fingerprint)
        for run_dir, (_, fp, _) in self.rejected_changed.items():
            digest ^= progress.rejection_hash(run_dir, fp)
        return digest


def _save(
    conn: duckdb.DuckDBPyConnection,
    path: Path,
    root: Path,
    changes: _Changes,
    since: Position | None,
    position: Position | None,
    digest: tuple[int, bool],
) -> tuple[int, bool]:
    """Apply the changes and store the position and digest, in one transaction; nothing is
    written when there is nothing new. Returns the digest now stored."""
    value, stored = digest
    if not (changes.any or position != since or not stored):
        return digest
    value = changes.digest_after(value) if changes.any else value
    with transaction(conn, path):
        if changes.any:
            c = changes
            _apply(conn, c.plan.upserts, c.plan.refresh, c.removed, c.rejected_changed, c.rejected_gone)
        progress.store(conn, root, position, value)
    return value, True


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
        conn.register("_gone", arrow_table(KEY_COLUMNS, gone_keys))
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
