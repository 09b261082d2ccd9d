"""Reading one run directory for the catalog: what is terminal, what is valid, the rows it gives.

A directory is valid when run.json parses with a supported schema version, its ids match the
directory, `_SUCCESS` (if any) carries the sha256 of those exact bytes, and every recorded
artifact is inside the directory at its recorded size (docs/catalog.md "Sync to catalog").
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from quantlab_pipeline.core.errors import first_line
from quantlab_pipeline.core.spec import RUN_TYPES
from quantlab_pipeline.storage.atomic import sha256_bytes, sha256_file
from quantlab_pipeline.storage.catalog.schema import (
    MANIFEST_STATUSES,
    OVERFITTING_COLUMNS,
    OVERFITTING_FIGURES,
    PORTFOLIO_FIGURES,
    TIMING_STEPS,
    Columns,
)
from quantlab_pipeline.storage.layout import (
    ARTIFACT_PATHS,
    ARTIFACT_SCHEMA_VERSION,
    MANIFEST,
    SUCCESS_MARKER,
    SUPPORTED_MANIFEST_VERSIONS,
    required_artifacts,
)
from quantlab_pipeline.storage.manifest import InvalidJSONFile, read_json_object

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

Rows = tuple[dict[str, Any], list[dict[str, Any]]]  # (runs row, artifact rows)


class Invalid(Exception):
    """A run directory that must be rejected; the message is the one-line reason."""


# The errors that reject a directory (rather than fail the sync): the message is the reason.
REJECTING = (Invalid, InvalidJSONFile)


def _get(obj: dict[str, Any], key: str, types: type | tuple[type, ...], where: str, required: bool = False) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise Invalid(f"{where}: '{key}' is missing")
        return None
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise Invalid(f"{where}: '{key}' has type bool")
    if not isinstance(value, types):
        raise Invalid(f"{where}: '{key}' has type {type(value).__name__}")
    return value


def _get_dict(obj: dict[str, Any], key: str, where: str, required: bool = False) -> dict[str, Any]:
    return _get(obj, key, dict, where, required) or {}


def _timestamp(obj: dict[str, Any], key: str, where: str, required: bool = False) -> dt.datetime | None:
    value = _get(obj, key, str, where, required)
    if value is None:
        return None
    try:
        ts = dt.datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(f"{where}: '{key}' is not an ISO-8601 timestamp: {value!r}") from None
    if ts.tzinfo is not None:
        ts = ts.astimezone(dt.UTC).replace(tzinfo=None)
    return ts


def _date(obj: dict[str, Any], key: str, where: str) -> dt.date | None:
    value = _get(obj, key, str, where)
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise Invalid(f"{where}: '{key}' is not an ISO date: {value!r}") from None


def manifest_row(manifest: dict[str, Any], month: str, run_id: str) -> dict[str, Any]:
    """The `runs` columns a manifest determines; `Invalid` names the first bad field."""
    where = MANIFEST
    if manifest.get("run_id") != run_id:
        raise Invalid(f"{where}: run_id {manifest.get('run_id')!r} does not match the directory")
    if manifest.get("month") != month:
        raise Invalid(f"{where}: month {manifest.get('month')!r} does not match the directory")
    versions = _get_dict(manifest, "schema_version", where, required=True)
    if versions.get("manifest") not in SUPPORTED_MANIFEST_VERSIONS:
        raise Invalid(
            f"{where}: schema_version.manifest {versions.get('manifest')!r} is not supported "
            f"(supported: {', '.join(sorted(SUPPORTED_MANIFEST_VERSIONS))})"
        )
    if versions.get("artifacts") != ARTIFACT_SCHEMA_VERSION:
        raise Invalid(
            f"{where}: schema_version.artifacts {versions.get('artifacts')!r} is not supported "
            f"(supported: {ARTIFACT_SCHEMA_VERSION})"
        )
    run_type = manifest.get("run_type")
    if run_type not in RUN_TYPES:
        raise Invalid(f"{where}: run_type {run_type!r} is not one of {', '.join(RUN_TYPES)}")
    status = manifest.get("status")
    if status not in MANIFEST_STATUSES:
        raise Invalid(f"{where}: status {status!r} is not one of {', '.join(MANIFEST_STATUSES)}")
    spec = _get_dict(manifest, "spec", where, required=True)
    dataset = _get_dict(manifest, "dataset", where)
    provenance = _get_dict(manifest, "provenance", where) or _get_dict(spec, "provenance", f"{where}: spec")
    timing = _get_dict(manifest, "timing", where)
    error = _get_dict(manifest, "error", where)
    calls_count = _get(dataset, "calls_count", int, f"{where}: dataset")
    if calls_count is not None and calls_count < 0:
        raise Invalid(f"{where}: dataset: 'calls_count' is negative")
    row = {
        "run_id": run_id,
        "month": month,
        "run_type": run_type,
        "status": status,
        "created_at": _timestamp(manifest, "created_at", where, required=True),
        "started_at": _timestamp(manifest, "started_at", where),
        "completed_at": _timestamp(manifest, "completed_at", where, required=status == "completed"),
        "policy_id": _get(spec, "policy_id", str, f"{where}: spec"),
        "interval": _get(dataset, "interval", str, f"{where}: dataset")
        or _get(spec, "interval", str, f"{where}: spec"),
        "window_from": _date(dataset, "from", f"{where}: dataset"),
        "window_to": _date(dataset, "to", f"{where}: dataset"),
        "calls_count": calls_count,
        "git_commit": _get(provenance, "git_commit", str, f"{where}: provenance"),
        "git_branch": _get(provenance, "git_branch", str, f"{where}: provenance"),
        "git_dirty": _get(provenance, "git_dirty", bool, f"{where}: provenance"),
        "quantlab_version": _get(provenance, "quantlab_version", str, f"{where}: provenance"),
        "schema_version": versions["manifest"],
        "artifacts_schema_version": versions["artifacts"],
        "spec_json": json.dumps(spec, sort_keys=True),
        "error_message": _get(error, "message", str, f"{where}: error"),
        "error_phase": _get(error, "phase", str, f"{where}: error"),
    }
    for step in TIMING_STEPS:
        value = _get(timing, f"{step}_ms", (int, float), f"{where}: timing")
        row[f"timing_{step}_ms"] = None if value is None else round(value)
    return row


def checked_artifacts(manifest: dict[str, Any], run_dir: Path, run_type: str, verify: bool) -> list[dict[str, Any]]:
    """Every recorded artifact must exist inside the run directory at its recorded size
    (and, with `verify`, its recorded sha256); the run type's required ones must be recorded."""
    recorded = _get_dict(manifest, "artifacts", MANIFEST)
    missing = [a for a in required_artifacts(run_type, _get_dict(manifest, "spec", MANIFEST)) if a not in recorded]
    if missing:
        raise Invalid(f"{MANIFEST}: run_type {run_type} requires artifact(s) {', '.join(missing)}")
    base = run_dir.resolve()
    rows = []
    for name, entry in recorded.items():
        where = f"{MANIFEST}: artifacts.{name}"
        if name not in ARTIFACT_PATHS:
            raise Invalid(f"{where}: unknown artifact type")
        if not isinstance(entry, dict):
            raise Invalid(f"{where}: expected an object")
        rel = _get(entry, "path", str, where, required=True)
        size = _get(entry, "bytes", int, where, required=True)
        n_rows = _get(entry, "rows", int, where)
        sha = _get(entry, "sha256", str, where, required=True)
        if not _SHA256_RE.match(sha):
            raise Invalid(f"{where}: 'sha256' is not a hex sha256")
        path = (base / rel).resolve()
        if Path(rel).is_absolute() or not path.is_relative_to(base):
            raise Invalid(f"{where}: path {rel!r} is outside the run directory")
        try:
            on_disk = path.stat().st_size
        except FileNotFoundError:
            raise Invalid(f"artifact {name}: {rel} is missing") from None
        if on_disk != size:
            raise Invalid(f"artifact {name}: {rel} has {on_disk} bytes, run.json records {size}")
        if verify and sha256_file(path) != sha:
            raise Invalid(f"artifact {name}: {rel} sha256 does not match run.json")
        rows.append({"artifact_type": name, "path": str(path), "rows": n_rows, "bytes": size, "sha256": sha})
    return rows


