"""The completion journal and the incremental sync it drives (docs/catalog.md "Incremental sync")."""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path

import duckdb
import pytest

from quantlab_pipeline.core.errors import EnvironmentFault, QuantlabError
from quantlab_pipeline.storage import journal as journal_module
from quantlab_pipeline.storage.catalog import progress, query_runs, sync, sync_catalog, terminal_fingerprint
from quantlab_pipeline.storage.journal import Journal, Position
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline_tests.test_catalog import _DiskFull, key, make_run
from quantlab_pipeline_tests.test_run_dir import RUN_ID, complete_path_only, frame, make_spec, write

OTHER = "1c8d9b5f-2e3a-4b4c-8d5e-6f7a8b9c0d1e"


@pytest.fixture
def runs(runs_dir: Path) -> Path:
    """The runs directory, as a sync needs it: existing."""
    runs_dir.mkdir()
    return runs_dir


@pytest.fixture
def db(runs_dir: Path) -> Path:
    return runs_dir.parent / "catalog.duckdb"


def lines(runs: Path) -> list[tuple[str, str, str]]:
    end = Journal(runs).end()
    batch = Journal(runs).read(Position(end.journal_id, 1, 0)) if end else None
    return [(e.month, e.run_id, e.change) for e in batch.entries] if batch else []


def announced(runs: Path, run_dir: Path, change: str = "completed") -> Path:
    """A run directory made by hand, announced as the writer would."""
    Journal(runs).append(run_dir.parent.name, key(run_dir).run_id, change)
    return run_dir


# -- the journal ----------------------------------------------------------------------------------


def test_lines_are_read_from_a_position_on_with_the_position_of_each(runs):
    journal = Journal(runs)
    assert journal.end() is None and not (runs / "_journal").exists()  # reading creates nothing
    journal.append("2024-01", RUN_ID, "completed")
    start = journal.end()
    assert start.segment == 1 and start.offset == len((runs / "_journal" / "000000000001.jsonl").read_bytes())
    journal.append("2024-02", OTHER, "failed")
    journal.append("2024-01", RUN_ID, "reopened")
    batch = journal.read(start)
    assert [(e.month, e.run_id, e.change) for e in batch.entries] == [
        ("2024-02", OTHER, "failed"),
        ("2024-01", RUN_ID, "reopened"),
    ]
    assert batch.entries[0].position == start and batch.end == journal.end()
    assert journal.read(batch.entries[1].position).entries == batch.entries[1:]
    assert journal.read(batch.end).entries == []
    line = json.loads((runs / "_journal" / "000000000001.jsonl").read_text().splitlines()[0])
    assert set(line) == {"at", "month", "run_id", "change"}


def test_segments_rotate_and_applied_ones_are_removed(runs, monkeypatch):
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 300)  # two lines of ~128 bytes fill one
    journal = Journal(runs)
    journal.append("2024-01", RUN_ID, "completed")
    first = Position(journal.end().journal_id, 1, 0)
    for _ in range(4):
        journal.append("2024-01", RUN_ID, "reopened")
    assert sorted(p.name for p in (runs / "_journal").glob("*.jsonl")) == [
        "000000000001.jsonl",
        "000000000002.jsonl",
    ]  # 3 + 2 lines: the first segment took a third line before it reached 300 bytes
    batch = journal.read(first)
    assert [e.change for e in batch.entries] == ["completed", *["reopened"] * 4]
    assert [e.position.segment for e in batch.entries] == [1, 1, 1, 2, 2]
    journal.drop_before(batch.entries[3].position)
    assert [p.name for p in sorted((runs / "_journal").glob("*.jsonl"))] == ["000000000002.jsonl"]
    assert journal.read(first) is None  # lines after it are gone with its segment: a full sync
    assert [e.change for e in journal.read(batch.entries[3].position).entries] == ["reopened"] * 2


def test_a_line_a_killed_writer_left_half_written_is_skipped(runs):
    journal = Journal(runs)
    journal.append("2024-01", RUN_ID, "completed")
    start = Position(journal.end().journal_id, 1, 0)
    with open(runs / "_journal" / "000000000001.jsonl", "ab") as fh:
        fh.write(b'{"at": "2024-01-01", "month": "2024-0')  # killed mid-append
    assert [e.run_id for e in journal.read(start).entries] == [RUN_ID]
    journal.append("2024-02", OTHER, "failed")  # the next append ends the torn line first
    assert [(e.month, e.run_id) for e in journal.read(start).entries] == [("2024-01", RUN_ID), ("2024-02", OTHER)]
    with open(runs / "_journal" / "000000000001.jsonl", "ab") as fh:
        fh.write(b'{"month": "../..", "run_id": "x", "change": "completed"}\n[1]\n')
    assert len(journal.read(start).entries) == 2  # never a path built from a bad month or run id


