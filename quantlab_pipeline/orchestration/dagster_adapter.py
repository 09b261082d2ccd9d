"""Every use of a Dagster-private name (`dagster._…`) in the project, each with why no public API
serves (docs/dagster.md "Dagster internals"). `quantlab_pipeline_tests/test_dagster_adapter.py`
checks each name still exists with the shape used here, so a Dagster upgrade that moves one
fails that test, naming the symbol, instead of failing a backtest.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

# The SQLite event log storage with every run's events in one database. Public as a dagster.yaml
# `module:`/`class:` pair, not as an import; subclassed below to keep its connection open.
from dagster import AssetKey
from dagster._core.storage.event_log import ConsolidatedSqliteEventLogStorage

# Its tables, for what Dagster's SQL storages leave unimplemented (`wipe_asset_partitions`).
from dagster._core.storage.event_log.schema import AssetEventTagsTable, SqlEventLogStorageTable
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

# Dagster's busy timeout for its SQLite storages (seconds): the same wait for a locked database.
SQLITE_BUSY_TIMEOUT_S = 120


class KeptConnectionSqliteEventLogStorage(ConsolidatedSqliteEventLogStorage):
    """The instance's event log (`dagster.yaml` → `event_log_storage`): Dagster's consolidated
    SQLite storage — every run's events in one database — with one connection kept per process.

    Why consolidated: Dagster's default SQLite storage gives each run its own database (≈ 0.2 MB
    of schema and events per run-month, plus each asset event copied into an index database);
    one database stores each event once, so the instance grows by what the events hold
    (docs/performance.md "At a lab's scale").

    Why a kept connection (overrides the private `_connect`): the stock class opens a new engine
    and connection for every read and write (≈ 450 a policy month) and closing the last
    connection to a WAL database checkpoints it (a few fsyncs each time). Kept open, an event is a
    commit to the WAL, SQLite checkpoints every 1,000 pages, and the WAL stays one bounded file for
    the whole instance, whatever the number of runs.

    What keeping it changes, and how it is kept right:
    - Dagster's UI watches the database file for changes to stream a run's events; commits land in
      the `-wal` file, so the database file is touched after each stored event.
    - A forked child never uses its parent's connections (keyed by process id; the inherited
      engine is kept referenced but unused: closing an inherited SQLite connection is unsafe).
    - New databases are created with `auto_vacuum = INCREMENTAL`, so deleting runs
      (`quantlab runs delete`) can give the space back (`reclaim_space`).
    - Dagster's SQL storages cannot wipe an asset's partitions (`NotImplementedError`); this one
      can, for the runless `run_spec` materializations a deleted run leaves (docs/lifecycle.md).
    """

    def __init__(self, base_dir: str, inst_data: Any = None):
        self._engine: Engine | None = None
        self._engine_pid = os.getpid()
        self._engine_lock = threading.Lock()
        self._inherited: list[Engine] = []
        path = os.path.join(base_dir, "event_log.db")
        created = not os.path.exists(path)
        if created:
            _create_with_incremental_vacuum(path)
        super().__init__(base_dir, inst_data)
        if created:  # Dagster creates its schema only in a file that did not exist
            self._init_db()

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> KeptConnectionSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _process_engine(self) -> Engine:
        with self._engine_lock:
            if self._engine_pid != os.getpid():
                if self._engine is not None:
                    self._inherited.append(self._engine)
                self._engine, self._engine_pid = None, os.getpid()
            if self._engine is None:
                self._engine = create_engine(
                    self._conn_string,
                    poolclass=QueuePool,
                    pool_size=1,  # one kept connection; threads needing more get overflow ones
                    max_overflow=-1,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
                )
            return self._engine

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Connection]:  # Dagster-private hook, overridden
        with self._process_engine().connect() as conn, conn.begin():
            yield conn

    def store_event(self, event: Any) -> None:
        super().store_event(event)
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.get_db_path())

    def wipe_asset_partitions(self, asset_key: AssetKey, partition_keys: Sequence[str]) -> None:
        """Remove the partitions' events of `asset_key` and their tags; a run's own events go with
        the run (`delete_run`)."""
        table = SqlEventLogStorageTable
        where = (table.c.asset_key == asset_key.to_string()) & table.c.partition.in_(list(partition_keys))
        with self.index_connection() as conn:
            ids = [row[0] for row in conn.execute(select(table.c.id).where(where))]
            if ids:
                conn.execute(AssetEventTagsTable.delete().where(AssetEventTagsTable.c.event_id.in_(ids)))
            conn.execute(table.delete().where(where))

    def reclaim_space(self) -> None:
        """Give the pages of deleted runs back to the file system (`PRAGMA incremental_vacuum`)."""
        # The pragma frees one page per step; Python's `execute` steps a pragma once, a script to the end.
        connection = sqlite3.connect(self.get_db_path(), timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            connection.executescript("PRAGMA incremental_vacuum;")
        finally:
            connection.close()

    def dispose(self) -> None:
        with self._engine_lock:
            if self._engine is not None and self._engine_pid == os.getpid():
                self._engine.dispose()
            self._engine = None
        super().dispose()


def _create_with_incremental_vacuum(path: str) -> None:
    """An empty database whose header says `auto_vacuum = INCREMENTAL` (settable only before the
    first table exists; Dagster then creates its schema in it)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
        connection.execute("CREATE TABLE IF NOT EXISTS quantlab_init (x INTEGER)")
        connection.execute("DROP TABLE IF EXISTS quantlab_init")
        connection.commit()
    finally:
        connection.close()
