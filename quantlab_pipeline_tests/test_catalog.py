"""The DuckDB catalog: reconciling sync, queries, concurrency, archive (docs/catalog.md "The catalog")."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quantlab_pipeline.core.errors import QuantlabError, SpecError
from quantlab_pipeline.core.spec import month_bounds
from quantlab_pipeline.storage import tarball
from quantlab_pipeline.storage.atomic import sha256_bytes, sha256_file
from quantlab_pipeline.storage.catalog import (
    CATALOG_SCHEMA_VERSION,
    RunFilter,
    RunKey,
    archive,
    archive_month,
    catalog_stats,
    connection,
    get_artifact_path,
    progress,
    query_artifacts,
    query_runs,
    rejected_runs,
    sync,
    sync_catalog,
    terminal_fingerprint,
    validation,
)
from quantlab_pipeline.storage.layout import ARTIFACT_PATHS, REQUIRED_ARTIFACTS

UTC = dt.UTC


# -- fixtures: run directories as the run-dir writer leaves them ---------------------------------


def write_manifest(run_dir: Path, manifest: dict, *, marker: bool) -> None:
    """run.json (indented, like the writer), then `_SUCCESS` carrying its sha256 when `marker`."""
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    (run_dir / "run.json").write_bytes(data)
    marker_path = run_dir / "_SUCCESS"
    if marker:
        marker_path.write_text(
            json.dumps(
                {
                    "run_id": manifest["run_id"],
                    "month": manifest["month"],
                    "completed_at": manifest["completed_at"],
                    "manifest_sha256": sha256_bytes(data),
                    "writer": "test",
                }
            )
        )
    else:
        marker_path.unlink(missing_ok=True)


def make_run(
    runs: Path,
    month: str = "2024-01",
    *,
    run_id: str | None = None,
    run_type: str = "path-only",
    status: str = "completed",
    created_at: str = "2024-02-01T10:00:00Z",
    policy_id: str | None = None,
    git_branch: str | None = "main",
    calls_count: int = 3,
    artifacts: tuple[str, ...] | None = None,
    marker: bool | None = None,
) -> Path:
    """A run directory with tiny real Parquet artifacts; sizes and sha256 are the files' own."""
    run_id = run_id or str(uuid.uuid4())
    run_dir = runs / month / f"run_id={run_id}"
    run_dir.mkdir(parents=True)
    if artifacts is None:
        artifacts = REQUIRED_ARTIFACTS[run_type] if status == "completed" else ()
    recorded = {}
    for name in artifacts:
        rel = ARTIFACT_PATHS[name]
        path = run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"run_id": [run_id] * 3, "x": [1, 2, 3]}), path)
        recorded[name] = {
            "path": rel,
            "rows": 3,
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "inputs": {},
        }
    first, last = month_bounds(month)
    manifest = {
        "run_id": run_id,
        "month": month,
        "run_type": run_type,
        "status": status,
        "created_at": created_at,
        "started_at": created_at,
        "completed_at": "2024-02-01T10:05:00Z" if status == "completed" else None,
        "schema_version": {"manifest": "1.0.0", "artifacts": "1.0.0"},
        "spec": {"run_id": run_id, "run_type": run_type, "interval": "5m", "policy_id": policy_id},
        "dataset": {"from": first.isoformat(), "to": last.isoformat(), "interval": "5m", "calls_count": calls_count},
        "provenance": {
            "git_commit": "abc123",
            "git_branch": git_branch,
            "git_dirty": False,
            "quantlab_version": "0.1.0",
            "dagster_runs": {},
        },
        "timing": {"alerts_ms": 12, "paths_ms": 40, "total_ms": 52},
        "artifacts": recorded,
        "logs": {"stdout": "logs/stdout.txt", "stderr": "logs/stderr.txt"},
    }
    if status == "failed":
        manifest["error"] = {"message": "boom", "phase": "truth"}
    write_manifest(run_dir, manifest, marker=status == "completed" if marker is None else marker)
    return run_dir