def test_a_position_in_another_journal_is_not_followed(runs, tmp_path):
    Journal(runs).append("2024-01", RUN_ID, "completed")
    position = Journal(runs).end()
    shutil.rmtree(runs / "_journal")
    Journal(runs).append("2024-01", RUN_ID, "completed")
    assert Journal(runs).end().journal_id != position.journal_id
    assert Journal(runs).read(position) is None


def test_an_append_that_cannot_be_written_is_one_line_and_the_change_is_not_made(tmp_path, monkeypatch):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    write(rd, spec, "alerts", frame(3))
    real_write = os.write

    def full_disk(fd, data):
        if b'"change"' in bytes(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(journal_module.os, "write", full_disk)
    alerts = RunDirectory.read_manifest(rd.path)["artifacts"]["alerts"]
    with pytest.raises(EnvironmentFault, match="_journal: cannot write: no space left on device"):
        write(rd, spec, "paths", frame(2), inputs={"alerts": alerts["sha256"]})
    assert not (rd.path / "_SUCCESS").exists()  # not finalized: the journal never misses a change


# -- the writer announces its changes ---------------------------------------------------------------


def test_the_run_directory_announces_each_change_the_catalog_cares_about(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    write(rd, spec, "alerts", frame(3))
    assert lines(tmp_path) == []  # a running month is not the catalog's business
    alerts = RunDirectory.read_manifest(rd.path)["artifacts"]["alerts"]
    write(rd, spec, "paths", frame(2), inputs={"alerts": alerts["sha256"]})
    write(rd, spec, "paths", frame(2), inputs={"alerts": alerts["sha256"]})  # re-materialized: reopened, completed
    rd.record_failure(spec, phase="truth", exc=RuntimeError("boom"))
    rd.begin(spec)  # a failed month reopened
    rd.remove("deleted")
    assert [change for _, _, change in lines(tmp_path)] == [
        "completed",
        "reopened",
        "completed",
        "failed",
        "reopened",
        "deleted",
    ]
    assert {(m, r) for m, r, _ in lines(tmp_path)} == {("2024-01", RUN_ID)}
    assert not rd.path.exists()


# -- the incremental sync ---------------------------------------------------------------------------


def test_an_incremental_sync_reads_only_the_directories_the_journal_names(runs, db, monkeypatch):
    old = [announced(runs, make_run(runs, f"2024-{m:02d}")) for m in range(1, 4)]
    first = sync_catalog(db, runs)
    assert first.full and len(first.registered) == 3  # a new catalog: everything, hashes verified
    new = announced(runs, make_run(runs, "2024-02"))
    read: list[str] = []
    real = sync.read_terminal
    monkeypatch.setattr(sync, "read_terminal", lambda m, r, d, v: (read.append(r), real(m, r, d, v))[1])
    report = sync_catalog(db, runs)
    assert (report.full, report.registered, report.unchanged, read) == (False, [key(new)], 0, [key(new).run_id])
    assert report.position == Journal(runs).end() and report.stats.total_runs == 4
    assert progress.read_mark(db).position == report.position
    again = sync_catalog(db, runs)  # nothing announced since: nothing read
    assert (again.full, again.registered, again.unchanged, len(read)) == (False, [], 0, 1)
    assert {r["run_id"] for r in query_runs(db)} == {key(d).run_id for d in [*old, new]}


def test_changes_announced_by_the_writer_reach_the_catalog_incrementally(tmp_path, db):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    complete_path_only(rd, spec)
    assert sync_catalog(db, tmp_path).registered == [(RUN_ID, "2024-01")]
    rd.record_failure(spec, phase="truth", exc=RuntimeError("oom"))
    report = sync_catalog(db, tmp_path)
    assert (report.full, report.updated) == (False, [(RUN_ID, "2024-01")])
    assert [(r["status"], r["error_message"]) for r in query_runs(db)] == [("failed", "oom")]
    rd.begin(spec)  # reopened: running, so no longer in the catalog
    assert sync_catalog(db, tmp_path).removed == [(RUN_ID, "2024-01")]
    complete_path_only(rd, spec)
    assert sync_catalog(db, tmp_path).registered == [(RUN_ID, "2024-01")]
    rd.remove("deleted")
    report = sync_catalog(db, tmp_path)
    assert (report.full, report.removed, query_runs(db)) == (False, [(RUN_ID, "2024-01")], [])


def test_a_change_still_in_progress_is_read_again_by_the_next_sync(runs, db):
    done = announced(runs, make_run(runs))
    sync_catalog(db, runs)
    # a writer holds the month's run lock: it announced a finalize and has not written _SUCCESS yet
    writer = RunDirectory(runs, "2024-01", OTHER)
    run_dir = make_run(runs, run_id=OTHER, marker=False)
    with writer.lock:
        Journal(runs).append("2024-01", OTHER, "completed")
        line = Journal(runs).read(progress.read_mark(db).position).entries[0].position
        report = sync_catalog(db, runs)
        assert (report.skipped, report.position) == ([key(run_dir)], line)  # not past its line
        shutil.rmtree(run_dir)
        make_run(runs, run_id=OTHER)  # the finalize lands: run.json completed, then _SUCCESS
    report = sync_catalog(db, runs)
    assert (report.full, report.registered, report.position) == (False, [key(run_dir)], Journal(runs).end())
    assert {r["run_id"] for r in query_runs(db)} == {key(done).run_id, OTHER}


def test_the_position_is_kept_with_the_rows_a_failed_sync_does_not_move_it(runs, db):
    sync_catalog(db, runs)
    new = announced(runs, make_run(runs))

    def full_disk():
        from contextlib import contextmanager

        @contextmanager
        def connect():
            yield _DiskFull(duckdb.connect(str(db)))

        return connect

    with pytest.raises(QuantlabError, match="No space left on device"):
        sync_catalog(db, runs, connect=full_disk())
    assert sync_catalog(db, runs).registered == [key(new)]  # the line is read again


def test_a_full_sync_sees_what_no_line_announced_and_an_incremental_one_does_not(runs, db):
    kept, gone = announced(runs, make_run(runs)), announced(runs, make_run(runs, "2024-02"))
    sync_catalog(db, runs)
    shutil.rmtree(gone)  # by hand
    assert sync_catalog(db, runs).removed == []
    assert terminal_fingerprint(runs)[0] != progress.read_mark(db).digest  # what the sensor's safety net sees
    report = sync_catalog(db, runs, full=True)
    assert (report.full, report.removed) == (True, [key(gone)])
    assert [r["run_id"] for r in query_runs(db)] == [key(kept).run_id]
    assert terminal_fingerprint(runs)[0] == progress.read_mark(db).digest


def test_a_lost_position_or_a_moved_runs_dir_falls_back_to_a_full_sync(runs, db, tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 1)  # every line its own segment
    announced(runs, make_run(runs))
    assert sync_catalog(db, runs).full
    announced(runs, make_run(runs))
    assert not sync_catalog(db, runs).full
    for segment in (runs / "_journal").glob("*.jsonl"):
        segment.unlink()  # another catalog removed what it had applied
    announced(runs, make_run(runs))
    assert sync_catalog(db, runs).full
    moved = tmp_path / "moved"
    runs.rename(moved)
    report = sync_catalog(db, moved)
    assert report.full and len(report.updated) == 3  # every stored path follows the move


def test_the_digest_follows_every_kind_of_change_as_a_fresh_count_would(runs, db):
    a, b = announced(runs, make_run(runs)), announced(runs, make_run(runs, status="failed"))
    bad = announced(runs, make_run(runs, "2024-02"))
    (bad / "_SUCCESS").write_text("{}")  # rejected
    sync_catalog(db, runs)
    assert progress.read_mark(db).digest == terminal_fingerprint(runs)[0]
    steps = [
        lambda: (a / "run.json").touch(),  # refreshed fingerprint
        lambda: shutil.rmtree(b),  # removed
        lambda: (bad / "_SUCCESS").unlink(),  # a rejection that turns into a skip
        lambda: make_run(runs, "2024-03", run_id=str(uuid.uuid4())),  # registered
    ]
    for step in steps:
        step()
        for run_dir in runs.glob("*/run_id=*"):
            Journal(runs).append(run_dir.parent.name, key(run_dir).run_id, "completed")
        Journal(runs).append("2024-01", key(b).run_id, "deleted")
        assert not sync_catalog(db, runs).full
        assert progress.read_mark(db).digest == terminal_fingerprint(runs)[0]
    with duckdb.connect(str(db)) as conn:
        conn.execute("DELETE FROM catalog_meta WHERE key = 'terminal_digest'")  # a catalog from before digests
    sync_catalog(db, runs)
    assert progress.read_mark(db).digest == terminal_fingerprint(runs)[0]
