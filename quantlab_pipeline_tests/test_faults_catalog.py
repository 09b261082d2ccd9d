"""The fault-injection suite, catalog side (docs/catalog.md): races between `catalog-archive` and a
live backtest driven deterministically through fault points, a read-only reader holding the
catalog against the Dagster sync, a catalog on a read-only or full file system, and the refusals
of bad `catalog-*` input. Every case is a real `quantlab` or `dagster` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster_duckdb import DuckDBResource

from quantlab_pipeline.orchestration.catalog import backtest_catalog, build_catalog_sync_sensor
from quantlab_pipeline.orchestration.resources import RunStoreResource
from quantlab_pipeline.storage.journal import Journal
from quantlab_pipeline.storage.layout import lock_path
from quantlab_pipeline.storage.writer import RunLock
from quantlab_pipeline_tests.helpers import BIN, child_env, run_cli
from quantlab_pipeline_tests.test_catalog import _HOLD_CATALOG, _release
from quantlab_pipeline_tests.test_faults import POLICY, WINDOW, backtest, only_run_id, status

pytestmark = pytest.mark.slow

BACKTEST = ["backtest", "policy", "--calls-from-duckdb", "data/alerts.duckdb", *WINDOW, *POLICY]


def start(workdir: Path, args: list[str], fault: str) -> subprocess.Popen:
    """A `quantlab` command in its own process (no warm server: the pid is the one the fault stops)."""
    env = child_env(DAGSTER_HOME=str(workdir / ".dagster_home"), NO_COLOR="1", COLUMNS="200")
    env.update(QUANTLAB_WARM_SERVER="off", QUANTLAB_FAULT=fault)
    return subprocess.Popen(
        [str(BIN / "quantlab"), *args], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_until(predicate, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def stopped(proc: subprocess.Popen) -> bool:
    """Whether the process stopped itself at its fault point (SIGSTOP)."""
    assert proc.poll() is None, proc.communicate()
    return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- catalog-archive and a live backtest --------------------------------------------------------------


def test_an_archive_that_takes_the_month_first_waits_out_a_live_run_and_leaves_it_untouched(workdir):
    """The race of a refused archive failing a backtest: the archive holds the month when the run
    writes its next step. The write waits for the archive to decide, the archive refuses, the run
    completes."""
    run = start(workdir, BACKTEST, "STOP:step.paths")  # alerts written: a live writer, no lock held
    wait_until(lambda: stopped(run), "the backtest to stop before its paths step")
    run_id = only_run_id(workdir)
    archive = start(
        workdir, ["backtest", "catalog-archive", "--month", "2024-01", "--to", "a.tar.gz"], "STOP:archive.locked"
    )
    wait_until(lambda: stopped(archive), "the archive to stop holding the month's lock")
    run.send_signal(signal.SIGCONT)  # the paths step begins: it takes its run lock, then waits for the month
    run_lock = RunLock(lock_path(workdir / "runs", "2024-01", run_id))
    wait_until(run_lock.held_elsewhere, "the backtest to take its run lock")
    archive.send_signal(signal.SIGCONT)
    code, out, err = finish(archive)
    assert code == 2 and "still being written" in one_line(err) and run_id in err, out + err
    code, out, err = finish(run)
    assert code == 0 and "Traceback" not in out + err and "WriteRefused" not in out + err, out + err
    assert [m["state"] for m in status(workdir, run_id)] == ["completed"]
    assert not (workdir / "a.tar.gz").exists()


def test_an_archive_that_meets_a_write_in_progress_refuses_and_the_write_completes(workdir):
    run = start(workdir, BACKTEST, "STOP:paths.parquet")  # inside the write: run and month locks held
    wait_until(lambda: stopped(run), "the backtest to stop inside its paths write")
    proc = run_cli(["backtest", "catalog-archive", "--month", "2024-01", "--to", "a.tar.gz"], workdir)
    assert proc.returncode == 2 and "writing into it right now" in one_line(proc.stderr)
    run.send_signal(signal.SIGCONT)
    code, out, err = finish(run)
    assert code == 0, out + err
    assert [m["state"] for m in status(workdir, only_run_id(workdir))] == ["completed"]


def test_archive_refuses_an_interrupted_month_unless_asked(workdir):
    killed = backtest(workdir, "KILL:paths.parquet")
    assert killed.returncode == -9
    run_id = only_run_id(workdir)
    archive = ["backtest", "catalog-archive", "--month", "2024-01", "--to", "a.tar.gz"]
    refused = run_cli(archive, workdir)
    assert refused.returncode == 2
    line = one_line(refused.stderr)
    assert "interrupted run(s)" in line and f"quantlab runs resume {run_id}" in line and "--include-interrupted" in line
    assert (workdir / "runs" / "2024-01" / f"run_id={run_id}").is_dir() and not (workdir / "a.tar.gz").exists()
    done = run_cli([*archive, "--include-interrupted"], workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (workdir / "runs" / "2024-01").exists() and (workdir / "a.tar.gz").is_file()


# -- the catalog held, read-only, full ---------------------------------------------------------------


def test_a_read_only_reader_fails_the_dagster_sync_quickly_in_one_line_and_the_sensor_retries(workdir):
    assert backtest(workdir).returncode == 0
    runs, db = workdir / "runs", workdir / "data" / "backtest_catalog.duckdb"
    assert run_cli(["backtest", "catalog-sync"], workdir).returncode == 0
    run_id = only_run_id(workdir)
    Journal(runs).append("2024-01", run_id, "completed")  # a change the catalog has not applied
    resources = {"run_store": RunStoreResource(runs_dir=str(runs)), "catalog_duckdb": DuckDBResource(database=str(db))}
    sensor = build_catalog_sync_sensor(30)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_CATALOG, str(db), "ro"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    try:
        with dg.instance_for_test() as instance:
            first = sensor(dg.build_sensor_context(instance=instance, resources=resources))
            assert isinstance(first, dg.RunRequest)
            started = time.monotonic()
            result = dg.materialize(
                [backtest_catalog], resources=resources, instance=instance, tags=first.tags, raise_on_error=False
            )
            elapsed = time.monotonic() - started
            assert not result.success and elapsed < 40, elapsed  # WRITE_TIMEOUT_S = 15 s, not ~105 s of retries
            [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
            message = failure.step_failure_data.error.message
            assert "is held open by " in message and f"(PID {holder.pid}) for more than 15s" in message, message
            assert "IOException" not in message and len(message.strip().splitlines()) == 1, message
            retry = sensor(
                dg.build_sensor_context(instance=instance, resources=resources, cursor=json.dumps({"seq": 1}))
            )
            assert isinstance(retry, dg.RunRequest) and retry.run_key != first.run_key  # asked again, next tick
    finally:
        _release(holder)
    with dg.instance_for_test() as instance:
        assert dg.materialize([backtest_catalog], resources=resources, instance=instance).success
        skip = sensor(dg.build_sensor_context(instance=instance, resources=resources, cursor=json.dumps({"seq": 2})))
        assert isinstance(skip, dg.SkipReason)


def _mount(path: Path, options: str) -> None:
    path.mkdir(exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'})")


@pytest.fixture
def mounts(tmp_path):
    made: list[Path] = []

    def mount(name: str, options: str) -> Path:
        path = tmp_path / name
        _mount(path, options)
        made.append(path)
        return path

    yield mount
    for path in reversed(made):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_catalog_on_a_read_only_file_system_is_one_line_exit_1(workdir, mounts):
    (workdir / "runs").mkdir()
    fs = mounts("catalog-fs", "size=4m")
    assert run_cli(["backtest", "catalog-sync", "--duckdb", str(fs / "c.duckdb")], workdir).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    for args in (["--duckdb", str(fs / "c.duckdb")], ["--duckdb", str(fs / "new" / "c.duckdb")]):
        proc = run_cli(["backtest", "catalog-sync", *args], workdir)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "read-only file system" in one_line(proc.stderr).lower()


def test_a_full_disk_under_the_catalog_is_one_line_exit_1(workdir, mounts):
    assert backtest(workdir).returncode == 0
    fs = mounts("tiny-catalog", "size=64k")
    proc = run_cli(["backtest", "catalog-sync", "--duckdb", str(fs / "c.duckdb")], workdir)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = one_line(proc.stderr)
    assert "no space left on device" in line.lower() and str(fs / "c.duckdb") in line


def test_catalog_sync_names_a_runs_dir_that_is_a_file(workdir):
    proc = run_cli(["backtest", "catalog-sync", "--runs-dir", "data/alerts.duckdb"], workdir)
    assert proc.returncode == 2 and "runs directory data/alerts.duckdb is not a directory" in one_line(proc.stderr)
    assert not (workdir / "data" / "backtest_catalog.duckdb").exists()


def test_a_journal_append_killed_with_its_lock_held_blocks_nothing(workdir):
    killed = backtest(workdir, "KILL:journal")  # the finalize's line: killed before it is written
    assert killed.returncode == -9
    run_id = only_run_id(workdir)
    assert [m["state"] for m in status(workdir, run_id)] == ["interrupted"]  # never marked: the line comes first
    resumed = run_cli(["runs", "resume", run_id], workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    synced = run_cli(["backtest", "catalog-sync"], workdir)
    assert synced.returncode == 0 and "Registered 1 run" in synced.stdout, synced.stdout + synced.stderr
    assert os.listdir(workdir / "runs" / "_journal")
