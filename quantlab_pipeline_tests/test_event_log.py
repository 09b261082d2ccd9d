"""The project's event log storage (`orchestration/event_log.py`) behaves as Dagster's SQLite one:
configured by the project's dagster.yaml, records and indexes events, feeds the UI's live run
view from another process's writes, survives a fork and a wipe, and keeps its engines bounded."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterEventType, DagsterInstance, job, op
from dagster._core.events.log import EventLogEntry

from quantlab_pipeline.orchestration import event_log
from quantlab_pipeline.orchestration.event_log import ReusingSqliteEventLogStorage

PROJECT = Path(__file__).resolve().parent.parent


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


def test_the_project_instance_uses_it_on_dagsters_own_files(instance, tmp_path):
    storage = instance.event_log_storage
    assert type(storage) is ReusingSqliteEventLogStorage
    result = one_op_job.execute_in_process(instance=instance)
    assert result.success
    assert set(storage._engines) == {result.run_id, "index"}  # one engine per shard, not one per event
    # The files `storage: sqlite: base_dir: .dagster/storage` would use.
    assert (tmp_path / ".dagster/storage/history/runs.db").is_file()
    assert (tmp_path / f".dagster/storage/history/runs/{result.run_id}.db").is_file()
    assert (tmp_path / ".dagster/storage/history/runs/index.db").is_file()
    # Run-sharded records, the cross-run index, the asset index.
    records = instance.get_records_for_run(result.run_id).records
    assert records[0].event_log_entry.dagster_event_type == DagsterEventType.RUN_START
    [success] = instance.fetch_run_status_changes(DagsterEventType.RUN_SUCCESS, limit=10).records  # across runs
    assert success.run_id == result.run_id
    [record] = instance.fetch_materializations(AssetKey("thing"), limit=10).records
    assert record.run_id == result.run_id and record.asset_key == AssetKey("thing")
    assert instance.get_latest_materialization_event(AssetKey("thing")).run_id == result.run_id
    assert AssetKey("thing") in instance.all_asset_keys()
    assert instance.get_run_by_id(result.run_id).is_success


def test_its_instance_ref_rebuilds_it_in_another_process(instance):
    """Run workers rebuild the instance from its ref (`month_worker`, `dagster api execute_run`)."""
    rebuilt = DagsterInstance.from_ref(instance.get_ref())
    try:
        assert type(rebuilt.event_log_storage) is ReusingSqliteEventLogStorage
    finally:
        rebuilt.dispose()


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
    """The UI watches a run's database; a writer that keeps its connection open writes the WAL."""
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
        assert Path(storage.path_for_shard(run_id) + "-wal").exists()
    finally:
        release.set()
        writer.join(30)
        storage.end_watch(run_id, callback)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_writes_through_its_own_engine(instance):
    storage = instance.event_log_storage
    run_id = "0f1e2d3c-0000-4000-8000-000000000002"
    storage.store_event(_log(run_id, "parent"))
    parent_engine = storage._engines[run_id]
    pid = os.fork()
    if pid == 0:  # the child: write, check it used a new engine, leave without cleanup
        try:
            storage.store_event(_log(run_id, "child"))
            ok = storage._engines[run_id] is not parent_engine and parent_engine in storage._inherited
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    storage.store_event(_log(run_id, "parent again"))
    assert storage._engines[run_id] is parent_engine
    messages = [r.event_log_entry.user_message for r in storage.get_records_for_run(run_id).records]
    assert messages == ["parent", "child", "parent again"]


def test_wipe_closes_the_connections_before_deleting_the_files(instance):
    storage = instance.event_log_storage
    run_id = "0f1e2d3c-0000-4000-8000-000000000003"
    storage.store_event(_log(run_id, "before"))
    instance.wipe()
    assert not Path(storage.path_for_shard(run_id)).exists()
    storage.store_event(_log(run_id, "after"))  # into a new file, not the deleted one
    assert Path(storage.path_for_shard(run_id)).exists()
    assert [r.event_log_entry.user_message for r in storage.get_records_for_run(run_id).records] == ["after"]


def test_engines_are_bounded_least_recently_used_first(instance, monkeypatch):
    monkeypatch.setattr(event_log, "MAX_ENGINES", 3)
    storage = instance.event_log_storage
    storage._close_engines()
    run_ids = [f"0f1e2d3c-0000-4000-8000-00000000001{i}" for i in range(5)]
    for run_id in run_ids:
        storage.store_event(_log(run_id, "x"))
    assert list(storage._engines) == run_ids[-3:]
    # An evicted shard is reopened on demand, its events intact.
    assert [r.event_log_entry.user_message for r in storage.get_records_for_run(run_ids[0]).records] == ["x"]


def test_deleting_a_run_removes_its_database_file_and_only_its_events(instance, tmp_path):
    """`instance.delete_run` (runs delete, docs/lifecycle.md): Dagster empties the run's database;
    this storage removes the file and its WAL too."""
    kept, deleted = (one_op_job.execute_in_process(instance=instance).run_id for _ in range(2))
    shard = Path(instance.event_log_storage.path_for_shard(deleted))
    assert shard.is_file()
    instance.delete_run(deleted)
    assert not any(Path(f"{shard}{suffix}").exists() for suffix in ("", "-wal", "-shm"))
    assert instance.get_run_by_id(deleted) is None and instance.get_records_for_run(deleted).records == []
    assert [r.run_id for r in instance.fetch_materializations(AssetKey("thing"), limit=10).records] == [kept]
    assert Path(instance.event_log_storage.path_for_shard(kept)).is_file()
    assert one_op_job.execute_in_process(instance=instance).success  # the storage goes on writing


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
    with instance.event_log_storage.run_connection(event_log.RUNLESS_SHARD) as conn:
        rows = conn.exec_driver_sql("SELECT partition FROM event_logs WHERE asset_key IS NOT NULL").fetchall()
    assert [p for (p,) in rows if p is not None] == ["b"]  # gone from the runless shard too
