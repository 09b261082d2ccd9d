"""Run lifecycle: telling a dead writer from a live one, month states, repair, the run lock,
and the runs directory checks."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import polars as pl
import pytest

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.storage import lifecycle
from quantlab_pipeline.storage.layout import lock_path
from quantlab_pipeline.storage.lifecycle import (
    ensure_runs_dir,
    month_status,
    month_statuses,
    run_status,
    steps_to_finish,
)
from quantlab_pipeline.storage.run_dir import RunDirectory, WriteRefused
from quantlab_pipeline.storage.specs import write_spec
from quantlab_pipeline.storage.writer import RunLock, process_start, writer_gone, writer_record
from quantlab_pipeline_tests.test_run_dir import RUN_ID, complete_path_only, frame, make_spec, write


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def set_writer(rd: RunDirectory, **fields) -> None:
    """Rewrite the manifest's writer record, as another (possibly dead) process would have left it."""
    manifest = RunDirectory.read_manifest(rd.path)
    manifest["writer"].update(fields)
    (rd.path / "run.json").write_text(json.dumps(manifest))


@pytest.fixture
def rd(tmp_path) -> RunDirectory:
    return RunDirectory(tmp_path, "2024-01", RUN_ID)


# -- writer liveness ------------------------------------------------------------------------------


def test_this_process_is_a_live_writer():
    assert writer_gone(writer_record("dr-1")) is None
    assert process_start(os.getpid()) is not None


def test_a_dead_or_recycled_pid_on_this_host_is_a_gone_writer():
    record = writer_record(None)
    pid = dead_pid()
    assert writer_gone({**record, "pid": pid}) == f"writer pid {pid} on {record['host']} is gone"
    # pid alive but started at another time: the pid was reused by another process
    assert "now belongs to another process" in writer_gone({**record, "process_start": "1"})
    assert "rebooted" in writer_gone({**record, "boot_id": "another-boot"})
    assert writer_gone(None) == "no writer recorded"


def test_a_writer_on_another_host_is_judged_by_its_heartbeat():
    now = dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC)
    record = {**writer_record(None), "host": "elsewhere", "heartbeat_at": "2024-01-01T11:55:00.000Z"}
    assert writer_gone(record, now=now) is None
    gone = writer_gone({**record, "heartbeat_at": "2024-01-01T11:49:59.000Z"}, now=now)
    assert gone.startswith("writer pid") and "last heartbeat 2024-01-01T11:49:59.000Z" in gone
    assert "no readable heartbeat" in writer_gone({**record, "heartbeat_at": None}, now=now)


# -- month states ---------------------------------------------------------------------------------


def test_a_month_never_written_is_missing_and_reading_it_creates_nothing(tmp_path):
    runs = tmp_path / "runs"
    status = month_status(RunDirectory(runs, "2024-01", RUN_ID))
    assert (status.state, status.detail) == ("missing", None)
    assert not runs.exists()


def test_month_states_follow_the_manifest_and_the_writer(rd):
    spec = make_spec()
    rd.begin(spec)
    assert month_status(rd).state == "running"  # this process is the writer
    set_writer(rd, pid=dead_pid())
    status = month_status(rd)
    assert status.state == "interrupted" and status.detail.endswith("is gone")
    set_writer(rd, host="elsewhere", heartbeat_at="2000-01-01T00:00:00.000Z")
    assert month_status(rd).state == "interrupted"
    set_writer(rd, heartbeat_at=dt.datetime.now(dt.UTC).isoformat())
    assert month_status(rd).state == "running"

    try:
        raise RuntimeError("candles source vanished\nsecond line")
    except RuntimeError as exc:
        rd.record_failure(spec, phase="truth", exc=exc)
    assert (month_status(rd).state, month_status(rd).detail) == ("failed", "candles source vanished")
    rd.record_failure(spec, phase="truth", exc=KeyboardInterrupt(), reason="interrupted")
    assert (month_status(rd).state, month_status(rd).detail) == ("interrupted", "KeyboardInterrupt")

    complete_path_only(rd, spec)
    assert month_status(rd).to_dict() == {
        "month": "2024-01",
        "run_id": RUN_ID,
        "state": "completed",
        "path": str(rd.path),
        "detail": None,
    }
    (rd.path / "run.json").write_text("{not json")
    status = month_status(rd)
    assert status.state == "failed" and "unreadable manifest" in status.detail


