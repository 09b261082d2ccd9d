"""The project's event log storage (`orchestration/dagster_adapter.py`) behaves as Dagster's SQLite
one: configured by the project's dagster.yaml, records and indexes every run's events in one
database, feeds the UI's live run view from another process's writes, survives a fork, leaves
one bounded WAL whatever the number of runs, and gives deleted runs' space back."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterEventType, DagsterInstance, EventLogEntry, job, op

from quantlab_pipeline.orchestration.dagster_adapter import KeptConnectionSqliteEventLogStorage

PROJECT = Path(__file__).resolve().parent.parent
EVENTS_DIR = ".dagster/storage/events"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A Dagster home with the project's dagster.yaml; its relative state paths under `tmp_path`."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def instance(home):
    instance = DagsterInstance.get()
    yield instance
    instance.dispose()


def _log(run_id: str, message: str) -> EventLogEntry:
    return EventLogEntry(
        error_info=None,
        level="INFO",
        user_message=message,
        run_id=run_id,
        timestamp=time.time(),
        job_name="job",
    )


@op
def materializes(context):
    context.log_event(AssetMaterialization(asset_key="thing", metadata={"n": 1}))


@job
def one_op_job():
    materializes()


def test_the_project_instance_keeps_every_runs_events_in_one_database(instance, tmp_path):
    storage = instance.event_log_storage
    assert type(storage) is KeptConnectionSqliteEventLogStorage
    results = [one_op_job.execute_in_process(instance=instance) for _ in range(3)]
    assert all(r.success for r in results)
    # One database (and its WAL), not one per run; created so that deleted runs can shrink it.
    names = {p.name for p in (tmp_path / EVENTS_DIR).iterdir()}
    assert names <= {"event_log.db", "event_log.db-wal", "event_log.db-shm"}, names
    with sqlite3.connect(tmp_path / EVENTS_DIR / "event_log.db") as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
    assert not (tmp_path / ".dagster/storage/history/runs").exists()
    run_id = results[-1].run_id
    records = instance.get_records_for_run(run_id).records
    assert records[0].event_log_entry.dagster_event_type == DagsterEventType.RUN_START
    successes = instance.fetch_run_status_changes(DagsterEventType.RUN_SUCCESS, limit=10).records  # across runs
    assert {r.run_id for r in successes} == {r.run_id for r in results}
    materializations = instance.fetch_materializations(AssetKey("thing"), limit=10).records
    assert len(materializations) == 3 and materializations[0].run_id == run_id
    assert instance.get_latest_materialization_event(AssetKey("thing")).run_id == run_id
    assert AssetKey("thing") in instance.all_asset_keys()
    assert instance.get_run_by_id(run_id).is_success


def test_its_instance_ref_rebuilds_it_in_another_process(instance):
    """Run workers rebuild the instance from its ref (`month_runner.execute_worker`, `dagster api execute_run`)."""
    rebuilt = DagsterInstance.from_ref(instance.get_ref())
    try:
        assert type(rebuilt.event_log_storage) is KeptConnectionSqliteEventLogStorage
    finally:
        rebuilt.dispose()


def test_deleted_runs_give_their_space_back(instance, tmp_path):
    for _ in range(30):
        one_op_job.execute_in_process(instance=instance)
    storage = instance.event_log_storage
    database = tmp_path / EVENTS_DIR / "event_log.db"
    with storage._connect() as conn:  # write the WAL back, so the file holds every page
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    before = database.stat().st_size
    for run in instance.get_runs():
        instance.delete_run(run.run_id)
    storage.reclaim_space()
    with storage._connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    assert database.stat().st_size < before * 0.8, (before, database.stat().st_size)
    assert instance.get_runs() == []


def _write_and_hold(home: str, cwd: str, run_id: str, count: int, written, release) -> None:
    """A writer in another process that keeps its connection open (as a run worker does)."""
    os.chdir(cwd)
    os.environ["DAGSTER_HOME"] = home
    instance = DagsterInstance.get()
    for i in range(count):
        instance.event_log_storage.store_event(_log(run_id, f"event {i}"))
    written.set()
    release.wait(30)


def test_the_live_run_view_sees_another_processs_writes_while_its_connection_is_open(instance, home, tmp_path):
    """The UI watches the database file; a writer that keeps its connection open writes the WAL."""
    run_id = "0f1e2d3c-0000-4000-8000-000000000001"
    storage = instance.event_log_storage
    storage.store_event(_log(run_id, "first"))  # the shard exists, as when a run starts
    seen: list[str] = []
    got_all = threading.Event()

    def callback(entry, _cursor):
        seen.append(entry.user_message)
        if len(seen) == 4:
            got_all.set()

    storage.watch(run_id, None, callback)
    context = multiprocessing.get_context("spawn")
    written, release = context.Event(), context.Event()
    writer = context.Process(
        target=_write_and_hold, args=(str(home), str(tmp_path), run_id, 3, written, release), daemon=True
    )
    writer.start()
    try:
        assert written.wait(60)
        assert got_all.wait(10), seen  # while the writer is alive: no checkpoint on its close
        assert seen == ["first", "event 0", "event 1", "event 2"]
        assert Path(storage.get_db_path() + "-wal").exists()
    finally:
        release.set()
        writer.join(30)
        storage.end_watch(run_id, callback)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_writes_through_its_own_engine(instance):
    storage = instance.event_log_storage
    run_id = "0f1e2d3c-0000-4000-8000-000000000002"
    storage.store_event(_log(run_id, "parent"))
    parent_engine = storage._process_engine()
    pid = os.fork()
    if pid == 0:  # the child: write, check it used a new engine, leave without cleanup
        try:
            storage.store_event(_log(run_id, "child"))
            ok = storage._process_engine() is not parent_engine and parent_engine in storage._inherited
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    storage.store_event(_log(run_id, "parent again"))
    assert storage._process_engine() is parent_engine
    messages = [r.event_log_entry.user_message for r in storage.get_records_for_run(run_id).records]
    assert messages == ["parent", "child", "parent again"]


def test_wiping_partitions_removes_their_runless_materializations_only(instance):
    """Dagster's SQL storages cannot wipe an asset's partitions; this one can, for the runless
    `run_spec` materialization a deleted run leaves (orchestration/launch.py `create_run`)."""
    for key in ("a", "b"):
        instance.report_runless_asset_event(AssetMaterialization(asset_key="run_spec", partition=key))

    def partitions() -> list[str]:
        return sorted(r.partition_key for r in instance.fetch_materializations(AssetKey("run_spec"), limit=10).records)

    assert partitions() == ["a", "b"]
    instance.wipe_asset_partitions(AssetKey("run_spec"), ["a"])
    assert partitions() == ["b"]
    with instance.event_log_storage.index_connection() as conn:
        rows = conn.exec_driver_sql("SELECT partition FROM event_logs WHERE asset_key IS NOT NULL").fetchall()
    assert [p for (p,) in rows if p is not None] == ["b"]
