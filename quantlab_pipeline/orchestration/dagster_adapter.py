"""Every use of a Dagster-private name (`dagster._…`) in the project, each with why no public API
serves (docs/architecture.md "The Dagster adapter"). `PRIVATE` lists them, each with its reason;
`quantlab_pipeline_tests/test_dagster_adapter.py` imports each and checks the parameters used
here, so a Dagster upgrade that moves or changes one fails that test, naming the symbol, instead
of failing a backtest. Public names (`DagsterRun`, `RunsFilter`, `EventLogEntry`,
`serialize_value`, `QueuedRunCoordinator`, …) are imported from `dagster` where they are used.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from dagster import AssetKey, DagsterInstance, DagsterRun
from dagster._cli.api import _execute_run_command_body
from dagster._core.definitions.partitions.utils import generate_partition_key_based_definition_id
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository
from dagster._core.execution.api import execute_run
from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.remote_origin import (
    ManagedGrpcPythonEnvCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.event_log import ConsolidatedSqliteEventLogStorage
from dagster._core.storage.event_log.schema import AssetEventTagsTable, SqlEventLogStorageTable
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from dagster._core.storage.partition_status_cache import AssetStatusCacheValue
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._utils.interrupts import capture_interrupts, setup_interrupt_handlers
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

__all__ = [
    "IO_TYPE_EXTENSION",
    "CapturedLogContext",
    "CheckRunHealthResult",
    "ComputeIOType",
    "LocalComputeLogManager",
    "WorkerStatus",
    "redirect_to_file",
]


@dataclass(frozen=True)
class Private:
    module: str
    name: str | None  # None: the module itself (imported ahead by the warm server)
    why: str  # why no public API serves
    parameters: tuple[str, ...] = ()  # the parameters (or record fields) this project passes, in order
    method: str | None = None  # the parameters are the method's (a class method called here)


_PRELOAD_WHY = (
    "imported on first use by opening a SQLite instance or running a job in process; the warm "
    "server imports it ahead (docs/architecture.md), and no public module imports it sooner"
)
PRELOAD_MODULES = (
    "dagster._core.instance.factory",
    "dagster._core.instance.runs.run_domain",
    "dagster._core.storage.legacy_storage",
    "dagster._core.storage.root",
    "dagster._core.storage.migration.utils",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log.sqlite.consolidated_sqlite_event_log",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.executor.in_process",
    "dagster._core.execution.plan.active",
    "dagster._core.definitions.repository_definition.repository_data_builder",
    "dagster._core.workspace.context",
    "dagster._core.workspace.autodiscovery",
    "dagster._core.execution.asset_backfill",
    "dagster._daemon.monitoring",
    "dagster._daemon.auto_run_reexecution.auto_run_reexecution",
)

PRIVATE: tuple[Private, ...] = (
    Private(
        "dagster._core.storage.event_log",
        "ConsolidatedSqliteEventLogStorage",
        "the one-database SQLite event log is public only as a dagster.yaml module/class pair; "
        "subclassed to keep its connection (KeptConnectionSqliteEventLogStorage)",
        ("base_dir", "inst_data"),
    ),
    Private(
        "dagster._core.storage.event_log.schema",
        "SqlEventLogStorageTable",
        "the events table: Dagster's SQL storages cannot wipe an asset's partitions",
    ),
    Private("dagster._core.storage.event_log.schema", "AssetEventTagsTable", "the events' tags, wiped with them"),
    Private(
        "dagster._core.definitions.reconstruct",
        "ReconstructableRepository",
        "`dagster.reconstructable` takes a job function; the jobs are built by a Definitions, "
        "rebuilt from the module's `defs` (`for_module`)",
        ("module", "fn_name", "working_directory"),
        method="for_module",
    ),
    Private("dagster._core.definitions.reconstruct", "ReconstructableJob", "what `get_reconstructable_job` returns"),
    Private(
        "dagster._core.types.loadable_target_origin",
        "LoadableTargetOrigin",
        "a run's code-location origin (so the UI can re-execute a CLI month) has no public constructor",
        ("executable_path", "python_file", "module_name", "working_directory"),
    ),
    Private(
        "dagster._core.remote_origin",
        "ManagedGrpcPythonEnvCodeLocationOrigin",
        "the workspace's code location as the UI names it",
        ("loadable_target_origin", "location_name"),
    ),
    Private(
        "dagster._core.remote_origin",
        "RemoteRepositoryOrigin",
        "the run's repository origin",
        ("code_location_origin", "repository_name"),
    ),
    Private(
        "dagster._core.remote_origin", "RemoteJobOrigin", "the run's job origin", ("repository_origin", "job_name")
    ),
    Private(
        "dagster._core.execution.api",
        "execute_run",
        "executes an existing run (created with its origins) in this process; the public "
        "`execute_job` creates a run of its own, without the code-location origin",
        ("job", "dagster_run", "instance"),
    ),
    Private(
        "dagster._cli.api",
        "_execute_run_command_body",
        "the body of `dagster api execute_run` (Dagster's run worker: cancellation thread, engine "
        "events, interrupt handling) without a new interpreter per month",
        ("run_id", "instance", "write_stream_fn", "set_exit_code_on_failure"),
    ),
    Private(
        "dagster._utils.interrupts", "setup_interrupt_handlers", "SIGTERM acting as SIGINT, as in Dagster's run worker"
    ),
    Private(
        "dagster._utils.interrupts",
        "capture_interrupts",
        "a signal held until a step can raise it, as in Dagster's run worker",
    ),
    Private(
        "dagster._core.storage.local_compute_log_manager",
        "LocalComputeLogManager",
        "the local compute log manager is public only as a dagster.yaml module/class pair; subclassed "
        "by compute_logs.DevNullAwareComputeLogManager",
    ),
    Private("dagster._core.storage.local_compute_log_manager", "IO_TYPE_EXTENSION", "the captured files' extensions"),
    Private(
        "dagster._core.storage.compute_log_manager", "CapturedLogContext", "what `capture_logs` yields", ("log_key",)
    ),
    Private("dagster._core.storage.compute_log_manager", "ComputeIOType", "stdout or stderr"),
    Private(
        "dagster._core.execution.compute_logs",
        "redirect_to_file",
        "Dagster's redirection of a stream into the captured file, without its mirror",
        ("stream", "filepath"),
    ),
    Private(
        "dagster._core.launcher",
        "CheckRunHealthResult",
        "a run launcher's health check result has no public export (run monitoring reads it)",
        ("status", "msg"),
    ),
    Private("dagster._core.launcher", "WorkerStatus", "the health check's statuses"),
    Private(
        "dagster._core.definitions.partitions.utils",
        "generate_partition_key_based_definition_id",
        "the identity Dagster gives a dynamic partition set (a hash of its keys), which keys each "
        "asset's partition-status cache; the instance only computes it for the current keys",
        ("partition_keys",),
    ),
    Private(
        "dagster._core.storage.partition_status_cache",
        "AssetStatusCacheValue",
        "an asset's partition-status cache (what `AssetRecord.asset_entry.cached_status` holds and "
        "`DagsterInstance.update_asset_cached_status_data` stores), carried over to a new key set",
        ("latest_storage_id", "partitions_def_id"),
    ),
    *(Private(module, None, _PRELOAD_WHY) for module in PRELOAD_MODULES),
    # Used by the tests only (imported on use: `dagster._core.test_utils` costs ~0.4 s).
    Private(
        "dagster._core.test_utils",
        "create_run_for_test",
        "a run of a job name without the job's definition, for the run launcher's tests",
        ("instance", "job_name"),
    ),
    Private(
        "dagster._daemon.monitoring.run_monitoring",
        "monitor_started_run",
        "one pass of the daemon's run monitoring over a started run, for the run launcher's tests",
        ("instance", "workspace", "run_record", "logger"),
    ),
    Private(
        "dagster._utils.tags",
        "TagConcurrencyLimitsCounter",
        "what the queued run coordinator counts tag limits with, for the queue limits' tests",
        ("tag_concurrency_limits", "in_progress_tagged_items"),
    ),
    Private(
        "dagster._core.storage.partition_status_cache",
        "get_and_update_asset_status_cache_value",
        "brings an asset's partition-status cache up to date as the UI does, for the key-adding tests",
        ("instance", "asset_key", "partitions_def"),
    ),
    Private(
        "dagster._config",
        "process_config",
        "validates a config dict against a schema, for the deployments' tests",
        ("config_type", "config_dict"),
    ),
    Private(
        "dagster._core.instance.config",
        "dagster_instance_config",
        "reads and validates a folder's dagster.yaml as an instance would, for the deployments' tests",
        ("base_dir",),
    ),
)


def add_partition_keys(instance: DagsterInstance, partitions_name: str, keys: Sequence[str]) -> None:
    """Add a run's partition keys, carrying each asset's partition-status cache over to the new key
    set (docs/dagster.md "Partition keys").

    Dagster keys that cache by a hash of all of a dynamic definition's keys, so every new run-month
    would make the UI rebuild each asset's status from all its materializations — a cost that grows
    with the runs (1.4 s for the `paths` page at 10,000). Adding keys changes nothing a cache holds
    (a new key has no materialization yet, and the cache's cursor still holds), so a cache that
    matched the keys before is relabelled for the keys after. Anything else (a key added or deleted
    by another process meanwhile, a cache of an older key set) is left for Dagster to rebuild."""
    before = instance.get_dynamic_partitions(partitions_name)
    known = set(before)
    new = [key for key in dict.fromkeys(keys) if key not in known]
    if not new:
        return
    instance.add_dynamic_partitions(partitions_name, new)
    after = instance.get_dynamic_partitions(partitions_name)
    if list(after) != [*before, *new]:
        return
    old_id = generate_partition_key_based_definition_id(before)
    new_id = generate_partition_key_based_definition_id(after)
    for record in instance.get_asset_records():
        cache: AssetStatusCacheValue | None = record.asset_entry.cached_status
        if cache is not None and cache.partitions_def_id == old_id:
            instance.update_asset_cached_status_data(
                record.asset_entry.asset_key, cache._replace(partitions_def_id=new_id)
            )


def private(module: str, name: str) -> Any:
    """A private name used by the tests only (`PRIVATE`), imported when asked for."""
    import importlib

    if not any(p.module == module and p.name == name for p in PRIVATE):
        raise KeyError(f"{module}.{name} is not a listed private name")
    return getattr(importlib.import_module(module), name)


class JobOrigins(NamedTuple):
    reconstructable: ReconstructableJob
    remote_origin: RemoteJobOrigin


DEFINITIONS_MODULE = "quantlab_pipeline.definitions"
LOCATION_NAME = "quantlab_pipeline"  # the code location's name in workspace.yaml and pyproject
REPOSITORY_NAME = "__repository__"  # Dagster's name for the one repository of a Definitions


def job_origins(job_name: str, *, working_directory: str) -> JobOrigins:
    """The job as this process reconstructs it, and its origin in the workspace (what a run
    records so the UI can re-execute it)."""
    repository = ReconstructableRepository.for_module(DEFINITIONS_MODULE, "defs", working_directory=working_directory)
    loadable = LoadableTargetOrigin(
        executable_path=sys.executable, module_name=DEFINITIONS_MODULE, working_directory=working_directory
    )
    location = ManagedGrpcPythonEnvCodeLocationOrigin(loadable_target_origin=loadable, location_name=LOCATION_NAME)
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, REPOSITORY_NAME), job_name)
    return JobOrigins(repository.get_reconstructable_job(job_name), origin)


def execute_run_here(job: ReconstructableJob, run: DagsterRun, instance: DagsterInstance) -> None:
    """Execute an existing run in this process (the foreground months)."""
    execute_run(job, run, instance)


def execute_run_as_worker(run_id: str, instance: DagsterInstance) -> None:
    """Execute an existing run as Dagster's run worker does (`dagster api execute_run`)."""
    _execute_run_command_body(run_id, instance, lambda _event: None, set_exit_code_on_failure=False)


@contextlib.contextmanager
def run_worker_interrupts() -> Iterator[None]:
    """A run worker's signal handling: SIGTERM as SIGINT, held until a step can raise it."""
    setup_interrupt_handlers()
    with capture_interrupts():
        yield


@contextlib.contextmanager
def mirror_spawn_signals() -> Iterator[None]:
    """The signals the compute log mirror's `tail` and `watch_orphans.py` start with, while
    Dagster starts them. SIGINT is held pending (delivered on leaving): they inherit the mask, so
    a Ctrl-C sent to the process group reaches the step alone instead of printing a
    `KeyboardInterrupt` traceback per watcher. SIGTERM, when this process ignores it (started by a
    launcher that does), is handled by a no-op meanwhile: an ignored signal stays ignored across
    exec, a handled one starts at its default, and Dagster stops the mirror with SIGTERM, waiting
    30 s for each process that ignores it."""
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous_term = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        previous_term = signal.signal(signal.SIGTERM, _still_ignored)
    try:
        yield
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _still_ignored(signum: int, frame: object) -> None:
    """SIGTERM while `mirror_spawn_signals` stands in for this process's SIG_IGN: ignored."""


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
