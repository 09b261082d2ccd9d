"""Run directory: layout, manifest, completion marker, re-materialization, failure, atomicity."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from quantlab_pipeline.core.errors import EnvironmentFault, ErrorRecord, QuantlabError, SpecError
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.storage import artifact_files, atomic, run_dir
from quantlab_pipeline.storage.run_dir import RunDirectory, WriteRefused, check_artifact_applies
from quantlab_pipeline.storage.specs import read_spec, spec_sha256, write_spec

RUN_ID = "0b7c8a4e-1d2f-4a3b-9c4d-5e6f7a8b9c0d"


def make_spec(run_type: str = "path-only", **extra) -> RunSpec:
    data = {
        "run_id": RUN_ID,
        "run_type": run_type,
        "created_at": "2024-02-01T00:00:00.000Z",
        "interval": "5m",
        "window": {"from": "2024-01-10", "to": "2024-02-20"},
        "source": {"alerts": "/data/alerts.duckdb"},
        "features": False,  # these cases are about the core artifacts; features' own rule is tested below
        **extra,
    }
    if run_type == "policy":
        data.setdefault("policy_id", "fixed-5")
        data.setdefault("policy", {"kind": "fixed_stop", "stop_loss_bps": 500})
    return RunSpec.from_dict(data)


def frame(n: int, tag: str = "a") -> pl.DataFrame:
    return pl.DataFrame({"call_id": [f"{tag}{i}" for i in range(n)], "x": list(range(n))})


def write(rd: RunDirectory, spec: RunSpec, artifact: str, df: pl.DataFrame, inputs=None, errors=None):
    return rd.write_artifact(
        artifact,
        df,
        spec,
        inputs=inputs or {},
        dagster_run_id="dagster-run-1",
        elapsed_ms=5,
        errors=errors,
    )


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_path_only_run_completes_with_full_manifest_and_marker(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    assert rd.path == tmp_path / "2024-01" / f"run_id={RUN_ID}"
    alerts = write(rd, spec, "alerts", frame(3))
    assert not (rd.path / "_SUCCESS").exists()  # paths still missing
    write(rd, spec, "paths", frame(2), inputs={"alerts": alerts["sha256"]})

    manifest = RunDirectory.read_manifest(rd.path)
    assert manifest["status"] == "completed"
    assert manifest["run_id"] == RUN_ID and manifest["month"] == "2024-01"
    assert manifest["schema_version"] == {"manifest": "1.0.0", "artifacts": "1.0.0"}
    # The window 2024-01-10..2024-02-20 covers 2024-01-10..2024-01-31 of January.
    assert manifest["dataset"] == {"from": "2024-01-10", "to": "2024-01-31", "interval": "5m", "calls_count": 3}
    assert manifest["spec"]["run_id"] == RUN_ID
    assert manifest["provenance"]["dagster_runs"] == {"alerts": "dagster-run-1", "paths": "dagster-run-1"}
    assert manifest["timing"] == {"alerts_ms": 5, "paths_ms": 5, "total_ms": 10}
    assert manifest["logs"] == {"stdout": "logs/stdout.txt", "stderr": "logs/stderr.txt"}
    for name, rel in (("alerts", "inputs/alerts.parquet"), ("paths", "truth/paths.parquet")):
        rec = manifest["artifacts"][name]
        assert rec["path"] == rel
        assert rec["bytes"] == (rd.path / rel).stat().st_size
        assert rec["sha256"] == sha(rd.path / rel)
    assert manifest["artifacts"]["paths"]["inputs"] == {"alerts": manifest["artifacts"]["alerts"]["sha256"]}
    assert manifest["completed_at"] and manifest["started_at"]

    marker = json.loads((rd.path / "_SUCCESS").read_text())
    assert marker["run_id"] == RUN_ID and marker["month"] == "2024-01"
    assert marker["manifest_sha256"] == sha(rd.path / "run.json")
    assert marker["completed_at"] == manifest["completed_at"]
    assert marker["writer"].startswith("quantlab_pipeline")


def test_parquet_files_carry_key_value_metadata(tmp_path):
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    write(rd, make_spec(), "alerts", frame(1))
    meta = pq.read_schema(rd.path / "inputs/alerts.parquet").metadata
    assert meta[b"run_id"] == RUN_ID.encode()
    assert meta[b"month"] == b"2024-01"
    assert meta[b"artifact"] == b"alerts"
    assert meta[b"schema_version"] == b"1.0.0"


def test_completion_holds_whatever_order_assets_are_written(tmp_path):
    spec = make_spec("policy")
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    alerts = write(rd, spec, "alerts", frame(3))
    paths = write(rd, spec, "paths", frame(2), inputs={"alerts": alerts["sha256"]})
    # summary written before trades: it records the trades sha it was computed from.
    summary = write(
        rd,
        spec,
        "summary",
        frame(1, "s"),
        inputs={"alerts": alerts["sha256"], "paths": paths["sha256"], "trades": "not-yet"},
    )
    assert not (rd.path / "_SUCCESS").exists()
    trades = write(rd, spec, "trades", frame(2, "t"), inputs={"alerts": alerts["sha256"], "paths": paths["sha256"]})
    # summary's recorded trades input is stale → still incomplete.
    assert rd.completion().stale == ("summary",)
    assert not (rd.path / "_SUCCESS").exists()
    write(
        rd,
        spec,
        "summary",
        frame(1, "s"),
        inputs={"alerts": alerts["sha256"], "paths": paths["sha256"], "trades": trades["sha256"]},
    )
    assert (rd.path / "_SUCCESS").exists()
    assert summary["path"] == "results/summary.parquet"


def test_rematerializing_removes_marker_and_stale_downstream_blocks_completion(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    a1 = write(rd, spec, "alerts", frame(3))
    write(rd, spec, "paths", frame(2), inputs={"alerts": a1["sha256"]})
    assert (rd.path / "_SUCCESS").exists()

    rd.begin(spec)  # a new materialization starts: the marker goes first
    assert not (rd.path / "_SUCCESS").exists()
    assert RunDirectory.read_manifest(rd.path)["status"] == "running"

    a2 = write(rd, spec, "alerts", frame(4))  # different content → new sha
    assert a2["sha256"] != a1["sha256"]
    assert rd.completion().stale == ("paths",)
    assert not (rd.path / "_SUCCESS").exists()
    write(rd, spec, "paths", frame(2), inputs={"alerts": a2["sha256"]})
    assert (rd.path / "_SUCCESS").exists()


def test_identical_rewrite_of_upstream_keeps_downstream_consistent(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    a1 = write(rd, spec, "alerts", frame(3))
    write(rd, spec, "paths", frame(2), inputs={"alerts": a1["sha256"]})
    a2 = write(rd, spec, "alerts", frame(3))  # deterministic bytes
    assert a2["sha256"] == a1["sha256"]
    assert (rd.path / "_SUCCESS").exists()


def test_missing_or_resized_artifact_is_not_complete(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    a = write(rd, spec, "alerts", frame(3))
    write(rd, spec, "paths", frame(2), inputs={"alerts": a["sha256"]})
    with open(rd.path / "truth/paths.parquet", "ab") as fh:
        fh.write(b"x")
    assert rd.completion().missing == ("paths",)


def test_failure_is_recorded_and_a_later_success_recovers(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    a = write(rd, spec, "alerts", frame(3))
    try:
        raise RuntimeError("candles source vanished\nsecond line")
    except RuntimeError as exc:
        rd.record_failure(spec, phase="truth", exc=exc, dagster_run_id="dr-2")
    manifest = RunDirectory.read_manifest(rd.path)
    assert manifest["status"] == "failed"
    assert manifest["error"]["message"] == "candles source vanished"
    assert manifest["error"]["phase"] == "truth"
    assert not (rd.path / "_SUCCESS").exists()
    errors = pl.read_parquet(rd.path / "errors/errors.parquet")
    assert errors.columns == ["run_id", "ts", "level", "phase", "call_id", "mint", "reason", "message", "details"]
    row = errors.row(0, named=True)
    assert (row["level"], row["phase"], row["reason"]) == ("error", "truth", "failure")
    assert "Traceback" in json.loads(row["details"])["traceback"]
    assert "candles source vanished" in (rd.path / "logs/stderr.txt").read_text()
    assert manifest["artifacts"]["errors"]["sha256"] == sha(rd.path / "errors/errors.parquet")

    # Recovery: the truth phase succeeds, its rows replace the failure row.
    warn = ErrorRecord(level="warning", phase="truth", reason="no_entry", message="no candle", call_id="a1", mint="M")
    write(rd, spec, "paths", frame(2), inputs={"alerts": a["sha256"]}, errors=("truth", [warn]))
    manifest = RunDirectory.read_manifest(rd.path)
    assert manifest["status"] == "completed" and "error" not in manifest
    errors = pl.read_parquet(rd.path / "errors/errors.parquet")
    assert errors.select("level", "phase", "reason", "call_id").rows() == [("warning", "truth", "no_entry", "a1")]


def test_error_rows_of_other_phases_are_kept_and_empty_errors_remove_the_file(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    dup = ErrorRecord(level="warning", phase="inputs", reason="duplicate_call", message="dup", call_id="c")
    a = write(rd, spec, "alerts", frame(3), errors=("inputs", [dup]))
    write(rd, spec, "paths", frame(2), inputs={"alerts": a["sha256"]}, errors=("truth", []))
    assert pl.read_parquet(rd.path / "errors/errors.parquet").get_column("reason").to_list() == ["duplicate_call"]
    write(rd, spec, "alerts", frame(3), errors=("inputs", []))
    assert not (rd.path / "errors/errors.parquet").exists()
    assert "errors" not in RunDirectory.read_manifest(rd.path)["artifacts"]


def test_a_step_without_error_rows_leaves_the_errors_file_as_the_manifest_records_it(tmp_path):
    """A phase with no rows before and none now does not rewrite errors.parquet (a write and an
    fsync per artifact); a file that is not the one the manifest records is written again."""
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    dup = ErrorRecord(level="warning", phase="inputs", reason="duplicate_call", message="dup", call_id="c")
    a = write(rd, spec, "alerts", frame(3), errors=("inputs", [dup]))
    errors_path = rd.path / "errors/errors.parquet"
    before = errors_path.stat()
    write(rd, spec, "paths", frame(2), inputs={"alerts": a["sha256"]}, errors=("truth", []))
    after = errors_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert RunDirectory.read_manifest(rd.path)["artifacts"]["errors"]["sha256"] == sha(errors_path)
    # the same rows in other bytes: not the recorded file, so it is written again and recorded
    pl.read_parquet(errors_path).write_parquet(errors_path, compression="uncompressed")
    write(rd, spec, "paths", frame(2), inputs={"alerts": a["sha256"]}, errors=("truth", []))
    assert RunDirectory.read_manifest(rd.path)["artifacts"]["errors"]["sha256"] == sha(errors_path)
    assert pl.read_parquet(errors_path).get_column("reason").to_list() == ["duplicate_call"]
    errors_path.unlink()  # gone: the manifest's record goes too
    write(rd, spec, "paths", frame(2), inputs={"alerts": a["sha256"]}, errors=("truth", []))
    assert not errors_path.exists() and "errors" not in RunDirectory.read_manifest(rd.path)["artifacts"]


def test_stdout_log_appends_lines(tmp_path):
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    rd.append_stdout(["one", "two"])
    rd.append_stdout(["three"])
    assert (rd.path / "logs/stdout.txt").read_text() == "one\ntwo\nthree\n"


def test_a_crash_mid_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    write(rd, spec, "alerts", frame(3))
    before = (rd.path / "inputs/alerts.parquet").read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write(rd, spec, "alerts", frame(5))
    monkeypatch.undo()
    assert (rd.path / "inputs/alerts.parquet").read_bytes() == before
    assert not [p for p in (rd.path / "inputs").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "month,run_id", [("2024-13", RUN_ID), ("../x", RUN_ID), ("2024-01", "../../etc"), ("2024-01", RUN_ID.upper())]
)
def test_invalid_ids_never_become_paths(tmp_path, month, run_id):
    with pytest.raises(SpecError):
        RunDirectory(tmp_path, month, run_id)
    assert not any(tmp_path.rglob("run_id=*"))


def test_unreadable_manifest_is_a_one_line_error(tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(QuantlabError, match="unreadable manifest"):
        RunDirectory.read_manifest(tmp_path)


def test_specs_are_immutable(tmp_path):
    spec = make_spec()
    write_spec(tmp_path, spec)
    assert read_spec(tmp_path, RUN_ID) == spec
    # Same backtest, different creation stamp: accepted, the stored one wins.
    again = RunSpec.from_dict({**spec.to_dict(), "created_at": "2025-01-01T00:00:00.000Z"})
    assert write_spec(tmp_path, again).created_at == spec.created_at
    changed = RunSpec.from_dict({**spec.to_dict(), "horizon": "1d"})
    with pytest.raises(SpecError, match="immutable"):
        write_spec(tmp_path, changed)


def test_atomic_write_json_returns_the_bytes_on_disk(tmp_path):
    data = atomic.atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert (tmp_path / "x.json").read_bytes() == data


# -- lifecycle: logs, writer, spec, run type, leftovers, faults -------------------------------------


def complete_path_only(rd: RunDirectory, spec: RunSpec) -> None:
    alerts = write(rd, spec, "alerts", frame(3))
    write(rd, spec, "paths", frame(2), inputs={"alerts": alerts["sha256"]})
    assert (rd.path / "_SUCCESS").exists()


def test_both_logs_exist_from_the_first_write_and_nothing_changes_after_success(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    write(rd, spec, "alerts", frame(3))
    assert (rd.path / "logs/stderr.txt").read_bytes() == b""  # promised by the layout, empty when clean
    alerts = RunDirectory.read_manifest(rd.path)["artifacts"]["alerts"]
    write(rd, spec, "paths", frame(2), inputs={"alerts": alerts["sha256"]})
    log = (rd.path / "logs/stdout.txt").read_text().splitlines()
    assert [line.split("] ", 1)[1].split(" in ")[0] for line in log] == [
        f"wrote inputs/alerts.parquet: 3 rows, {alerts['bytes']} bytes",
        f"wrote truth/paths.parquet: 2 rows, {(rd.path / 'truth/paths.parquet').stat().st_size} bytes",
    ]
    marker = (rd.path / "_SUCCESS").stat().st_mtime_ns
    assert max(p.stat().st_mtime_ns for p in rd.path.rglob("*") if p.is_file()) == marker


def test_the_lock_file_exists_only_while_held_and_reading_creates_nothing(tmp_path):
    runs = tmp_path / "runs"
    rd = RunDirectory(runs, "2024-01", RUN_ID)
    assert rd.manifest() is None and not runs.exists()
    with rd.lock:
        assert (runs / "_locks" / f"2024-01_{RUN_ID}.lock").exists()
    complete_path_only(rd, make_spec())
    # the month's lock (held shared by its writers, exclusively by an archive) is kept: one per month
    assert [p.name for p in (runs / "_locks").iterdir()] == ["2024-01.lock"]


def test_the_manifest_records_its_writer_and_spec(tmp_path):
    spec = make_spec()
    write_spec(tmp_path, spec)
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    rd.begin(spec, phase="inputs", dagster_run_id="dr-0")
    writer = RunDirectory.read_manifest(rd.path)["writer"]
    assert writer["pid"] == os.getpid() and writer["host"] == os.uname().nodename
    assert writer["process_start"] == Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    assert (writer["phase"], writer["dagster_run_id"]) == ("inputs", "dr-0")
    assert writer["heartbeat_at"] == writer["started_at"]
    write(rd, spec, "alerts", frame(3))
    manifest = RunDirectory.read_manifest(rd.path)
    # the same process's next step keeps its start, takes the step's Dagster run id
    assert manifest["writer"]["started_at"] == writer["started_at"]
    assert manifest["writer"]["dagster_run_id"] == "dagster-run-1"
    # sha256 of the spec file's very bytes
    assert manifest["spec_sha256"] == sha(tmp_path / "_specs" / f"{RUN_ID}.json") == spec_sha256(spec)


def test_heartbeat_is_refreshed_only_by_the_running_writer(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    assert rd.heartbeat() is False  # nothing written yet
    rd.begin(spec)
    manifest = RunDirectory.read_manifest(rd.path)
    manifest["writer"]["heartbeat_at"] = "2024-01-01T00:00:00.000Z"
    (rd.path / "run.json").write_text(json.dumps(manifest))
    assert rd.heartbeat() is True
    assert RunDirectory.read_manifest(rd.path)["writer"]["heartbeat_at"] > "2024-01-01T00:00:00.000Z"
    manifest = RunDirectory.read_manifest(rd.path)
    manifest["writer"]["pid"] = 1  # another process is the writer now
    (rd.path / "run.json").write_text(json.dumps(manifest))
    assert rd.heartbeat() is False


def test_an_interruption_is_recorded_as_a_failure_with_reason_interrupted(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    rd.begin(spec)
    rd.record_failure(spec, phase="truth", exc=KeyboardInterrupt(), dagster_run_id="dr-9", reason="interrupted")
    manifest = RunDirectory.read_manifest(rd.path)
    assert manifest["status"] == "failed"
    assert manifest["error"] == {
        "message": "KeyboardInterrupt",
        "phase": "truth",
        "reason": "interrupted",
        "dagster_run_id": "dr-9",
    }
    row = pl.read_parquet(rd.path / "errors/errors.parquet").row(0, named=True)
    assert (row["level"], row["phase"], row["reason"]) == ("error", "truth", "interrupted")
    assert "truth interrupted: KeyboardInterrupt" in (rd.path / "logs/stderr.txt").read_text()


def test_a_corrupt_errors_file_is_moved_aside_and_does_not_block_the_next_error(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    dup = ErrorRecord(level="warning", phase="inputs", reason="duplicate_call", message="dup", call_id="c")
    write(rd, spec, "alerts", frame(3), errors=("inputs", [dup]))
    errors_path = rd.path / "errors/errors.parquet"
    errors_path.write_bytes(b"PAR1 not parquet at all")
    try:
        raise RuntimeError("candles source vanished")
    except RuntimeError as exc:
        rd.record_failure(spec, phase="truth", exc=exc)
    assert pl.read_parquet(errors_path).select("phase", "reason").rows() == [("truth", "failure")]
    [aside] = (rd.path / "errors").glob("errors.parquet.corrupt-*")
    assert aside.read_bytes() == b"PAR1 not parquet at all"
    assert f"moved aside to errors/{aside.name}" in (rd.path / "logs/stderr.txt").read_text()
    manifest = RunDirectory.read_manifest(rd.path)
    assert manifest["artifacts"]["errors"]["sha256"] == sha(errors_path)
    # and a later artifact write that replaces its phase's rows goes through as well
    errors_path.write_bytes(b"garbage")
    write(rd, spec, "alerts", frame(3), errors=("inputs", [dup]))
    assert pl.read_parquet(errors_path).get_column("reason").to_list() == ["duplicate_call"]


def test_a_changed_spec_is_refused_before_anything_is_touched(tmp_path):
    spec = make_spec("policy")
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    write(rd, spec, "alerts", frame(3))
    before = (rd.path / "run.json").read_bytes()
    edited = make_spec("policy", policy={"kind": "fixed_stop", "stop_loss_bps": 900})
    with pytest.raises(SpecError, match=r"spec of run .* changed since 2024-01 was written") as info:
        rd.begin(edited)
    assert len(str(info.value).splitlines()) == 1
    with pytest.raises(WriteRefused, match="changed since") as refused:
        write(rd, edited, "alerts", frame(3))
    assert (rd.path / "run.json").read_bytes() == before
    # recorded only into a month this process is writing: not into one another writer left …
    other = json.loads(before)
    other["writer"]["pid"] = other["writer"]["pid"] + 1_000_000
    (rd.path / "run.json").write_text(json.dumps(other))
    rd.record_failure(edited, phase="inputs", exc=refused.value)
    assert json.loads((rd.path / "run.json").read_bytes()) == other
    # … and into its own, as the month's failure with the reason (left `running`, it would look interrupted)
    (rd.path / "run.json").write_bytes(before)
    rd.record_failure(edited, phase="inputs", exc=refused.value)
    failed = RunDirectory.read_manifest(rd.path)
    assert failed["status"] == "failed" and "changed since 2024-01 was written" in failed["error"]["message"]
    assert failed["spec_sha256"] == spec_sha256(spec)  # the month keeps the spec it was written from
    # a manifest written before spec_sha256 was recorded is checked against its recorded spec
    legacy = RunDirectory.read_manifest(rd.path)
    del legacy["spec_sha256"]
    (rd.path / "run.json").write_text(json.dumps(legacy))
    with pytest.raises(SpecError, match="changed since"):
        rd.begin(edited)
    rd.begin(spec)
    assert RunDirectory.read_manifest(rd.path)["spec_sha256"] == spec_sha256(spec)


def test_an_artifact_of_another_run_type_never_reopens_a_completed_run(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    complete_path_only(rd, spec)
    before = (rd.path / "run.json").read_bytes()
    with pytest.raises(SpecError, match="path-only run and has no trades; run directory 2024-01 left untouched"):
        rd.begin(spec, artifact="trades")
    with pytest.raises(WriteRefused, match="has no frontier") as info:
        write(rd, spec, "frontier", frame(1))
    # the IO manager records whatever a write raises: a refusal is not a failure of the run
    rd.record_failure(spec, phase="frontier", exc=info.value)
    assert (rd.path / "_SUCCESS").exists() and (rd.path / "run.json").read_bytes() == before
    check_artifact_applies(make_spec("policy"), "trades")
    check_artifact_applies(make_spec("optimization"), "frontier")
    with pytest.raises(SpecError, match="has no frontier"):
        check_artifact_applies(make_spec("policy"), "frontier")


def test_temp_leftovers_are_removed_by_the_next_write_and_by_clean_leftovers(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    write(rd, spec, "alerts", frame(3))
    leftovers = [rd.path / "inputs/.alerts.parquet.k3j2_x.tmp", rd.path / ".run.json.abc123.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
    keep = rd.path / "inputs/notes.tmp"  # not an atomic write's temp file
    keep.write_bytes(b"mine")
    assert sorted(rd.clean_leftovers()) == sorted(leftovers)
    assert not any(p.exists() for p in leftovers) and keep.exists()
    leftovers[0].write_bytes(b"half")
    rd.begin(spec)
    assert not leftovers[0].exists()


def test_a_kill_between_the_completed_manifest_and_the_marker_is_finished_by_the_next_write(tmp_path, monkeypatch):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    alerts = write(rd, spec, "alerts", frame(3))
    real = run_dir.atomic_write_json

    def killed_at_marker(path, obj):
        if path.name == "_SUCCESS":
            raise SystemExit("killed")
        return real(path, obj)

    monkeypatch.setattr(run_dir, "atomic_write_json", killed_at_marker)
    with pytest.raises(SystemExit):
        write(rd, spec, "paths", frame(2), inputs={"alerts": alerts["sha256"]})
    monkeypatch.undo()
    assert RunDirectory.read_manifest(rd.path)["status"] == "completed"
    assert not (rd.path / "_SUCCESS").exists()
    write(rd, spec, "alerts", frame(3))  # identical bytes: the run is complete again
    marker = json.loads((rd.path / "_SUCCESS").read_text())
    assert marker["manifest_sha256"] == sha(rd.path / "run.json")


def test_files_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert atomic.current_umask() == 0o027
        atomic.atomic_write_bytes(tmp_path / "a.bin", b"x")
        os.umask(0o002)
        spec = make_spec()
        rd = RunDirectory(tmp_path / "runs", "2024-01", RUN_ID)
        complete_path_only(rd, spec)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in rd.path.rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o664}, modes
    assert {"run.json", "_SUCCESS", "alerts.parquet", "paths.parquet", "stderr.txt"} <= set(modes)


def test_a_full_disk_is_a_one_line_error_naming_the_file(tmp_path, monkeypatch):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    write(rd, spec, "alerts", frame(3))
    before = (rd.path / "inputs/alerts.parquet").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(EnvironmentFault) as info:
        write(rd, spec, "alerts", frame(5))
    monkeypatch.undo()
    assert info.value.exit_code == 1
    assert str(info.value) == f"{rd.path / 'inputs/alerts.parquet'}: cannot write: no space left on device"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert (rd.path / "inputs/alerts.parquet").read_bytes() == before
    assert not [p for p in rd.path.rglob("*.tmp")]


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: a real full disk, where this machine lets the tests mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_is_a_one_line_error_and_leaves_the_run_as_it_was(small_disk):
    spec = make_spec()
    rd = RunDirectory(small_disk / "runs", "2024-01", RUN_ID)
    alerts = write(rd, spec, "alerts", frame(3))
    manifest = (rd.path / "run.json").read_bytes()
    rng = np.random.default_rng(0)
    big = pl.DataFrame({"call_id": [f"c{i}" for i in range(100_000)], "x": rng.random(100_000)})
    with pytest.raises(EnvironmentFault) as info:
        write(rd, spec, "paths", big, inputs={"alerts": alerts["sha256"]})
    assert str(info.value) == f"{rd.path / 'truth/paths.parquet'}: cannot write: no space left on device"
    assert (rd.path / "run.json").read_bytes() == manifest
    assert not (rd.path / "truth/paths.parquet").exists()
    assert not [p for p in rd.path.rglob("*.tmp")]


def test_a_month_with_features_completes_only_with_them(tmp_path):
    spec = make_spec(features=True)
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    a = write(rd, spec, "alerts", frame(3))
    write(rd, spec, "paths", frame(3), inputs={"alerts": a["sha256"]})
    assert rd.manifest()["status"] == "running" and rd.completion().missing == ("features",)
    write(
        rd,
        spec,
        "features",
        frame(3),
        inputs={"alerts": a["sha256"], "paths": rd.manifest()["artifacts"]["paths"]["sha256"]},
    )
    assert rd.manifest()["status"] == "completed" and (rd.path / "_SUCCESS").exists()


def test_an_artifact_this_process_wrote_is_read_back_from_memory_until_its_file_changes(tmp_path):
    spec = make_spec()
    rd = RunDirectory(tmp_path, "2024-01", RUN_ID)
    df = pl.DataFrame({"call_id": ["a", "b", "c"], "alert_ts_ms": [1, 2, 3], "x": [1.5, None, -0.25]})
    write(rd, spec, "alerts", df)
    reused = rd.read_artifact("alerts")
    assert rd.read_artifact("alerts") is reused  # not parsed again

    artifact_files._written.clear()  # what another process reads from the file
    from_disk = rd.read_artifact("alerts")
    assert from_disk.frame.equals(reused.frame) and from_disk.frame.schema == reused.frame.schema
    assert from_disk.frame.schema["alert_ts_ms"] == pl.Int64
    assert (from_disk.sha256, from_disk.metadata) == (reused.sha256, reused.metadata)
    assert from_disk.sha256 == sha(rd.artifact_path("alerts"))

    write(rd, spec, "alerts", df)
    other = pl.DataFrame({"call_id": ["z"], "alert_ts_ms": [9], "x": [0.0]})
    atomic.atomic_write_bytes(
        rd.artifact_path("alerts"), atomic.parquet_bytes(artifact_files.frame_to_arrow(other), {})
    )
    assert rd.read_artifact("alerts").frame.equals(other)  # replaced by another writer: read from disk

    write(rd, spec, "alerts", df)
    RunDirectory(tmp_path, "2024-02", RUN_ID).path.mkdir(parents=True)
    write(RunDirectory(tmp_path, "2024-02", RUN_ID), make_spec(), "alerts", other)
    assert list(artifact_files._written) == [RunDirectory(tmp_path, "2024-02", RUN_ID).artifact_path("alerts")]
