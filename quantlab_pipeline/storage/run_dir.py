"""One run directory `runs/YYYY-MM/run_id=<uuid>/` (DESIGN §4): artifacts, manifest, completion.

Every mutation happens under a per-run file lock (several Dagster runs may write one directory)
and every file is replaced atomically. The manifest is the source of truth for completion: a run
is complete when each artifact its run type requires is present with its recorded size and was
computed from the *current* version of each upstream artifact (recorded input sha256 == upstream
sha256). `_SUCCESS` is written last and removed first.
"""

from __future__ import annotations

import json
import traceback as tb
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock

from quantlab_pipeline.core.errors import ErrorRecord, QuantlabError
from quantlab_pipeline.core.spec import RunSpec, utc_now_iso, validate_month, validate_run_id
from quantlab_pipeline.storage.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    parquet_bytes,
    sha256_bytes,
)
from quantlab_pipeline.storage.layout import (
    ARTIFACT_INPUTS,
    ARTIFACT_PATHS,
    ARTIFACT_SCHEMA_VERSION,
    MANIFEST,
    MANIFEST_SCHEMA_VERSION,
    REQUIRED_ARTIFACTS,
    STDERR_LOG,
    STDOUT_LOG,
    SUCCESS_MARKER,
    run_dir_path,
)
from quantlab_pipeline.storage.manifest import InvalidJSONFile, read_json_object
from quantlab_pipeline.storage.run_creation import package_version

LOCKS_DIR = "_locks"

ERRORS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("ts", pa.string()),
        ("level", pa.string()),
        ("phase", pa.string()),
        ("call_id", pa.string()),
        ("mint", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("details", pa.string()),
    ]
)


@dataclass(frozen=True)
class LoadedArtifact:
    """An artifact as read: its frame, the sha256 of the exact bytes read, its Parquet metadata."""

    artifact: str
    frame: pl.DataFrame
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    complete: bool
    missing: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append("missing " + ", ".join(self.missing))
        if self.stale:
            parts.append("stale (upstream changed) " + ", ".join(self.stale))
        return "; ".join(parts) or "complete"


# Alert times are stored unsigned: DuckDB multiplies an INTERVAL only by an integer that fits
# 32 bits or by UBIGINT, and the seed's analysis SQL does `alert_ts_ms * INTERVAL '1 millisecond'`.
# In memory (kernels, joins) every timestamp stays Int64.
_STORED_AS = {"alert_ts_ms": pl.UInt64}


def frame_to_arrow(frame: pl.DataFrame) -> pa.Table:
    """The on-disk form: plain Arrow types (string, not string_view) so every reader opens it."""
    casts = [pl.col(c).cast(t) for c, t in _STORED_AS.items() if c in frame.columns]
    return frame.with_columns(casts).to_arrow(compat_level=pl.CompatLevel.oldest())


