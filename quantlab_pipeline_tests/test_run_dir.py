"""Run directory: layout, manifest, completion marker, re-materialization, failure, atomicity."""

from __future__ import annotations

import hashlib
import json
import os

import polars as pl
import pyarrow.parquet as pq
import pytest

from quantlab_pipeline.core.errors import ErrorRecord, QuantlabError, SpecError
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.storage import atomic
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import read_spec, write_spec

RUN_ID = "0b7c8a4e-1d2f-4a3b-9c4d-5e6f7a8b9c0d"


def make_spec(run_type: str = "path-only", **extra) -> RunSpec:
    data = {
        "run_id": RUN_ID,
        "run_type": run_type,
        "created_at": "2024-02-01T00:00:00.000Z",
        "interval": "5m",
        "window": {"from": "2024-01-10", "to": "2024-02-20"},
        "source": {"alerts": "/data/alerts.duckdb"},
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
