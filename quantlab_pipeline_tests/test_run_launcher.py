"""The local run launcher's worker health check, which run monitoring asks about every started run
(docs/deployment.md "Running on a cluster", run monitoring)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus, asset, instance_for_test, materialize

from quantlab_pipeline.orchestration.dagster_adapter import WorkerStatus, private
from quantlab_pipeline.orchestration.resources import RunStoreResource
from quantlab_pipeline.orchestration.run_launcher import RUN_WORKER_TAG, LocalRunLauncher, run_worker
from quantlab_pipeline.storage.writer import process_start, writer_record

create_run_for_test = private("dagster._core.test_utils", "create_run_for_test")
monitor_started_run = private("dagster._daemon.monitoring.run_monitoring", "monitor_started_run")
PROJECT = Path(__file__).resolve().parents[1]
LAUNCHER = {"module": "quantlab_pipeline.orchestration.run_launcher", "class": "LocalRunLauncher"}


@pytest.fixture
def instance(tmp_path) -> Iterator[DagsterInstance]:
    with instance_for_test(temp_dir=str(tmp_path), overrides={"run_launcher": LAUNCHER}) as instance:
        yield instance


@pytest.fixture
def launcher(instance) -> LocalRunLauncher:
    assert isinstance(instance.run_launcher, LocalRunLauncher)
    assert instance.run_launcher.supports_check_run_worker_health
    return instance.run_launcher


@pytest.fixture
def child() -> Iterator[subprocess.Popen]:
    """A live process other than this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def started_run(instance: DagsterInstance, worker: dict[str, Any] | None = None, *, bound: bool = True):
    """A `STARTED` run whose worker tag says `worker` (this process's record with those changes)."""
    run = create_run_for_test(instance, job_name="policy_job", status=DagsterRunStatus.STARTED)
    if worker is not None:
        identity = {**writer_record(run.run_id if bound else "parent-run"), **worker}
        instance.add_run_tags(run.run_id, {RUN_WORKER_TAG: json.dumps(identity)})
    fresh = instance.get_run_by_id(run.run_id)
    assert fresh is not None
    return fresh


def test_a_run_records_its_worker_once_when_its_resources_are_set_up(instance, tmp_path):
    @asset
    def needs_the_store(context, run_store: RunStoreResource) -> int:
        # While the run executes, its worker (this process) is recorded and checks as alive.
        run = instance.get_run_by_id(context.run_id)
        assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        return 1

    result = materialize(
        [needs_the_store], resources={"run_store": RunStoreResource(runs_dir=str(tmp_path))}, instance=instance
    )
    run = instance.get_run_by_id(result.run_id)
    own = writer_record(result.run_id)
    assert run_worker(run) == {k: own[k] for k in ("host", "pid", "process_start", "boot_id", "dagster_run_id")}
    # A tag the Runs page hides (Dagster's hidden prefix): it is for run monitoring, not for people.
    assert RUN_WORKER_TAG.startswith(".dagster/")


def test_a_live_worker_is_running(instance, launcher, child):
    health = launcher.check_run_worker_health(
        started_run(instance, {"pid": child.pid, "process_start": process_start(child.pid)})
    )
    assert health.status == WorkerStatus.RUNNING
    assert health.run_worker_id == f"pid {child.pid} on {writer_record(None)['host']}"


def test_a_dead_worker_is_failed_naming_its_pid_and_host(instance, launcher, child):
    run = started_run(instance, {"pid": child.pid, "process_start": process_start(child.pid)})
    host = writer_record(None)["host"]
    child.kill()
    # Exited but not reaped yet (a zombie: what an orphan stays under an init that never reaps),
    # then gone.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    zombie = launcher.check_run_worker_health(run)
    child.wait()
    gone = launcher.check_run_worker_health(run)
    for health in (zombie, gone):
        assert health.status == WorkerStatus.FAILED
        assert health.msg == f"run worker died: writer pid {child.pid} on {host} is gone"


def test_a_reused_pid_is_a_dead_worker(instance, launcher):
    # This process's pid, but the worker recorded started at another time: the pid was reused.
    health = launcher.check_run_worker_health(started_run(instance, {"process_start": "1"}))
    assert health.status == WorkerStatus.FAILED
    assert "the pid now belongs to another process" in (health.msg or "")


def test_a_worker_on_another_host_is_left_running(instance, launcher):
    # Dagster fails a run on any status but RUNNING or SUCCESS; only that host can tell.
    health = launcher.check_run_worker_health(started_run(instance, {"host": "elsewhere", "pid": 999_999}))
    assert health.status == WorkerStatus.RUNNING
    assert "pid 999999 on elsewhere cannot be checked from" in (health.msg or "")


def test_a_run_whose_worker_has_not_named_itself_is_running(instance, launcher):
    assert launcher.check_run_worker_health(started_run(instance)).status == WorkerStatus.RUNNING
    # Tags copied from a parent run (a re-execution) describe the parent's worker, not this one's.
    copied = started_run(instance, {"process_start": "1"}, bound=False)
    assert run_worker(copied) is None
    assert launcher.check_run_worker_health(copied).status == WorkerStatus.RUNNING


def test_run_monitoring_fails_the_run_of_a_dead_worker_with_the_reason(instance, child):
    run = started_run(instance, {"pid": child.pid, "process_start": process_start(child.pid)})
    record = instance.get_run_record_by_id(run.run_id)
    # The workspace is only used to resume a run, which this launcher does not.
    monitor_started_run(instance, None, record, logging.getLogger("test"))
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED

    child.kill()
    child.wait()
    monitor_started_run(instance, None, record, logging.getLogger("test"))
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    messages = [e.message for e in instance.all_logs(run.run_id)]
    assert any(
        m.startswith("Detected run worker status FAILED: 'run worker died: writer pid") and f"pid {child.pid} on" in m
        for m in messages
    ), messages


def test_the_projects_instance_uses_the_local_launcher(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # dagster.yaml's state paths are relative to the working directory
    (tmp_path / "home").mkdir()
    shutil.copy(PROJECT / "dagster.yaml", tmp_path / "home" / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        assert isinstance(instance.run_launcher, LocalRunLauncher)
        assert instance.run_monitoring_enabled
