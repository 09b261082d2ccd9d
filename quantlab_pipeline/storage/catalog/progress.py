"""What a sync leaves behind for the next sync and for the sensor (docs/catalog.md "Incremental
sync"): the journal position it has applied and the digest of what the catalog holds.

Both live in `catalog_meta`, written in the transaction that changes the rows, so the catalog
never claims a position whose changes it lacks. After the commit they are copied to
`<catalog>.sync.json`, which the sensor reads instead of opening the database: a stale or
missing copy only makes the sensor request a sync that finds nothing to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb

from quantlab_pipeline.storage.atomic import atomic_write_json
from quantlab_pipeline.storage.catalog.fingerprint import entry_hash, hex_digest
from quantlab_pipeline.storage.journal import Position

POSITION_KEY = "journal_position"
DIGEST_KEY = "terminal_digest"


@dataclass(frozen=True)
class SyncMark:
    """The sensor's view of the catalog: where in the journal it is, and its digest."""

    position: Position | None
    digest: str


def mark_path(catalog_path: Path) -> Path:
    return Path(f"{catalog_path}.sync.json")


def read_mark(catalog_path: Path) -> SyncMark | None:
    """The last sync's mark, or None when there is none (or it is unreadable: sync again)."""
    try:
        data = json.loads(mark_path(catalog_path).read_bytes())
        return SyncMark(Position.from_json(json.dumps(data["position"])), str(data["digest"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_mark(catalog_path: Path, mark: SyncMark) -> None:
    position = json.loads(mark.position.to_json()) if mark.position else None
    atomic_write_json(mark_path(catalog_path), {"position": position, "digest": mark.digest})


def _meta(conn: duckdb.DuckDBPyConnection, key: str) -> str | None:
    rows = conn.execute("SELECT value FROM catalog_meta WHERE key = ?", [key]).fetchall()
    return rows[0][0] if rows else None


def stored_position(conn: duckdb.DuckDBPyConnection, root: Path) -> Position | None:
    """The position applied last, if it was in the journal of `root` (a runs directory moved
    since, or synced into another catalog, needs a full sync: its paths changed)."""
    text = _meta(conn, POSITION_KEY)
    try:
        stored_root = json.loads(text or "{}").get("runs_dir")
    except ValueError:
        return None
    return Position.from_json(text) if stored_root == str(root) else None


def stored_digest(conn: duckdb.DuckDBPyConnection) -> tuple[int, bool]:
    """`(digest, stored)`: the digest kept with the rows, or computed from every row for a catalog
    that has none yet (`stored` False: store it)."""
    value = _meta(conn, DIGEST_KEY)
    if value is not None:
        return int(value, 16), True
    digest = 0
    for month, run_id, fingerprint in conn.execute("SELECT month, run_id, fingerprint FROM runs").fetchall():
        digest ^= entry_hash(month, run_id, fingerprint)
    for run_dir, fingerprint in conn.execute("SELECT run_dir, fingerprint FROM rejected_runs").fetchall():
        digest ^= rejection_hash(run_dir, fingerprint)
    return digest, False


def rejection_hash(run_dir: str, fingerprint: str) -> int:
    """A rejected directory's share of the digest, named by its path `…/YYYY-MM/run_id=<id>`."""
    path = Path(run_dir)
    return entry_hash(path.parent.name, path.name.removeprefix("run_id="), fingerprint)


def store(conn: duckdb.DuckDBPyConnection, root: Path, position: Position | None, digest: int) -> None:
    """Record the applied position (in the journal of `root`) and the digest; call inside the
    sync's transaction."""
    conn.execute("DELETE FROM catalog_meta WHERE key IN (?, ?)", [POSITION_KEY, DIGEST_KEY])
    conn.execute("INSERT INTO catalog_meta VALUES (?, ?)", [DIGEST_KEY, hex_digest(digest)])
    if position is not None:
        value = json.dumps({**json.loads(position.to_json()), "runs_dir": str(root)})
        conn.execute("INSERT INTO catalog_meta VALUES (?, ?)", [POSITION_KEY, value])