def frame_from_arrow(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    return frame.with_columns(pl.col(c).cast(pl.Int64) for c in _STORED_AS if c in frame.columns)


class RunDirectory:
    """The directory of one (month, run) partition and everything written into it."""

    def __init__(self, runs_dir: str | Path, month: str, run_id: str):
        self.runs_dir = Path(runs_dir)
        self.month = validate_month(month)
        self.run_id = validate_run_id(run_id)
        self.path = run_dir_path(self.runs_dir, month, run_id)
        lock_path = self.runs_dir / LOCKS_DIR / f"{month}_{run_id}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(lock_path)

    # -- reading ---------------------------------------------------------------------------------

    @staticmethod
    def read_manifest(path: str | Path) -> dict[str, Any]:
        """Parse `run.json` of a run directory (or the file itself); `QuantlabError` if unreadable."""
        path = Path(path)
        manifest_path = path / MANIFEST if path.is_dir() else path
        try:
            return read_json_object(manifest_path)[1]
        except FileNotFoundError:
            raise QuantlabError(f"{manifest_path}: no manifest (run.json) found") from None
        except InvalidJSONFile as exc:
            raise QuantlabError(f"{manifest_path}: unreadable manifest: {exc.reason}") from None
        except OSError as exc:
            raise QuantlabError(f"{manifest_path}: unreadable manifest: {exc}") from None

    def manifest(self) -> dict[str, Any] | None:
        try:
            return self.read_manifest(self.path)
        except QuantlabError:
            if (self.path / MANIFEST).exists():
                raise
            return None

    def artifact_path(self, artifact: str) -> Path:
        return self.path / ARTIFACT_PATHS[artifact]

    def read_artifact(self, artifact: str) -> LoadedArtifact:
        """Read an artifact once: the sha256 is of the very bytes parsed, so provenance is exact."""
        path = self.artifact_path(artifact)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise QuantlabError(
                f"{path}: artifact '{artifact}' has not been materialized for {self.month}|{self.run_id}"
            ) from None
        table = pq.read_table(pa.BufferReader(data))
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        return LoadedArtifact(artifact, frame_from_arrow(table), sha256_bytes(data), meta)

    # -- lifecycle -------------------------------------------------------------------------------

    def begin(self, spec: RunSpec) -> None:
        """Mark the run as being (re)written: `_SUCCESS` goes first, status becomes `running`."""
        with self._lock:
            self._save(self._reopen(spec))

    def write_artifact(
        self,
        artifact: str,
        frame: pl.DataFrame,
        spec: RunSpec,
        *,
        inputs: dict[str, str],
        dagster_run_id: str | None,
        elapsed_ms: int,
        parquet_metadata: dict[str, str] | None = None,
        errors: tuple[str, list[ErrorRecord]] | None = None,
    ) -> dict[str, Any]:
        """Write one artifact (and its phase's error rows), update the manifest, finalize if complete.

        `inputs` maps each upstream artifact to the sha256 it was computed from. `errors` is
        `(phase, records)`: the phase's previous rows are replaced by these.
        Returns the artifact's manifest record.
        """
        if artifact not in ARTIFACT_PATHS or artifact == "errors":
            raise ValueError(f"unknown artifact {artifact!r}")
        with self._lock:
            manifest = self._reopen(spec)
            record = self._write_parquet(artifact, frame, parquet_metadata or {})
            record["inputs"] = {u: inputs[u] for u in ARTIFACT_INPUTS[artifact] if u in inputs}
            manifest["artifacts"][artifact] = record
            if errors is not None:
                self._replace_errors(manifest, *errors)
            if artifact == "alerts":
                manifest["dataset"]["calls_count"] = frame.height
            manifest["provenance"].setdefault("dagster_runs", {})[artifact] = dagster_run_id
            timing = manifest["timing"]
            timing[f"{artifact}_ms"] = int(elapsed_ms)
            timing["total_ms"] = sum(v for k, v in timing.items() if k != "total_ms")
            self._save(manifest)
            self._finalize_if_complete(manifest)
            return record

    def record_failure(
        self,
        spec: RunSpec,
        *,
        phase: str,
        exc: BaseException,
        dagster_run_id: str | None = None,
    ) -> None:
        """`status: failed`, the error in errors.parquet (level error) and logs/stderr.txt."""
        trace = "".join(tb.format_exception(exc))
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        with self._lock:
            manifest = self._load_or_new(spec)
            self._unmark()
            manifest["status"] = "failed"
            manifest["completed_at"] = None
            manifest["error"] = {"message": message, "phase": phase, "dagster_run_id": dagster_run_id}
            failure = ErrorRecord(
                level="error",
                phase=phase,  # type: ignore[arg-type]
                reason="failure",
                message=message,
                details={"exception": type(exc).__name__, "traceback": trace},
            )
            self._append_errors(manifest, [failure])
            self._append_text(STDERR_LOG, f"[{utc_now_iso()}] {phase} failed: {message}\n{trace}\n")
            self._save(manifest)

    def append_stdout(self, lines: Iterable[str]) -> None:
        text = "".join(f"{line}\n" for line in lines)
        if text:
            with self._lock:
                self._append_text(STDOUT_LOG, text)

    def completion(self, manifest: dict[str, Any] | None = None) -> Completion:
        """Which required artifacts are missing (or not at their recorded size) or stale."""
        manifest = manifest if manifest is not None else self.manifest()
        if manifest is None:
            return Completion(False, missing=REQUIRED_ARTIFACTS["path-only"])
        artifacts = manifest.get("artifacts", {})
        missing, stale = [], []
        for name in REQUIRED_ARTIFACTS[manifest["run_type"]]:
            rec = artifacts.get(name)
            path = self.path / rec["path"] if rec else None
            if rec is None or not path.is_file() or path.stat().st_size != rec["bytes"]:
                missing.append(name)
                continue
            for upstream in ARTIFACT_INPUTS[name]:
                up = artifacts.get(upstream)
                if up is None or rec["inputs"].get(upstream) != up["sha256"]:
                    stale.append(name)
                    break
        return Completion(not missing and not stale, tuple(missing), tuple(stale))

    # -- internals (call with the lock held) -----------------------------------------------------

    def _load_or_new(self, spec: RunSpec) -> dict[str, Any]:
        manifest = self.manifest()
        if manifest is not None:
            return manifest
        lo, hi = spec.month_window(self.month)
        now = utc_now_iso()
        provenance = spec.provenance.model_dump(mode="json")
        return {
            "run_id": self.run_id,
            "month": self.month,
            "run_type": spec.run_type,
            "status": "running",
            "created_at": spec.created_at,
            "started_at": now,
            "completed_at": None,
            "schema_version": {"manifest": MANIFEST_SCHEMA_VERSION, "artifacts": ARTIFACT_SCHEMA_VERSION},
            "spec": spec.to_dict(),
            "dataset": {"from": lo.isoformat(), "to": hi.isoformat(), "interval": spec.interval, "calls_count": None},
            "provenance": {**provenance, "dagster_runs": {}},
            "timing": {},
            "artifacts": {},
            "logs": {"stdout": STDOUT_LOG, "stderr": STDERR_LOG},
        }

    def _reopen(self, spec: RunSpec) -> dict[str, Any]:
        """The manifest of a run being (re)written, its marker removed first (§4)."""
        manifest = self._load_or_new(spec)
        self._unmark()
        manifest.update(status="running", completed_at=None)
        manifest.pop("error", None)
        return manifest

    def _save(self, manifest: dict[str, Any]) -> bytes:
        return atomic_write_json(self.path / MANIFEST, manifest)

    def _unmark(self) -> None:
        (self.path / SUCCESS_MARKER).unlink(missing_ok=True)

    def _finalize_if_complete(self, manifest: dict[str, Any]) -> bool:
        if not self.completion(manifest).complete:
            return False
        completed_at = utc_now_iso()
        manifest["status"] = "completed"
        manifest["completed_at"] = completed_at
        data = self._save(manifest)
        marker = {
            "run_id": self.run_id,
            "month": self.month,
            "completed_at": completed_at,
            "manifest_sha256": sha256_bytes(data),
            "writer": f"quantlab_pipeline {package_version()}",
        }
        atomic_write_json(self.path / SUCCESS_MARKER, marker)
        return True

    def _write_parquet(self, artifact: str, frame: pl.DataFrame, extra: dict[str, str]) -> dict[str, Any]:
        path = self.artifact_path(artifact)
        metadata = {
            "run_id": self.run_id,
            "month": self.month,
            "artifact": artifact,
            "schema_version": ARTIFACT_SCHEMA_VERSION,
            **extra,
        }
        data = parquet_bytes(frame_to_arrow(frame), metadata)
        atomic_write_bytes(path, data)
        return {
            "path": ARTIFACT_PATHS[artifact],
            "rows": frame.height,
            "bytes": len(data),
            "sha256": sha256_bytes(data),
        }

    def _existing_errors(self) -> pa.Table:
        path = self.artifact_path("errors")
        if not path.exists():
            return ERRORS_SCHEMA.empty_table()
        return pq.read_table(path).select(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA)

    def _error_rows(self, records: list[ErrorRecord]) -> pa.Table:
        now = utc_now_iso()
        return pa.Table.from_pylist(
            [
                {
                    "run_id": self.run_id,
                    "ts": now,
                    "level": r.level,
                    "phase": r.phase,
                    "call_id": r.call_id,
                    "mint": r.mint,
                    "reason": r.reason,
                    "message": r.message,
                    "details": json.dumps(r.details, default=str, sort_keys=True),
                }
                for r in records
            ],
            schema=ERRORS_SCHEMA,
        )

    def _replace_errors(self, manifest: dict[str, Any], phase: str, records: list[ErrorRecord]) -> None:
        existing = self._existing_errors()
        keep = existing.filter(pc.not_equal(existing["phase"], phase)) if existing.num_rows else existing
        self._store_errors(manifest, pa.concat_tables([keep, self._error_rows(records)]))

    def _append_errors(self, manifest: dict[str, Any], records: list[ErrorRecord]) -> None:
        self._store_errors(manifest, pa.concat_tables([self._existing_errors(), self._error_rows(records)]))

    def _store_errors(self, manifest: dict[str, Any], table: pa.Table) -> None:
        path = self.artifact_path("errors")
        if table.num_rows == 0:
            path.unlink(missing_ok=True)
            manifest["artifacts"].pop("errors", None)
            return
        manifest["artifacts"]["errors"] = {
            **self._write_parquet("errors", pl.from_arrow(table), {}),
            "inputs": {},
        }

    def _append_text(self, relative: str, text: str) -> None:
        path = self.path / relative
        old = path.read_bytes() if path.exists() else b""
        atomic_write_bytes(path, old + text.encode())