def test_a_completed_manifest_without_marker_is_interrupted_once_its_writer_is_gone(rd):
    complete_path_only(rd, make_spec())
    (rd.path / "_SUCCESS").unlink()
    assert month_status(rd).state == "running"  # its writer (this process) may be finalizing
    set_writer(rd, pid=dead_pid())
    status = month_status(rd)
    assert status.state == "interrupted" and "finalize was cut short" in status.detail


def test_a_writer_that_ended_between_steps_leaves_the_month_incomplete_naming_what_is_left(rd):
    """A partial selection (`--select alerts` of a path-only month) ends cleanly after its step:
    not `interrupted` (nothing was cut short) but `incomplete`, with the steps and the command."""
    spec = make_spec()
    write(rd, spec, "alerts", frame(3))
    assert month_status(rd).state == "running"  # its writer (this process) may run the next step
    set_writer(rd, pid=dead_pid())
    status = month_status(rd)
    assert (status.state, status.detail) == (
        "incomplete",
        f"paths not materialized; run `quantlab runs resume {RUN_ID}`",
    )


def test_a_writer_gone_inside_a_step_leaves_the_month_interrupted(rd):
    spec = make_spec()
    write(rd, spec, "alerts", frame(3))
    rd.begin(spec, artifact="paths", phase="truth")  # the next step began, then its process died
    set_writer(rd, pid=dead_pid())
    status = month_status(rd)
    assert status.state == "interrupted" and "is gone" in status.detail


