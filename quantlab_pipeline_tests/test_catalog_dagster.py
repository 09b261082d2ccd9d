"""The catalog's Dagster surface: `backtest_catalog` asset, `catalog_sync_job`, `catalog_sync_sensor`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster_duckdb import DuckDBResource

from quantlab_pipeline.orchestration import catalog as orch
from quantlab_pipeline.orchestration.catalog import backtest_catalog, build_catalog_sync_sensor, catalog_sync_job
from quantlab_pipeline.orchestration.defs import build_defs
from quantlab_pipeline.orchestration.resources import RunStoreResource
from quantlab_pipeline.orchestration.settings import SENSOR_INTERVAL_ENV, Settings
from quantlab_pipeline.storage.catalog import query_runs, sync_catalog
from quantlab_pipeline.storage.journal import Journal
from quantlab_pipeline.storage.paths import ProjectPaths
from quantlab_pipeline_tests.test_catalog import key, make_run


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def resources(tmp_path: Path, runs: Path) -> dict:
    return {
        "catalog_duckdb": DuckDBResource(database=str(tmp_path / "data" / "catalog.duckdb")),
        "run_store": RunStoreResource(runs_dir=str(runs)),
    }


def materialize(resources, instance, tags=None):
    result = dg.materialize([backtest_catalog], resources=resources, instance=instance, tags=tags)
    assert result.success
    [event] = result.asset_materializations_for_node("backtest_catalog")
    return {k: v.value for k, v in event.metadata.items()}


def test_asset_syncs_and_reports_counts_and_totals(runs, resources):
    completed = make_run(runs, "2024-01")
    make_run(runs, "2024-01", run_type="policy", policy_id="p1")
    make_run(runs, "2024-02", status="failed")
    make_run(runs, "2024-02", status="running")
    with dg.instance_for_test() as instance:
        meta = materialize(resources, instance)
        # 2 completed + 1 failed registered; 1 running skipped; artifacts: path-only 2 + policy 4
        assert (meta["registered"], meta["updated"], meta["removed"], meta["skipped"], meta["rejected"]) == (
            3,
            0,
            0,
            1,
            0,
        )
        assert meta["runs_by_status"] == {"completed": 2, "failed": 1}
        assert meta["runs_by_type"] == {"path-only": 2, "policy": 1}
        assert (meta["total_runs"], meta["total_artifacts"]) == (3, 6)
        assert meta["artifacts_by_type"] == {"alerts": 2, "paths": 2, "trades": 1, "summary": 1}
        assert meta["path"] == resources["catalog_duckdb"].database

        shutil.rmtree(completed)
        meta = materialize(resources, instance)
        assert (meta["registered"], meta["removed"], meta["total_runs"]) == (0, 1, 2)
        meta = materialize(resources, instance)  # nothing changed
        assert (meta["registered"], meta["updated"], meta["removed"], meta["unchanged"]) == (0, 0, 0, 2)
    assert len(query_runs(resources["catalog_duckdb"].database)) == 2


def verification(resources, instance, tags=None) -> tuple[bool, int, int]:
    result = dg.materialize([backtest_catalog], resources=resources, instance=instance, tags=tags)
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "catalog_artifacts_verified"
    return check.passed, check.metadata["artifacts"].value, check.metadata["not_matching"].value


def test_a_sync_verifies_the_hashes_of_what_it_wrote_and_a_full_sync_of_everything(runs, resources):
    first = make_run(runs, "2024-01")  # path-only: alerts, paths
    announce(first)
    with dg.instance_for_test() as instance:
        assert verification(resources, instance) == (True, 2, 0)  # a new catalog: a full sync
        announce(make_run(runs, "2024-02", run_type="policy", policy_id="p1"))
        assert verification(resources, instance) == (True, 4, 0)  # the new run's 4 alone
        assert verification(resources, instance) == (True, 0, 0)  # nothing changed: nothing read
        paths = first / "truth" / "paths.parquet"
        data = bytearray(paths.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, other bytes: only a hash tells
        paths.write_bytes(bytes(data))
        assert verification(resources, instance) == (True, 0, 0)
        assert verification(resources, instance, tags={orch.FULL_SYNC_TAG: "full"}) == (False, 6, 1)


catalog_sync_sensor = build_catalog_sync_sensor(30)


def test_asset_uses_the_catalog_pool_and_the_job_selects_it():
    assert backtest_catalog.op.pool == orch.CATALOG_POOL == "catalog"
    assert {"catalog_duckdb", "run_store"} <= backtest_catalog.required_resource_keys
    defs = build_defs(Settings())
    job = defs.resolve_job_def("catalog_sync_job")
    assert job.asset_layer.executable_asset_keys == {dg.AssetKey("backtest_catalog")}
    dg.Definitions.validate_loadable(defs)


def test_settings_follow_the_environment_and_reach_the_resources():
    settings = Settings.from_env({})
    assert (settings.paths, settings.sensor_interval_s) == (
        ProjectPaths(runs_dir=Path("runs"), catalog_path=Path("data/backtest_catalog.duckdb")),
        30,
    )
    env = {"QUANTLAB_CATALOG": "/x/c.duckdb", "QUANTLAB_RUNS_DIR": "/x/runs", SENSOR_INTERVAL_ENV: "5"}
    settings = Settings.from_env(env)
    assert (settings.paths, settings.sensor_interval_s) == (ProjectPaths(Path("/x/runs"), Path("/x/c.duckdb")), 5)
    defs = build_defs(settings)
    assert defs.resources["catalog_duckdb"].database == "/x/c.duckdb"
    [sensor] = defs.sensors
    assert sensor.minimum_interval_seconds == 5
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_a_bad_sensor_interval_falls_back_and_is_reported_not_fatal(runs, resources):
    for bad in ("0", "-3", "soon"):
        settings = Settings.from_env({SENSOR_INTERVAL_ENV: bad})
        assert settings.sensor_interval_s == 30
        assert settings.problems and SENSOR_INTERVAL_ENV in settings.problems[0] and repr(bad) in settings.problems[0]
    sensor = build_defs(settings).sensors[0]  # the code location still loads, and the sensor still works
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=resources)
        assert isinstance(sensor(context), dg.RunRequest)


def tick(instance, resources, cursor):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"run_store": resources["run_store"], "catalog_duckdb": resources["catalog_duckdb"]},
    )
    return catalog_sync_sensor(context), context.cursor


def announce(run_dir: Path, change: str = "completed") -> None:
    """The journal line the run-directory writer appends for a change (the test made the change by hand)."""
    Journal(run_dir.parent.parent).append(run_dir.parent.name, key(run_dir).run_id, change)


def test_sensor_requests_a_sync_when_the_journal_grows_and_skips_otherwise(runs, resources):
    db = resources["catalog_duckdb"].database
    with dg.instance_for_test() as instance:
        first, cursor = tick(instance, resources, None)  # never synced: one initial sync
        assert isinstance(first, dg.RunRequest) and first.run_key.startswith("catalog-sync-1-")
        assert first.tags[orch.FULL_SYNC_TAG] == "incremental" and not Path(db).exists()
        sync_catalog(db, runs)
        skip, cursor = tick(instance, resources, cursor)
        assert isinstance(skip, dg.SkipReason) and "up to date" in skip.skip_message

        make_run(runs, status="running")  # a running run writes no journal line
        assert isinstance(tick(instance, resources, cursor)[0], dg.SkipReason)
        done = make_run(runs)
        announce(done)
        new, cursor = tick(instance, resources, cursor)
        assert isinstance(new, dg.RunRequest) and new.tags[orch.FULL_SYNC_TAG] == "incremental"
        # the requested sync failed (or has not run): the next tick asks again, under a new key
        again, cursor = tick(instance, resources, cursor)
        assert isinstance(again, dg.RunRequest) and again.run_key != new.run_key
        # … but never while one is queued or running
        queued = instance.add_run(dg.DagsterRun(job_name="catalog_sync_job", status=dg.DagsterRunStatus.STARTED))
        waiting, cursor = tick(instance, resources, cursor)
        assert isinstance(waiting, dg.SkipReason) and "queued or running" in waiting.skip_message
        instance.delete_run(queued.run_id)
        assert sync_catalog(db, runs).registered == [key(done)]
        assert isinstance(tick(instance, resources, cursor)[0], dg.SkipReason)


def test_sensor_requests_a_full_sync_when_directories_change_outside_the_journal(runs, resources, monkeypatch):
    db = resources["catalog_duckdb"].database
    kept, removed = make_run(runs), make_run(runs, "2024-02")
    sync_catalog(db, runs)
    with dg.instance_for_test() as instance:
        skip, cursor = tick(instance, resources, None)  # the first tick stats every directory: equal
        assert isinstance(skip, dg.SkipReason) and json.loads(cursor)["checked_at"] > 0
        shutil.rmtree(removed)  # by hand: no journal line
        assert isinstance(tick(instance, resources, cursor)[0], dg.SkipReason)  # not checked again yet
        monkeypatch.setattr(orch, "FULL_CHECK_EVERY_S", 0)
        full, cursor = tick(instance, resources, cursor)
        assert isinstance(full, dg.RunRequest) and full.tags[orch.FULL_SYNC_TAG] == "full"
        meta = materialize(resources, instance, tags=full.tags)
        assert (meta["full_sync"], meta["removed"], meta["total_runs"]) == (True, 1, 1)
        assert isinstance(tick(instance, resources, cursor)[0], dg.SkipReason)
    assert [r["run_id"] for r in query_runs(db)] == [key(kept).run_id]


def test_sensor_skips_when_the_runs_dir_does_not_exist(tmp_path):
    missing = {
        "run_store": RunStoreResource(runs_dir=str(tmp_path / "nope")),
        "catalog_duckdb": DuckDBResource(database=str(tmp_path / "c.duckdb")),
    }
    with dg.instance_for_test() as instance:
        result, cursor = tick(instance, missing, None)
    assert isinstance(result, dg.SkipReason) and "does not exist" in result.skip_message
    assert cursor is None


def test_sensor_request_runs_the_job_that_fills_the_catalog(runs, resources):
    done = make_run(runs)
    defs = dg.Definitions(
        assets=[backtest_catalog], jobs=[catalog_sync_job], sensors=[catalog_sync_sensor], resources=resources
    )
    with dg.instance_for_test() as instance:
        request, _ = tick(instance, resources, None)
        result = defs.resolve_job_def("catalog_sync_job").execute_in_process(instance=instance, tags=request.tags)
        assert result.success
    assert [r["run_id"] for r in query_runs(resources["catalog_duckdb"].database)] == [key(done).run_id]