def _figures_row(artifacts: list[dict[str, Any]], artifact: str, columns: Columns) -> dict[str, Any] | None:
    """The one row of a month's one-row figures artifact (None when the month has none), read only
    when a run is registered or updated. Read with Polars: pyarrow's reader imports pandas, ~1 s of
    every sync job's fresh process (docs/catalog.md). A file that is not one row of those columns at
    their types rejects the directory."""
    path = next((a["path"] for a in artifacts if a["artifact_type"] == artifact), None)
    if path is None:
        return None
    where = f"artifact {artifact}: {ARTIFACT_PATHS[artifact]}"
    try:
        stored = pl.read_parquet_schema(path)
        if missing := [name for name, _, _ in columns if name not in stored]:
            raise Invalid(f"{where}: no column {missing[0]!r}")
        frame = pl.read_parquet(path, columns=[name for name, _, _ in columns])
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise Invalid(f"{where}: unreadable: {first_line(exc)}") from None
    if frame.height != 1:
        raise Invalid(f"{where}: {frame.height} rows, expected 1")
    for name, _, typ in columns:
        found = frame.schema[name]
        if not (found.is_float() if pa.types.is_floating(typ) else found.is_integer()):
            raise Invalid(f"{where}: column {name!r} has type {found}, expected {typ}")
    return frame.row(0, named=True)