def test_a_held_lock_means_a_live_writer(rd):
    """A manifest from before writers were recorded: only the lock tells a live writer."""
    rd.begin(make_spec())
    manifest = RunDirectory.read_manifest(rd.path)
    del manifest["writer"]
    (rd.path / "run.json").write_text(json.dumps(manifest))
    assert month_status(rd).state == "interrupted"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from quantlab_pipeline.storage.writer import RunLock\n"
            "with RunLock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(30)",
            str(rd.lock.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert month_status(rd).state == "running"
    finally:
        holder.kill()
        holder.wait()
    assert month_status(rd).state == "interrupted"


def test_run_status_lists_every_month_of_the_window(tmp_path):
    spec = make_spec()  # 2024-01-10 .. 2024-02-20
    complete_path_only(RunDirectory(tmp_path, "2024-01", RUN_ID), spec)
    assert [(s.month, s.state) for s in run_status(tmp_path, spec)] == [
        ("2024-01", "completed"),
        ("2024-02", "missing"),
    ]
    open_ended = make_spec(window={"from": "2024-01-10"})
    assert [(s.month, s.state) for s in run_status(tmp_path, open_ended)] == [("2024-01", "completed")]


def test_month_statuses_tell_the_live_and_interrupted_runs_an_archive_must_not_remove(tmp_path):
    other = "1c8d9b5f-2e3a-4b4c-8d5e-6f7a8b9c0d1e"
    live = RunDirectory(tmp_path, "2024-01", RUN_ID)
    live.begin(make_spec())
    dead = RunDirectory(tmp_path, "2024-01", other)
    dead.begin(make_spec(run_id=other))
    set_writer(dead, pid=dead_pid())
    RunDirectory(tmp_path, "2024-02", RUN_ID).begin(make_spec())
    assert sorted((s.run_id, s.state) for s in month_statuses(tmp_path, "2024-01")) == sorted(
        [(RUN_ID, "running"), (other, "interrupted")]
    )


def test_a_directory_removed_while_its_run_computed_is_not_recreated(rd):
    spec = make_spec()
    alerts = write(rd, spec, "alerts", frame(3))
    shutil.rmtree(rd.path)  # archived while the truth step computed
    with pytest.raises(WriteRefused, match="has since been removed") as info:
        write(rd, spec, "paths", frame(2), inputs={"alerts": alerts["sha256"]})
    rd.record_failure(spec, phase="truth", exc=info.value)
    assert not rd.path.exists()


def test_steps_to_finish_are_the_missing_and_stale_artifacts_and_their_dependents(tmp_path):
    spec = make_spec("policy")
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    with pytest.raises(QuantlabError, match="no run spec"):  # never written, no spec file either
        steps_to_finish(rd)
    assert steps_to_finish(rd, spec) == ("alerts", "paths", "trades", "summary")
    write_spec(tmp_path, spec)
    assert steps_to_finish(rd) == ("alerts", "paths", "trades", "summary")

    alerts = write(rd, spec, "alerts", frame(3))
    paths = write(rd, spec, "paths", frame(2), inputs={"alerts": alerts["sha256"]})
    assert steps_to_finish(rd) == ("trades", "summary")
    up = {"alerts": alerts["sha256"], "paths": paths["sha256"]}
    trades = write(rd, spec, "trades", frame(2, "t"), inputs=up)
    write(rd, spec, "summary", frame(1, "s"), inputs={**up, "trades": trades["sha256"]})
    assert steps_to_finish(rd) == ()
    (rd.path / "truth/paths.parquet").unlink()  # paths lost: trades and summary depend on it
    assert steps_to_finish(rd) == ("paths", "trades", "summary")
    write(rd, spec, "paths", frame(2), inputs={"alerts": alerts["sha256"]})  # identical bytes
    assert steps_to_finish(rd) == ()
    write(rd, spec, "trades", frame(3, "t"), inputs=up)  # new trades: summary is stale
    assert steps_to_finish(rd) == ("summary",)


def test_spec_changed_compares_with_the_recorded_spec(rd):
    spec = make_spec()
    assert rd.spec_changed(spec) is False
    complete_path_only(rd, spec)
    assert rd.spec_changed(spec) is False
    assert rd.spec_changed(make_spec(horizon="1d")) is True


# -- repair ---------------------------------------------------------------------------------------


def test_repair_records_a_dead_writers_month_as_interrupted(rd):
    spec = make_spec()
    write(rd, spec, "alerts", frame(3))
    (rd.path / "inputs/.alerts.parquet.x1y2.tmp").write_bytes(b"half")
    set_writer(rd, phase="inputs", dagster_run_id="dr-7")  # died after alerts, before paths began
    assert rd.repair() == ["removed leftover inputs/.alerts.parquet.x1y2.tmp"]  # writer alive: untouched
    assert RunDirectory.read_manifest(rd.path)["status"] == "running"

    pid = dead_pid()
    set_writer(rd, pid=pid)
    assert rd.repair() == [f"recorded as interrupted: writer pid {pid} on {os.uname().nodename} is gone"]
    manifest = RunDirectory.read_manifest(rd.path)
    assert manifest["status"] == "failed"
    assert manifest["error"]["reason"] == "interrupted" and manifest["error"]["phase"] == "truth"
    assert manifest["error"]["dagster_run_id"] == "dr-7"
    assert manifest["error"]["message"].endswith("is gone; missing paths")
    row = pl.read_parquet(rd.path / "errors/errors.parquet").row(0, named=True)
    assert (row["phase"], row["reason"]) == ("truth", "interrupted")
    assert f"truth interrupted: writer pid {pid}" in (rd.path / "logs/stderr.txt").read_text()
    assert month_status(rd).state == "interrupted"
    assert rd.repair() == []  # failed stays failed until re-materialized
    # resuming: the truth step's success replaces the interruption's row
    write(
        rd, spec, "paths", frame(2), inputs={"alerts": manifest["artifacts"]["alerts"]["sha256"]}, errors=("truth", [])
    )
    assert month_status(rd).state == "completed"
    assert not (rd.path / "errors/errors.parquet").exists()


def test_repair_finalizes_a_complete_run_its_writer_left_unmarked(rd):
    spec = make_spec()
    complete_path_only(rd, spec)
    (rd.path / "_SUCCESS").unlink()  # killed before the marker's rename
    assert rd.repair() == ["finalized: every artifact present and current, _SUCCESS written"]
    assert month_status(rd).state == "completed"

    # killed after the last artifact's manifest save, before finalizing: running, complete
    manifest = RunDirectory.read_manifest(rd.path)
    manifest.update(status="running", completed_at=None)
    manifest["writer"]["pid"] = dead_pid()
    (rd.path / "run.json").write_text(json.dumps(manifest))
    (rd.path / "_SUCCESS").unlink()
    assert rd.repair() == ["finalized: every artifact present and current, _SUCCESS written"]
    assert RunDirectory.read_manifest(rd.path)["status"] == "completed"
    assert rd.repair() == []


# -- the run lock ---------------------------------------------------------------------------------


def test_the_run_lock_is_exclusive_reentrant_and_leaves_no_file(tmp_path):
    path = lock_path(tmp_path, "2024-01", RUN_ID)
    first, second = RunLock(path), RunLock(path)
    order: list[str] = []
    with first:
        with first:  # re-entrant in its thread
            assert path.exists() and second.held_elsewhere()

        def wait_for_it() -> None:
            with second:
                order.append("second")

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        time.sleep(0.2)
        order.append("first releases")
    waiter.join(5)
    assert order == ["first releases", "second"]
    assert not path.exists() and not second.held_elsewhere()


def test_waiters_on_a_released_lock_never_both_hold_it(tmp_path):
    """The holder unlinks the file as it releases; a waiter that wakes on the unlinked inode must
    retry on the path, or it and a newcomer would both think they hold the lock."""
    path = lock_path(tmp_path, "2024-01", RUN_ID)
    inside, overlaps = [0], []
    guard = threading.Lock()

    def worker() -> None:
        lock = RunLock(path)
        for _ in range(30):
            with lock:
                with guard:
                    inside[0] += 1
                    overlaps.append(inside[0])
                time.sleep(0.001)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(overlaps) == 120 and max(overlaps) == 1
    assert not path.exists()


# -- the runs directory ---------------------------------------------------------------------------


def test_ensure_runs_dir_creates_it_or_names_the_problem_in_one_line(tmp_path, monkeypatch):
    assert ensure_runs_dir(tmp_path / "a" / "runs") == tmp_path / "a" / "runs"
    assert (tmp_path / "a" / "runs").is_dir()
    afile = tmp_path / "file"
    afile.write_text("x")

    def problem(path) -> tuple[str, int]:
        with pytest.raises(QuantlabError) as info:
            ensure_runs_dir(path)
        return str(info.value), info.value.exit_code

    assert problem(afile) == (f"runs directory {afile}: not a directory", 2)
    assert problem(afile / "runs") == (f"runs directory {afile / 'runs'}: a parent is not a directory", 2)

    monkeypatch.setattr(lifecycle.os, "access", lambda path, mode: False)  # the tests run as root
    assert problem(tmp_path) == (f"runs directory {tmp_path}: not writable", 1)

    real = os.statvfs(tmp_path)

    class ReadOnly:
        f_flag = real.f_flag | os.ST_RDONLY

    monkeypatch.setattr(lifecycle.os, "statvfs", lambda path: ReadOnly)
    assert problem(tmp_path) == (f"runs directory {tmp_path}: read-only file system", 1)
