"""The project's SQLite event log (`dagster.yaml` → `event_log_storage`): Dagster's
`SqliteEventLogStorage` with its engines kept.

Dagster's SQLite event log builds a new SQLAlchemy engine for every connection and drops it
afterwards (≈ 450 per policy month). The engine is cheap to build; closing its only connection
is not: the last connection to a WAL database to close checkpoints the WAL into the database and
deletes it, ~1 ms of fsyncs per event here. This storage keeps one engine per shard (a run's
database, or the index) per process, whose pool keeps one connection open, so an event write is a
commit to the WAL (made durable as SQLite's WAL mode always does) and checkpoints happen in the
background as SQLite's auto-checkpoint decides (every 1000 pages). Everything else is Dagster's:
the busy timeout, the one lock per storage that serialises its connections (so one pooled
connection per shard serves every thread), and the schema set up once per shard.

What keeping a connection open changes, and how it is kept right:
- The UI's live run view watches a run's database file for changes, which Dagster's storage makes
  by checkpointing as it closes each connection; with the connection kept open the events stay
  in the `-wal` file, so each event write touches the database file once it is committed.
- `wipe()` deletes the shard files: the connections are closed first, so no write lands in a
  deleted file.
- A forked child must not use the parent's connections: engines are keyed by process id, and a
  child keeps its parent's engines referenced but unused (closing an inherited SQLite connection
  is itself unsafe).
- At most `MAX_ENGINES` shards stay open per storage (a webserver reads many runs); the least
  recently used one is closed.

Deleting (`runs delete`, docs/lifecycle.md): Dagster's `delete_events` empties a run's database but
leaves the file, a few hundred KB each; here the file goes too. Dagster's SQLite storage cannot
wipe an asset's partitions; here `wipe_asset_partitions` removes their events from the asset
index and the runless events' database (the `run_spec` materialization `quantlab` records
without a run) — a run's own events go with the run (`delete_run`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import dagster._check as check
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dagster import AssetKey
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import (
    AssetEventTagsTable,
    SqlEventLogStorageMetadata,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sqlite import sqlite_event_log
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.sql import get_alembic_config
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError
from sqlalchemy.pool import QueuePool

MAX_ENGINES = 32
RUNLESS_SHARD = ""  # the run id Dagster stores runless asset events under (`report_runless_asset_event`)


@functools.cache
def migration_scripts() -> ScriptDirectory:
    """Dagster's event log migration scripts (alembic parses every script file to list them)."""
    return ScriptDirectory.from_config(get_alembic_config(sqlite_event_log.__file__))


class ReusingSqliteEventLogStorage(SqliteEventLogStorage):
    """`SqliteEventLogStorage` that keeps one engine, with one open connection, per shard."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_lock = threading.Lock()  # not `_db_lock`: `has_table` runs inside connections
        self._engines_pid = os.getpid()
        self._inherited: list[Engine] = []  # a forked parent's engines: kept alive, never used
        super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> ReusingSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:
            return self._engine_locked(shard)

    def _engine_locked(self, shard: str) -> Engine:
        if self._engines_pid != os.getpid():
            self._inherited += self._engines.values()
            self._engines, self._engines_pid = OrderedDict(), os.getpid()
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(
            self.conn_string_for_shard(shard),
            poolclass=QueuePool,
            pool_size=1,  # connections are serialised by `_db_lock`: one is enough
            max_overflow=-1,  # `_initdb` and `has_table` may open a second one, closed after use
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        self._engines[shard] = engine
        while len(self._engines) > MAX_ENGINES:
            self._engines.popitem(last=False)[1].dispose()
        return engine

    @contextlib.contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            check.str_param(shard, "shard")
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _initdb(self, engine: Engine, for_index_shard: bool = False) -> None:
        """A run's database at the head revision is ready; a new one is created and stamped
        with the migration scripts parsed once per process. Dagster's own check parses every
        script twice for each new run database (~40 ms of CPU a run); anything else (the index,
        an older revision, a database another process is creating) takes Dagster's path."""
        if not for_index_shard:
            with contextlib.suppress(DatabaseError, sqlite3.DatabaseError), engine.connect() as connection:
                context = MigrationContext.configure(connection)
                revision = context.get_current_revision()
                if revision == migration_scripts().as_revision_number("head"):
                    return
                if revision is None and not inspect(connection).has_table("event_logs"):
                    SqlEventLogStorageMetadata.create_all(engine)
                    connection.execute(text("PRAGMA journal_mode=WAL;"))
                    context.stamp(migration_scripts(), "head")
                    connection.commit()
                    return
        super()._initdb(engine, for_index_shard=for_index_shard)

    def has_table(self, table_name: str) -> bool:
        """Dagster asks before many index writes (Dagster's own builds an engine each time); called
        inside an open index connection too, so without `_db_lock`: a second pooled connection."""
        engine = self._engine(INDEX_SHARD_NAME)
        with engine.connect() as conn:
            return bool(engine.dialect.has_table(conn, table_name))

    def _close_engines(self) -> None:
        with self._db_lock, self._engines_lock:
            if self._engines_pid == os.getpid():
                for engine in self._engines.values():
                    engine.dispose()
            self._engines.clear()

    def store_event(self, event: EventLogEntry) -> None:
        super().store_event(event)
        # The UI's live run view (Dagster's watcher) reacts to changes of the run's database file;
        # with the connection kept open the event is in the WAL, so touch the file once it is
        # committed (a watcher woken by the WAL write itself could read before the commit shows).
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path_for_shard(event.run_id))

    def wipe(self) -> None:
        self._close_engines()  # before the shard files are deleted
        super().wipe()

    def delete_events(self, run_id: str) -> None:
        """Dagster's delete, then the run's database file itself (and its WAL)."""
        super().delete_events(run_id)
        if run_id in (RUNLESS_SHARD, INDEX_SHARD_NAME):
            return
        with self._db_lock, self._engines_lock:
            engine = self._engines.pop(run_id, None) if self._engines_pid == os.getpid() else None
            if engine is not None:
                engine.dispose()
            self._initialized_dbs.discard(run_id)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path_for_shard(run_id) + suffix)

    def wipe_asset_partitions(self, asset_key: AssetKey, partition_keys: Sequence[str]) -> None:
        """Remove the partitions' events from the asset index and from the runless events' database."""
        table = SqlEventLogStorageTable
        where = (table.c.asset_key == asset_key.to_string()) & table.c.partition.in_(list(partition_keys))
        with self.index_connection() as conn:
            ids = [row[0] for row in conn.execute(select(table.c.id).where(where))]
            if ids:
                conn.execute(AssetEventTagsTable.delete().where(AssetEventTagsTable.c.event_id.in_(ids)))
            conn.execute(table.delete().where(where))
        with self.run_connection(RUNLESS_SHARD) as conn:
            conn.execute(table.delete().where(where))

    def dispose(self) -> None:
        self._close_engines()
        super().dispose()