def load(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def key(run_dir: Path) -> RunKey:
    return RunKey(run_dir.name.removeprefix("run_id="), run_dir.parent.name)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "backtest_catalog.duckdb"


def table(db: Path, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as conn:
        return conn.execute(sql, list(params)).fetchall()


# -- registration ---------------------------------------------------------------------------------


def test_first_sync_initializes_and_registers_a_completed_run(runs, db):
    run_dir = make_run(runs, calls_count=3)
    report = sync_catalog(db, runs)
    assert report.initialized
    assert report.registered == [key(run_dir)]
    assert (report.updated, report.removed, report.skipped, report.rejected) == ([], [], [], [])
    # seed block: 1 run, completed 1, failed 0, path-only 1; artifacts alerts + paths = 2
    stats = report.stats
    assert (stats.total_runs, stats.runs_by_status) == (1, {"completed": 1, "failed": 0})
    assert stats.runs_by_type == {"path-only": 1}
    assert (stats.total_artifacts, stats.artifacts_by_type) == (2, {"alerts": 1, "paths": 1})

    [row] = query_runs(db)
    assert row["run_id"] == key(run_dir).run_id and row["month"] == "2024-01"
    assert (row["run_type"], row["status"], row["calls_count"], row["interval"]) == ("path-only", "completed", 3, "5m")
    assert row["created_at"] == dt.datetime(2024, 2, 1, 10, 0, tzinfo=UTC)
    assert row["completed_at"] == dt.datetime(2024, 2, 1, 10, 5, tzinfo=UTC)
    assert (row["window_from"], row["window_to"]) == (dt.date(2024, 1, 1), dt.date(2024, 1, 31))
    assert (row["git_commit"], row["git_branch"], row["git_dirty"]) == ("abc123", "main", False)
    assert (row["timing_alerts_ms"], row["timing_paths_ms"], row["timing_trades_ms"], row["timing_total_ms"]) == (
        12,
        40,
        None,
        52,
    )
    assert row["run_dir"] == str(run_dir.resolve()) and Path(row["run_dir"]).is_absolute()
    assert row["manifest_sha256"] == sha256_file(run_dir / "run.json")
    assert json.loads(row["spec_json"])["run_type"] == "path-only"
    assert "fingerprint" not in row

    arts = table(db, "SELECT artifact_type, path, rows, bytes, sha256 FROM artifacts ORDER BY artifact_type")
    for kind, path, n, size, sha in arts:
        on_disk = run_dir / ARTIFACT_PATHS[kind]
        assert (path, n, size, sha) == (str(on_disk.resolve()), 3, on_disk.stat().st_size, sha256_file(on_disk))
    assert [a[0] for a in arts] == ["alerts", "paths"]


def test_catalog_records_its_schema_version(runs, db):
    sync_catalog(db, runs)
    assert table(db, "SELECT value FROM catalog_meta WHERE key = 'schema_version'") == [(CATALOG_SCHEMA_VERSION,)]
    tables = {t for (t,) in table(db, "SELECT table_name FROM information_schema.tables")}
    assert {"runs", "artifacts", "rejected_runs", "catalog_meta"} <= tables


def test_unknown_catalog_schema_version_is_a_one_line_error(runs, db):
    sync_catalog(db, runs)
    with duckdb.connect(str(db)) as conn:
        conn.execute("UPDATE catalog_meta SET value = '99'")
    for action in (lambda: sync_catalog(db, runs), lambda: query_runs(db)):
        with pytest.raises(QuantlabError, match="schema version '99'") as err:
            action()
        assert "\n" not in str(err.value)


def test_second_sync_changes_nothing_and_reads_no_manifest(runs, db, monkeypatch):
    make_run(runs)
    make_run(runs, status="failed")
    make_run(runs, status="running")
    first = sync_catalog(db, runs)
    assert (len(first.registered), len(first.skipped)) == (2, 1)
    before = table(db, "SELECT * FROM runs ORDER BY run_id")

    def no_reads(path):
        raise AssertionError(f"unchanged run re-read {path}")

    def no_writes(*args):
        raise AssertionError("a no-op sync opened a write transaction")

    monkeypatch.setattr(
        validation, "read_json_object", no_reads_for_known(first, no_reads, validation.read_json_object)
    )
    monkeypatch.setattr(sync, "_apply", no_writes)
    monkeypatch.setattr(validation, "sha256_file", no_reads)
    second = sync_catalog(db, runs)
    assert (second.registered, second.updated, second.removed, second.rejected) == ([], [], [], [])
    assert (second.unchanged, len(second.skipped), second.initialized) == (2, 1, False)
    assert table(db, "SELECT * FROM runs ORDER BY run_id") == before


def no_reads_for_known(report, fail, real):
    """A `read_json_object` that fails for directories the first sync registered (their stat is
    unchanged, so reading them would be wasted work) and reads the others."""
    known = {str(k) for k in report.registered}

    def read(path: Path):
        if f"{path.parent.parent.name}/{path.parent.name}" in known:
            fail(path)
        return real(path)

    return read


def test_touching_run_json_without_changing_it_is_not_an_update(runs, db):
    run_dir = make_run(runs)
    sync_catalog(db, runs)
    data = (run_dir / "run.json").read_bytes()
    (run_dir / "run.json").unlink()
    (run_dir / "run.json").write_bytes(data)  # new inode and mtime, same bytes
    report = sync_catalog(db, runs)
    assert (report.registered, report.updated, report.unchanged) == ([], [], 1)
    assert sync_catalog(db, runs).unchanged == 1


def test_failed_run_without_marker_is_registered_as_failed_without_artifacts(runs, db):
    run_dir = make_run(runs, status="failed", artifacts=("alerts",))
    report = sync_catalog(db, runs)
    assert report.registered == [key(run_dir)]
    [row] = query_runs(db, status="failed")
    assert (row["status"], row["error_message"], row["error_phase"], row["completed_at"]) == (
        "failed",
        "boom",
        "truth",
        None,
    )
    assert table(db, "SELECT count(*) FROM artifacts") == [(0,)]
    assert report.stats.runs_by_status == {"completed": 0, "failed": 1}


def test_incomplete_runs_are_skipped(runs, db):
    running = make_run(runs, status="running")
    completed_unmarked = make_run(runs, status="completed", marker=False)
    empty = runs / "2024-01" / f"run_id={uuid.uuid4()}"
    empty.mkdir()  # a directory being created: no run.json yet
    report = sync_catalog(db, runs)
    assert sorted(report.skipped) == sorted([key(running), key(completed_unmarked), key(empty)])
    assert report.registered == [] and query_runs(db) == []


def test_rematerialized_run_is_updated_in_place(runs, db):
    run_dir = make_run(runs, calls_count=3)
    sync_catalog(db, runs)
    [old] = query_runs(db)
    manifest = load(run_dir)
    manifest["dataset"]["calls_count"] = 7
    write_manifest(run_dir, manifest, marker=True)
    report = sync_catalog(db, runs)
    assert (report.registered, report.updated, report.removed) == ([], [key(run_dir)], [])
    [new] = query_runs(db)
    assert new["calls_count"] == 7
    assert new["cataloged_at"] == old["cataloged_at"] and new["updated_at"] > old["updated_at"]
    assert table(db, "SELECT count(*) FROM artifacts") == [(2,)]


def test_run_that_loses_its_marker_is_removed_and_skipped(runs, db):
    run_dir = make_run(runs)
    sync_catalog(db, runs)
    manifest = load(run_dir)
    manifest["status"] = "running"
    write_manifest(run_dir, manifest, marker=False)
    report = sync_catalog(db, runs)
    assert (report.removed, report.skipped) == ([key(run_dir)], [key(run_dir)])
    assert query_runs(db) == [] and table(db, "SELECT count(*) FROM artifacts") == [(0,)]


def test_completed_run_that_fails_later_becomes_failed_and_loses_artifacts(runs, db):
    run_dir = make_run(runs)
    sync_catalog(db, runs)
    manifest = load(run_dir)
    manifest.update(status="failed", completed_at=None, error={"message": "oom", "phase": "policy"})
    write_manifest(run_dir, manifest, marker=False)
    report = sync_catalog(db, runs)
    assert report.updated == [key(run_dir)]
    assert [(r["status"], r["error_message"]) for r in query_runs(db)] == [("failed", "oom")]
    assert table(db, "SELECT count(*) FROM artifacts") == [(0,)]


def test_deleted_directory_is_removed(runs, db):
    keep, gone = make_run(runs), make_run(runs, month="2024-02")
    sync_catalog(db, runs)
    shutil.rmtree(gone)
    report = sync_catalog(db, runs)
    assert report.removed == [key(gone)]
    assert [r["run_id"] for r in query_runs(db)] == [key(keep).run_id]
    assert table(db, "SELECT DISTINCT month FROM artifacts") == [("2024-01",)]


def test_moved_runs_dir_updates_the_stored_paths(runs, db, tmp_path):
    run_dir = make_run(runs)
    sync_catalog(db, runs)
    moved = tmp_path / "elsewhere"
    runs.rename(moved)
    report = sync_catalog(db, moved)
    assert report.updated == [key(run_dir)]
    path = get_artifact_path(db, key(run_dir).run_id, "paths")
    assert path == str((moved / "2024-01" / run_dir.name / "truth/paths.parquet").resolve())
    assert Path(path).is_file()


def test_policy_and_optimization_runs_register_their_artifacts(runs, db):
    make_run(
        runs,
        run_type="policy",
        policy_id="fixed-stop-5pct",
        artifacts=("alerts", "paths", "trades", "summary", "errors"),
    )
    make_run(runs, run_type="optimization")
    report = sync_catalog(db, runs)
    assert report.stats.runs_by_type == {"policy": 1, "optimization": 1}
    # policy: alerts, paths, trades, summary, errors (5); optimization: alerts, paths, frontier (3)
    assert report.stats.total_artifacts == 8
    assert report.stats.artifacts_by_type == {
        "alerts": 2,
        "paths": 2,
        "trades": 1,
        "summary": 1,
        "frontier": 1,
        "errors": 1,
    }
    assert [r["policy_id"] for r in query_runs(db, run_type="policy")] == ["fixed-stop-5pct"]


def test_missing_runs_dir_is_an_error_not_an_empty_catalog(runs, db, tmp_path):
    make_run(runs)
    sync_catalog(db, runs)
    with pytest.raises(QuantlabError, match="does not exist"):
        sync_catalog(db, tmp_path / "typo")
    assert len(query_runs(db)) == 1


# -- rejection ------------------------------------------------------------------------------------


def _set(field, value):
    def tweak(run_dir: Path):
        manifest = load(run_dir)
        target = manifest
        *parents, last = field.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
        write_manifest(run_dir, manifest, marker=True)

    return tweak


def _corrupt_marker_sha(run_dir: Path):
    marker = json.loads((run_dir / "_SUCCESS").read_text())
    marker["manifest_sha256"] = "0" * 64
    (run_dir / "_SUCCESS").write_text(json.dumps(marker))


def _marker_month(run_dir: Path):
    marker = json.loads((run_dir / "_SUCCESS").read_text())
    marker["month"] = "2023-12"
    (run_dir / "_SUCCESS").write_text(json.dumps(marker))


def _bad_json_with_marker(run_dir: Path):
    (run_dir / "run.json").write_text("{not json")


def _bad_json_without_marker(run_dir: Path):
    (run_dir / "_SUCCESS").unlink()
    (run_dir / "run.json").write_text("[1, 2")


def _delete_artifact(run_dir: Path):
    (run_dir / "truth/paths.parquet").unlink()


def _grow_artifact(run_dir: Path):
    with open(run_dir / "truth/paths.parquet", "ab") as fh:
        fh.write(b"x")


def _drop_required(run_dir: Path):
    manifest = load(run_dir)
    del manifest["artifacts"]["paths"]
    write_manifest(run_dir, manifest, marker=True)


def _marker_without_manifest(run_dir: Path):
    (run_dir / "run.json").unlink()


@pytest.mark.parametrize(
    ("tweak", "reason"),
    [
        (_corrupt_marker_sha, "_SUCCESS: manifest_sha256 does not match run.json"),
        (_marker_month, "_SUCCESS: month '2023-12' does not match the directory"),
        (_bad_json_with_marker, "run.json: invalid JSON"),
        (_bad_json_without_marker, "run.json: invalid JSON"),
        (_marker_without_manifest, "_SUCCESS present but run.json is missing"),
        (_set("schema_version.manifest", "9.9.9"), "schema_version.manifest '9.9.9' is not supported"),
        (_set("schema_version.artifacts", "0.1"), "schema_version.artifacts '0.1' is not supported"),
        (_set("run_id", str(uuid.uuid4())), "does not match the directory"),
        (_set("status", "running"), "status is 'running' but _SUCCESS is present"),
        (_set("run_type", "magic"), "run_type 'magic' is not one of"),
        (_set("dataset.calls_count", "many"), "dataset: 'calls_count' has type str"),
        (_set("created_at", "yesterday"), "'created_at' is not an ISO-8601 timestamp"),
        (_set("artifacts.paths.path", "../../escape.parquet"), "is outside the run directory"),
        (_set("artifacts.paths.sha256", "nothex"), "'sha256' is not a hex sha256"),
        (_delete_artifact, "artifact paths: truth/paths.parquet is missing"),
        (_grow_artifact, "artifact paths: truth/paths.parquet has"),
        (_drop_required, "run_type path-only requires artifact(s) paths"),
    ],
)
def test_invalid_directories_are_rejected_with_a_reason(runs, db, tweak, reason):
    run_dir = make_run(runs)
    tweak(run_dir)
    report = sync_catalog(db, runs)
    assert report.registered == [] and query_runs(db) == []
    [(where, why)] = report.rejected
    assert where == str(run_dir.resolve()) and reason in why and "\n" not in why
    assert rejected_runs(db) == report.rejected


def test_registered_run_that_turns_invalid_is_removed_and_rejected(runs, db):
    run_dir = make_run(runs)
    sync_catalog(db, runs)
    _delete_artifact(run_dir)  # run.json unchanged: caught by the per-artifact stat
    report = sync_catalog(db, runs)
    assert report.removed == [key(run_dir)]
    assert [r.reason for r in report.rejected] == ["artifact paths: truth/paths.parquet is missing"]
    assert query_runs(db) == []


def test_rejection_clears_when_the_run_is_fixed(runs, db):
    run_dir = make_run(runs)
    _corrupt_marker_sha(run_dir)
    sync_catalog(db, runs)
    seen = table(db, "SELECT seen_at FROM rejected_runs")
    again = sync_catalog(db, runs)  # unchanged rejection: kept, first-seen time kept
    assert len(again.rejected) == 1 and table(db, "SELECT seen_at FROM rejected_runs") == seen
    write_manifest(run_dir, load(run_dir), marker=True)  # re-finalized
    report = sync_catalog(db, runs)
    assert report.registered == [key(run_dir)] and report.rejected == []
    assert rejected_runs(db) == []


def test_verify_catches_same_size_corruption_and_the_rejection_sticks(runs, db):
    run_dir = make_run(runs)
    sync_catalog(db, runs)
    path = run_dir / "truth/paths.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    assert sync_catalog(db, runs).unchanged == 1  # a plain sync only stats artifacts
    report = sync_catalog(db, runs, verify=True)
    assert report.removed == [key(run_dir)]
    assert [r.reason for r in report.rejected] == ["artifact paths: truth/paths.parquet sha256 does not match run.json"]
    plain = sync_catalog(db, runs)  # run.json/_SUCCESS unchanged: the verified rejection stands
    assert plain.registered == [] and len(plain.rejected) == 1


def test_a_catalog_built_from_nothing_verifies_hashes(runs, db):
    """Deleting the catalog must not re-admit a run that `--verify` rejected for a corrupt artifact."""
    run_dir = make_run(runs)
    sync_catalog(db, runs)
    path = run_dir / "truth/paths.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes: only a hash sees it
    path.write_bytes(bytes(data))
    assert len(sync_catalog(db, runs, verify=True).rejected) == 1
    db.unlink()
    rebuilt = sync_catalog(db, runs)  # a plain sync, but the catalog is new
    assert rebuilt.initialized and rebuilt.registered == []
    assert [r.reason for r in rebuilt.rejected] == [
        "artifact paths: truth/paths.parquet sha256 does not match run.json"
    ]
    assert query_runs(db) == []


def test_only_the_first_sync_of_a_catalog_hashes(runs, db, monkeypatch):
    make_run(runs)
    hashed: list[Path] = []
    monkeypatch.setattr(validation, "sha256_file", lambda p: hashed.append(p) or sha256_file(p))
    make_run(runs, "2024-02")
    assert len(sync_catalog(db, runs).registered) == 2 and len(hashed) == 4  # 2 runs x alerts, paths
    make_run(runs, "2024-03")
    assert len(sync_catalog(db, runs).registered) == 1 and len(hashed) == 4  # sizes only from now on


def test_verify_passes_intact_runs_unchanged(runs, db):
    make_run(runs)
    sync_catalog(db, runs)
    report = sync_catalog(db, runs, verify=True)
    assert (report.unchanged, report.updated, report.rejected) == (1, [], [])


# -- queries --------------------------------------------------------------------------------------


@pytest.fixture
def populated(runs, db):
    """Four runs: created at (a) 01-31 23:59:59.999, (b) 02-01 00:00, (c) 02-15, (d) 03-01."""
    a = make_run(runs, "2024-01", created_at="2024-01-31T23:59:59.999Z", git_branch="main")
    b = make_run(
        runs,
        "2024-01",
        run_type="policy",
        policy_id="fixed-stop-5pct",
        created_at="2024-02-01T00:00:00Z",
        git_branch="feature/x",
    )
    c = make_run(runs, "2024-02", status="failed", created_at="2024-02-15T12:00:00+00:00", git_branch="main")
    d = make_run(runs, "2024-03", run_type="optimization", created_at="2024-03-01T00:00:00Z", git_branch=None)
    sync_catalog(db, runs)
    return {name: key(r).run_id for name, r in zip("abcd", (a, b, c, d))}


def ids(rows, populated):
    names = {v: k for k, v in populated.items()}
    return [names[r["run_id"]] for r in rows]


def test_query_filters_each_match_the_hand_picked_runs(db, populated):
    assert ids(query_runs(db), populated) == ["d", "c", "b", "a"]  # newest created_at first
    assert ids(query_runs(db, limit=2), populated) == ["d", "c"]
    assert ids(query_runs(db, run_type="policy"), populated) == ["b"]
    assert ids(query_runs(db, status="completed"), populated) == ["d", "b", "a"]
    assert ids(query_runs(db, status="failed"), populated) == ["c"]
    assert ids(query_runs(db, month="2024-01"), populated) == ["b", "a"]
    assert ids(query_runs(db, policy_id="fixed-stop-5pct"), populated) == ["b"]
    assert ids(query_runs(db, git_branch="main"), populated) == ["c", "a"]
    assert ids(query_runs(db, run_id=populated["c"]), populated) == ["c"]
    assert ids(query_runs(db, run_type="path-only", status="completed"), populated) == ["a"]


def test_date_filters_are_inclusive_utc_days_on_created_at(db, populated):
    # from 02-01: 00:00 of 02-01 onward -> b, c, d (a is 1 ms earlier)
    assert ids(query_runs(db, from_date="2024-02-01"), populated) == ["d", "c", "b"]
    # to 01-31: everything before 02-01 00:00 -> a (at 23:59:59.999) only
    assert ids(query_runs(db, to_date="2024-01-31"), populated) == ["a"]
    # 02-01..02-29 -> b and c; d at 03-01 00:00 is outside
    assert ids(query_runs(db, from_date="2024-02-01", to_date=dt.date(2024, 2, 29)), populated) == ["c", "b"]
    assert query_runs(db, from_date="2024-03-02") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"run_type": "path_only"}, "run_type: expected one of path-only, policy, optimization"),
        ({"status": "running"}, "status: expected one of completed, failed"),
        ({"from_date": "2024-1-1"}, "from_date: expected a date YYYY-MM-DD"),
        ({"to_date": "2024-02-30"}, "to_date: expected a date YYYY-MM-DD"),
        ({"from_date": "20240101"}, "from_date: expected a date YYYY-MM-DD"),
        ({"from_date": "2024-02-02", "to_date": "2024-02-01"}, "to_date 2024-02-01 is before from_date 2024-02-02"),
        ({"month": "2024-13"}, "month: expected YYYY-MM"),
        ({"run_id": "not-a-uuid"}, "run_id: expected a lowercase UUID4"),
        ({"limit": 0}, "limit: expected a positive integer"),
        ({"limit": -5}, "limit: expected a positive integer"),
        ({"limit": True}, "limit: expected a positive integer"),
    ],
)
def test_bad_filter_values_are_one_line_errors(db, populated, kwargs, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        query_runs(db, **kwargs)
    assert "\n" not in str(err.value)


INJECTIONS = ["x' OR '1'='1", "main'; DROP TABLE runs; --", "%", "' UNION SELECT * FROM artifacts --"]


@pytest.mark.parametrize("attack", INJECTIONS)
def test_injection_through_every_filter_matches_nothing_or_is_rejected(db, populated, attack):
    assert query_runs(db, policy_id=attack) == []
    assert query_runs(db, git_branch=attack) == []
    for name in ("run_type", "status", "from_date", "to_date", "month", "run_id"):
        with pytest.raises(SpecError):
            query_runs(db, **{name: attack})
    with pytest.raises(SpecError):
        query_artifacts(db, attack)
    with pytest.raises(SpecError):
        get_artifact_path(db, populated["a"], attack)
    with pytest.raises(SpecError):
        get_artifact_path(db, attack, "paths")
    assert len(query_runs(db)) == 4
    assert table(db, "SELECT count(*) FROM artifacts") == [(9,)]  # a 2 + b 4 + c 0 + d 3


def test_get_artifact_path_single_and_multi_month(runs, db):
    run_id = str(uuid.uuid4())
    jan = make_run(runs, "2024-01", run_id=run_id)
    feb = make_run(runs, "2024-02", run_id=run_id)
    failed = make_run(runs, "2024-03", run_id=str(uuid.uuid4()), status="failed")
    sync_catalog(db, runs)
    jan_path, feb_path = (str((d / "truth/paths.parquet").resolve()) for d in (jan, feb))
    assert get_artifact_path(db, run_id, "paths") == [jan_path, feb_path]
    assert get_artifact_path(db, run_id, "paths", month="2024-02") == feb_path
    assert get_artifact_path(db, run_id, "paths", month="2024-03") is None
    assert get_artifact_path(db, run_id, "trades") is None
    assert get_artifact_path(db, key(failed).run_id, "alerts") is None
    shutil.rmtree(feb)
    sync_catalog(db, runs)
    assert get_artifact_path(db, run_id, "paths") == jan_path


def test_query_artifacts_lists_the_files_of_matching_runs(db, populated, runs):
    rows = query_artifacts(db, "paths", status="completed")
    assert ids(rows, populated) == ["d", "b", "a"]
    assert all(Path(r["path"]).is_file() and r["artifact_type"] == "paths" for r in rows)
    # the seed's read_parquet over every completed run's paths: 3 files x 3 rows
    with duckdb.connect() as conn:
        assert conn.execute("SELECT count(*) FROM read_parquet(?)", [[r["path"] for r in rows]]).fetchone() == (9,)
    assert query_artifacts(db, "trades", run_type="path-only") == []


def test_a_run_filter_is_the_same_query_as_its_keywords(db, populated):
    where = RunFilter(status="completed", from_date="2024-02-01", git_branch="feature/x")
    assert where == RunFilter(status="completed", from_date=dt.date(2024, 2, 1), git_branch="feature/x")
    assert where.from_date == dt.date(2024, 2, 1)  # validated and normalised once, on construction
    assert query_runs(db, where) == query_runs(db, status="completed", from_date="2024-02-01", git_branch="feature/x")
    assert ids(query_runs(db, where), populated) == ["b"]
    assert ids(query_artifacts(db, "paths", RunFilter(month="2024-01")), populated) == ["b", "a"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        where.status = "failed"  # type: ignore[misc]
    with pytest.raises(SpecError, match="status: expected one of completed, failed"):
        RunFilter(status="running")
    with pytest.raises(TypeError, match="not both"):
        query_runs(db, where, status="failed")
    with pytest.raises(TypeError, match="expected a RunFilter"):
        query_runs(db, "policy")  # type: ignore[arg-type]


def test_missing_or_foreign_catalog_is_a_one_line_error(tmp_path):
    with pytest.raises(QuantlabError, match="not found; run `quantlab backtest catalog-sync` first"):
        query_runs(tmp_path / "nope.duckdb")
    foreign = tmp_path / "other.duckdb"
    with duckdb.connect(str(foreign)) as conn:
        conn.execute("CREATE TABLE x (a INT)")
    with pytest.raises(QuantlabError, match="has no catalog tables"):
        get_artifact_path(foreign, str(uuid.uuid4()), "paths")
    garbage = tmp_path / "garbage.duckdb"
    garbage.write_text("not a database")
    with pytest.raises(QuantlabError, match="cannot open") as err:
        catalog_stats(garbage)
    assert "\n" not in str(err.value)


# -- concurrency ------------------------------------------------------------------------------------


def _sync_worker(db: str, runs: str, start, out) -> None:
    start.wait()
    try:
        report = sync_catalog(db, runs)
        out.put(("ok", [tuple(k) for k in report.registered]))
    except BaseException as exc:  # reported to the parent, which fails the test
        out.put(("error", repr(exc)))


def _flapping_worker(db: str, runs: str, run_dir: str, rounds: int, out) -> None:
    """Alternately unmark and re-mark one run, syncing after each change."""
    try:
        path = Path(run_dir)
        marker = (path / "_SUCCESS").read_bytes()
        for _ in range(rounds):
            (path / "_SUCCESS").unlink()
            sync_catalog(db, runs)
            (path / "_SUCCESS").write_bytes(marker)
            sync_catalog(db, runs)
        out.put(("ok", None))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def test_two_syncs_at_once_register_each_run_exactly_once(runs, db):
    made = {key(make_run(runs, f"2024-{m:02d}")) for m in range(1, 7) for _ in range(2)}
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_sync_worker, args=(str(db), str(runs), start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [status for status, _ in results] == ["ok", "ok"], results
    registered = [RunKey(*k) for _, keys in results for k in keys]
    assert sorted(registered) == sorted(made)  # 12 runs, each registered by exactly one sync
    assert table(db, "SELECT count(*), count(DISTINCT (run_id, month)) FROM runs") == [(12, 12)]
    assert table(db, "SELECT count(*) FROM artifacts") == [(24,)]


def test_queries_during_syncs_never_see_a_lock_error_or_half_a_sync(runs, db):
    for m in range(1, 5):
        make_run(runs, f"2024-{m:02d}")
    flapper = make_run(runs, "2024-05")
    sync_catalog(db, runs)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_flapping_worker, args=(str(db), str(runs), str(flapper), 8, out))
    proc.start()
    counts = set()
    try:
        while proc.is_alive():
            rows = query_runs(db, limit=100)
            keys = [(r["run_id"], r["month"]) for r in rows]
            assert len(keys) == len(set(keys))
            counts.add(len(rows))
            n_artifacts = len(query_artifacts(db, "paths", limit=100))
            assert n_artifacts in (4, 5)
    finally:
        proc.join(timeout=120)
    assert out.get(timeout=10) == ("ok", None)
    assert counts <= {4, 5}  # before or after a sync: 5 runs, or 4 while the flapper is unmarked
    assert len(query_runs(db, limit=100)) == 5


# Holds the catalog open (read-write, or read-only with "ro") until a line arrives on stdin.
_HOLD_CATALOG = """
import sys, duckdb
conn = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "ro")
print("locked", flush=True)
sys.stdin.readline()
conn.close()
"""


def _hold(db: Path, mode: str) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_CATALOG, str(db), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _release(holder: subprocess.Popen) -> None:
    if holder.poll() is None:
        holder.stdin.write("go\n")
        holder.stdin.flush()
    holder.wait(timeout=30)


def test_reader_retries_while_a_writer_holds_the_file_then_gives_up_cleanly(runs, db, monkeypatch):
    make_run(runs)
    sync_catalog(db, runs)
    holder = _hold(db, "rw")
    try:
        with pytest.raises(QuantlabError, match="is locked by another process") as err:
            query_runs(db, timeout=0.3)
        assert "\n" not in str(err.value) and f"(PID {holder.pid})" in str(err.value)
        # The reader retries until the writer lets go: release the writer only once the reader
        # has been refused at least once (its first backoff sleep), then it must succeed.
        retrying, real_sleep = threading.Event(), time.sleep
        monkeypatch.setattr(connection.time, "sleep", lambda s: (retrying.set(), real_sleep(s)))
        result: list = []
        worker = threading.Thread(target=lambda: result.append(len(query_runs(db, timeout=60))))
        worker.start()
        assert retrying.wait(timeout=30)
        _release(holder)
        worker.join(timeout=60)
        assert result == [1]
    finally:
        _release(holder)


class _DiskFull:
    """A connection whose first write into `runs` fails like a full disk. DuckDB ends the
    transaction itself when a write fails, so the caller's ROLLBACK then finds none."""

    def __init__(self, conn: duckdb.DuckDBPyConnection):
        self._conn = conn

    def execute(self, sql: str, *args):
        if sql.startswith("INSERT INTO runs"):
            self._conn.execute("ROLLBACK")
            raise duckdb.IOException('IO Error: Could not write file "catalog.duckdb.wal": No space left on device')
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


def test_a_failed_write_reports_its_own_error_not_the_rollback(runs, db):
    run_dir = make_run(runs)

    @contextmanager
    def full_disk():
        yield _DiskFull(duckdb.connect(str(db)))

    with pytest.raises(QuantlabError) as err:
        sync_catalog(db, runs, connect=full_disk)
    message = str(err.value)
    assert message.startswith(f"catalog {db}: cannot write:") and "No space left on device" in message
    assert "rollback" not in message and "\n" not in message
    assert sync_catalog(db, runs).registered == [key(run_dir)]  # nothing half-written to recover from


def test_a_long_lived_reader_fails_a_sync_quickly_naming_the_file_and_the_holder(runs, db, monkeypatch):
    make_run(runs)
    sync_catalog(db, runs)
    assert connection.WRITE_TIMEOUT_S <= 30  # a reader that never lets go is not waited on for minutes
    monkeypatch.setattr(connection, "WRITE_TIMEOUT_S", 0.3)
    holder = _hold(db, "ro")  # e.g. a duckdb session with ATTACH '…' (READ_ONLY)
    try:
        make_run(runs, "2024-02")
        with pytest.raises(QuantlabError) as err:
            sync_catalog(db, runs)
        message = str(err.value)
        assert f"catalog {db} is held open by" in message and f"(PID {holder.pid})" in message
        assert "a catalog sync?" not in message and "\n" not in message
    finally:
        _release(holder)
    assert len(sync_catalog(db, runs).registered) == 1


# -- sensor fingerprint ----------------------------------------------------------------------------


def test_terminal_fingerprint_tracks_only_terminal_directories(runs):
    empty = terminal_fingerprint(runs)
    assert empty[1] == 0
    running = make_run(runs, status="running")
    assert terminal_fingerprint(runs) == empty  # a running run is not terminal
    done = make_run(runs)
    one = terminal_fingerprint(runs)
    assert one[1] == 1 and one != empty
    assert terminal_fingerprint(runs) == one  # nothing changed, same digest
    manifest = load(running)
    manifest["status"] = "failed"
    write_manifest(running, manifest, marker=False)
    two = terminal_fingerprint(runs)
    assert two[1] == 2 and two != one
    write_manifest(done, load(done), marker=True)  # re-finalized: new stat of run.json/_SUCCESS
    assert terminal_fingerprint(runs) not in (one, two)
    shutil.rmtree(done)
    shutil.rmtree(running)
    assert terminal_fingerprint(runs) == empty


# -- archive ---------------------------------------------------------------------------------------


def extract_safely(tarball: Path, dest: Path) -> None:
    """`tar -xzf tarball -C dest` refusing links and members outside `dest`: tarfile's "data"
    filter where it exists (3.11.4+), the same checks by hand on older 3.11 releases."""
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        root = dest.resolve()
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
                raise AssertionError(f"unsafe archive member {member.name}")
        tar.extractall(dest)  # every member checked above


def test_archive_month_round_trip(runs, db, tmp_path):
    jan = [make_run(runs, "2024-01"), make_run(runs, "2024-01", status="failed")]
    feb = make_run(runs, "2024-02")
    sync_catalog(db, runs)
    dest = tmp_path / "archives" / "runs-archive-2024-01.tar.gz"
    report = archive_month(runs, "2024-01", dest, db)
    assert sorted(report.run_dirs) == sorted(d.name for d in jan)
    assert not (runs / "2024-01").exists() and feb.is_dir()
    assert sorted(report.sync.removed) == sorted(key(d) for d in jan)
    assert [r["run_id"] for r in query_runs(db)] == [key(feb).run_id]
    # files: completed run 2 artifacts + run.json + _SUCCESS = 4, failed run run.json = 1
    assert report.files == 5
    with tarfile.open(dest) as tar:
        names = tar.getnames()
    assert names[0] == "2024-01" and f"2024-01/{jan[0].name}/truth/paths.parquet" in names
    with pytest.raises(QuantlabError, match="already exists; refusing to overwrite"):
        archive_month(runs, "2024-02", dest, db)
    assert feb.is_dir()
    # restore as documented (`tar -xzf FILE -C runs`, `catalog-sync --full`) and the runs come back:
    # a restore writes no journal line, so the sensor's safety net sees it (the disk's digest moved)
    extract_safely(dest, runs)
    assert sync_catalog(db, runs).registered == []
    assert terminal_fingerprint(runs)[0] != progress.read_mark(db).digest
    assert sorted(sync_catalog(db, runs, full=True).registered) == sorted(key(d) for d in jan)
    assert terminal_fingerprint(runs)[0] == progress.read_mark(db).digest


def test_archive_refuses_bad_month_and_empty_month(runs, db, tmp_path):
    make_run(runs, "2024-01")
    with pytest.raises(SpecError, match="month: expected YYYY-MM"):
        archive_month(runs, "2024-1", tmp_path / "a.tar.gz", db)
    with pytest.raises(QuantlabError, match="no run directories for 2023-12"):
        archive_month(runs, "2023-12", tmp_path / "a.tar.gz", db)
    with pytest.raises(QuantlabError, match="inside"):
        archive_month(runs, "2024-01", runs / "2024-01" / "a.tar.gz", db)
    assert not (tmp_path / "a.tar.gz").exists()


def test_archive_that_fails_verification_removes_nothing(runs, db, tmp_path, monkeypatch):
    run_dir = make_run(runs, "2024-01")
    real_tree = archive.tree

    def tree_with_phantom(month_dir, month):
        entries = real_tree(month_dir, month)
        return [*entries, tarball.Entry(run_dir / "run.json", f"{month}/phantom", 1, 0)]

    monkeypatch.setattr(archive, "tree", tree_with_phantom)
    dest = tmp_path / "a.tar.gz"
    with pytest.raises(QuantlabError, match="failed verification"):
        archive_month(runs, "2024-01", dest, db)
    assert run_dir.is_dir() and not dest.exists()