def portfolio_figures(artifacts: list[dict[str, Any]]) -> dict[str, Any]:
    """The `portfolio_*` columns: the month's `results/portfolio.parquet` (none without a portfolio)."""
    row = _figures_row(artifacts, "portfolio", PORTFOLIO_FIGURES)
    return {} if row is None else {f"portfolio_{name}": value for name, value in row.items()}


def overfitting_figures(artifacts: list[dict[str, Any]]) -> dict[str, Any]:
    """`pbo` and `spa_pvalue` of the month's `results/overfitting.parquet` (docs/confidence.md), null
    without one."""
    return _figures_row(artifacts, "overfitting", OVERFITTING_FIGURES) or dict.fromkeys(OVERFITTING_COLUMNS)


def read_terminal(month: str, run_id: str, run_dir: Path, verify: bool) -> Rows | None:
    """`(runs row, artifact rows)` of a terminal directory, None when it is not terminal (skipped).

    Raises one of `REJECTING` with the reason when the directory must be rejected.
    """
    manifest_path, marker_path = run_dir / MANIFEST, run_dir / SUCCESS_MARKER
    marker: dict[str, Any] | None
    try:
        _, marker = read_json_object(marker_path)
    except FileNotFoundError:
        marker = None
    try:
        manifest_bytes, manifest = read_json_object(manifest_path)
    except FileNotFoundError:
        if marker is None:
            return None  # a directory being created
        raise Invalid(f"{SUCCESS_MARKER} present but {MANIFEST} is missing") from None
    if marker is None:
        status = manifest.get("status")
        if status in MANIFEST_STATUSES and status != "failed":
            return None  # running, or completed with the marker about to be written
        row = manifest_row(manifest, month, run_id)
        artifacts: list[dict[str, Any]] = []  # a failed run is registered without artifacts
    else:
        for key, expected in (("run_id", run_id), ("month", month)):
            if marker.get(key) != expected:
                raise Invalid(f"{SUCCESS_MARKER}: {key} {marker.get(key)!r} does not match the directory")
        if marker.get("manifest_sha256") != sha256_bytes(manifest_bytes):
            raise Invalid(f"{SUCCESS_MARKER}: manifest_sha256 does not match {MANIFEST}")
        row = manifest_row(manifest, month, run_id)
        if row["status"] != "completed":
            raise Invalid(f"{MANIFEST}: status is {row['status']!r} but {SUCCESS_MARKER} is present")
        artifacts = checked_artifacts(manifest, run_dir, row["run_type"], verify)
        row |= portfolio_figures(artifacts)
        row.update(overfitting_figures(artifacts))
    row.update(
        run_dir=str(run_dir),
        manifest_path=str(manifest_path),
        manifest_sha256=sha256_bytes(manifest_bytes),
    )
    return row, artifacts
