"""One run directory `runs/YYYY-MM/run_id=<uuid>/` (docs/artifacts.md "What a run writes"): artifacts,
manifest, completion.

Every mutation happens under a per-run lock (several Dagster runs may write one directory) and
every file is replaced atomically. The manifest is the source of truth for completion: a run
is complete when each artifact its run type requires is present with its recorded size and was
computed from the *current* version of each upstream artifact (recorded input sha256 == upstream
sha256). `_SUCCESS` is written last and removed first; a kill between the manifest's `completed`
and the marker is finished by the next write or by `repair`.

The manifest also records who writes the directory (`writer`, see storage/writer.py) and the
sha256 of the spec it was written from (`spec_sha256`): a changed spec is refused.
"""

from __future__ import annotations

import shutil
import time
import traceback as tb
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa

from quantlab_pipeline.core.errors import ErrorRecord, QuantlabError, Reason, first_line
from quantlab_pipeline.core.spec import RunSpec, utc_now_iso, validate_month, validate_run_id
from quantlab_pipeline.storage.artifact_files import (
    LoadedArtifact,
    frame_from_arrow,
    read_artifact_file,
    write_artifact_file,
)
from quantlab_pipeline.storage.atomic import atomic_write_bytes, atomic_write_json, sha256_bytes
from quantlab_pipeline.storage.completion import Completion, completion
from quantlab_pipeline.storage.errors_file import error_rows, read_error_rows, without_phase
from quantlab_pipeline.storage.guards import (
    WriteRefused,
    check_artifact_applies,
    check_spec,
    raise_directory_gone,
    recorded_spec_sha256,
)
from quantlab_pipeline.storage.journal import Change, Journal
from quantlab_pipeline.storage.layout import (
    ARTIFACT_INPUTS,
    ARTIFACT_PATHS,
    ARTIFACT_PHASES,
    ARTIFACT_SCHEMA_VERSION,
    MANIFEST,
    MANIFEST_SCHEMA_VERSION,
    PREVIOUS_MONTH_INPUTS,
    STDERR_LOG,
    STDOUT_LOG,
    SUCCESS_MARKER,
    lock_path,
    month_lock_path,
    required_artifacts,
    run_dir_path,
    spec_path,
    split_month_input,
    temp_leftovers,
)
from quantlab_pipeline.storage.manifest import InvalidJSONFile, read_json_object
from quantlab_pipeline.storage.run_creation import package_version
from quantlab_pipeline.storage.specs import spec_sha256
from quantlab_pipeline.storage.writer import MonthLock, RunLock, is_current_writer, writer_gone, writer_record


class RunDirectory:
    """The directory of one (month, run) partition and everything written into it."""

    def __init__(self, runs_dir: str | Path, month: str, run_id: str):
        self.runs_dir = Path(runs_dir)
        self.month = validate_month(month)
        self.run_id = validate_run_id(run_id)
        self.path = run_dir_path(self.runs_dir, month, run_id)
        self.lock = RunLock(lock_path(self.runs_dir, month, run_id), MonthLock(month_lock_path(self.runs_dir, month)))
        self.journal = Journal(self.runs_dir)

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

    def spec_changed(self, spec: RunSpec) -> bool:
        """Whether the month was written from a spec other than `spec` (its writes are refused)."""
        manifest = self.manifest()
        recorded = recorded_spec_sha256(manifest) if manifest else None
        return recorded is not None and recorded != spec_sha256(spec)

    def artifact_path(self, artifact: str) -> Path:
        return self.path / ARTIFACT_PATHS[artifact]

    def read_artifact(self, artifact: str) -> LoadedArtifact:
        """Read an artifact once: the sha256 is of the very bytes parsed, so provenance is exact
        (for a file this process wrote and nobody has replaced since: of the bytes it wrote)."""
        path = self.artifact_path(artifact)
        try:
            return read_artifact_file(path, artifact)
        except FileNotFoundError:
            raise QuantlabError(
                f"{path}: artifact '{artifact}' has not been materialized for {self.month}|{self.run_id}"
            ) from None

    # -- lifecycle -------------------------------------------------------------------------------

    def begin(
        self,
        spec: RunSpec,
        *,
        artifact: str | None = None,
        phase: str | None = None,
        dagster_run_id: str | None = None,
    ) -> None:
        """Mark the run as being (re)written by this process: `_SUCCESS` goes first, status
        becomes `running`, the writer is recorded. Refused (nothing touched) when `artifact`
        does not apply to the run type or the spec changed since the directory was written.
        """
        if artifact is not None:
            check_artifact_applies(spec, artifact, self.month)
        with self.lock:
            self._save(self._reopen(spec, dagster_run_id=dagster_run_id, phase=phase))

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
        Its `wrote <path>: … in N ms` line goes to logs/stdout.txt before the run is finalized,
        so nothing in the directory changes after `_SUCCESS`. Returns the artifact's manifest record.
        """
        if artifact not in ARTIFACT_PATHS or artifact == "errors":
            raise ValueError(f"unknown artifact {artifact!r}")
        check_artifact_applies(spec, artifact, self.month)
        with self.lock:
            if inputs and not (self.path / MANIFEST).exists():
                raise_directory_gone(self.path, artifact, inputs)
            manifest = self._reopen(spec, dagster_run_id=dagster_run_id, phase=errors[0] if errors else None)
            started = time.perf_counter()
            record = self._write_parquet(artifact, frame, parquet_metadata or {})
            record["inputs"] = {u: inputs[u] for u in ARTIFACT_INPUTS[artifact] if u in inputs} | {
                key: sha
                for key, sha in inputs.items()
                if (other := split_month_input(key)) and other[0] in PREVIOUS_MONTH_INPUTS.get(artifact, ())
            }
            manifest["artifacts"][artifact] = record
            if errors is not None:
                self._replace_errors(manifest, *errors)
            write_ms = int((time.perf_counter() - started) * 1000)
            self._append_text(
                STDOUT_LOG,
                f"{utc_now_iso()} [{artifact}] wrote {record['path']}: {record['rows']} rows, "
                f"{record['bytes']} bytes in {write_ms} ms\n",
            )
            if artifact == "alerts":
                manifest["dataset"]["calls_count"] = frame.height
            manifest["provenance"].setdefault("dagster_runs", {})[artifact] = dagster_run_id
            timing = manifest["timing"]
            timing[f"{artifact}_ms"] = int(elapsed_ms)
            timing["total_ms"] = sum(v for k, v in timing.items() if k != "total_ms")
            manifest["writer"]["step_ended"] = True  # until its next step begins: `incomplete` if it stops here
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
        reason: Literal["failure", "interrupted"] = "failure",
    ) -> None:
        """`status: failed`, the error in errors.parquet (level error, `reason`) and logs/stderr.txt.

        `reason="interrupted"` records a run stopped by a signal or Ctrl-C (docs/lifecycle.md "When a run is
        interrupted"); `quantlab runs status` shows such a month as `interrupted`. A
        `WriteRefused` touched nothing; it is recorded only when it stops a month this process
        is writing (left `running`, the month would look interrupted, its reason lost), never
        into a month another writer owns, a terminal month or a directory that is gone.
        """
        trace = "".join(tb.format_exception(exc))
        message = first_line(exc)
        with self.lock:
            if isinstance(exc, WriteRefused) and not self._refusal_stops_own_month(exc):
                return
            manifest = self._load_or_new(spec)
            self._record_failure(
                manifest,
                phase=phase,
                message=message,
                reason=reason,
                dagster_run_id=dagster_run_id,
                details={"exception": type(exc).__name__, "traceback": trace},
                log=trace,
            )

    def _refusal_stops_own_month(self, exc: WriteRefused) -> bool:
        manifest = self.manifest() if exc.stops_month else None
        return (
            manifest is not None and manifest.get("status") == "running" and is_current_writer(manifest.get("writer"))
        )

    def remove(self, change: Change) -> None:
        """Delete the directory (`runs delete`), announcing it in the journal first."""
        with self.lock:
            if self.path.exists():
                self.journal.append(self.month, self.run_id, change)
                shutil.rmtree(self.path)

    def append_stdout(self, lines: Iterable[str]) -> None:
        """Append step log lines. Call before the step's `write_artifact`, which may finalize
        the run: nothing in a directory changes after its `_SUCCESS`."""
        text = "".join(f"{line}\n" for line in lines)
        if text:
            with self.lock:
                self._append_text(STDOUT_LOG, text)

    def heartbeat(self) -> bool:
        """Refresh `writer.heartbeat_at` if this process is the run's writer and it is running.

        On the writer's own host the process table tells a live writer from a dead one; from
        another host only this heartbeat can (storage/writer.py `HEARTBEAT_STALE_AFTER`).
        Returns whether the heartbeat was written.
        """
        with self.lock:
            manifest = self.manifest()
            if manifest is None or manifest.get("status") != "running":
                return False
            writer = manifest.get("writer")
            if not is_current_writer(writer):
                return False
            writer["heartbeat_at"] = utc_now_iso()
            self._save(manifest)
            return True

    def clean_leftovers(self) -> list[Path]:
        """Remove the temp files (`.<name>.<random>.tmp`) killed writers left in the directory.

        Every write into the directory happens under its lock, so with the lock held no temp
        file belongs to a live write. Returns the files removed.
        """
        with self.lock:
            return self._clean_leftovers()

    def repair(self) -> list[str]:
        """Bring a directory a writer died in to a state the next run can build on.

        Removes temp leftovers; finalizes a run that is complete but lacks `_SUCCESS` (a kill
        between the manifest's `completed` and the marker, or after the last artifact's write);
        records a `running` run whose writer is gone as failed with reason `interrupted`. A run
        whose writer is alive is left alone. Returns what was done, one line per action.
        """
        with self.lock:
            done = [f"removed leftover {p.relative_to(self.path)}" for p in self._clean_leftovers()]
            manifest = self.manifest()
            status = manifest.get("status") if manifest else None
            if manifest is None or status == "failed" or (self.path / SUCCESS_MARKER).exists():
                return done
            # Under the lock a `completed` manifest without marker is a crash, never a finalize
            # in progress; a `running` one may be a live writer between two steps.
            gone = writer_gone(manifest.get("writer")) if status == "running" else "finalize was cut short"
            if gone is None:
                return done
            completion = self.completion(manifest)
            if completion.complete:
                self._finalize_if_complete(manifest)
                return [*done, "finalized: every artifact present and current, _SUCCESS written"]
            # Recorded against the first step still to run: its success replaces the row.
            pending = [
                a
                for a in required_artifacts(manifest["run_type"], manifest.get("spec"))
                if a in completion.missing + completion.stale
            ]
            writer = manifest.get("writer") or {}
            self._record_failure(
                manifest,
                phase=ARTIFACT_PHASES[pending[0]],
                message=f"{gone}; {completion.describe()}",
                reason="interrupted",
                dagster_run_id=writer.get("dagster_run_id"),
                details={"writer": writer},
                log=None,
            )
            return [*done, f"recorded as interrupted: {gone}"]

    def completion(self, manifest: dict[str, Any] | None = None) -> Completion:
        """What this directory still lacks (`storage.completion`), from `manifest` or its run.json."""
        return completion(self.runs_dir, self.month, self.run_id, manifest if manifest is not None else self.manifest())

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

    def _reopen(self, spec: RunSpec, *, dagster_run_id: str | None, phase: str | None) -> dict[str, Any]:
        """The manifest of a run being (re)written by this process, its marker removed first (a
        terminal month leaving the catalog is announced in the journal before). A failure an earlier
        step of the same Dagster run recorded stays: a step that does not depend on the failed one
        (it runs after it all the same) does not make the month running."""
        manifest = self._load_or_new(spec)
        check_spec(manifest, spec, spec_path(self.runs_dir, self.run_id), self.month)
        self._clean_leftovers()
        if manifest.get("status") in ("completed", "failed") or (self.path / SUCCESS_MARKER).exists():
            self.journal.append(self.month, self.run_id, "reopened")
        self._unmark()
        writer = writer_record(dagster_run_id, phase, previous=manifest.get("writer"))
        error = manifest.pop("error", None)
        failed = (
            manifest.get("status") == "failed"
            and dagster_run_id
            and (error or {}).get("dagster_run_id") == dagster_run_id
        )
        manifest.update(status="failed" if failed else "running", completed_at=None, writer=writer)
        manifest.update(spec_sha256=spec_sha256(spec), **({"error": error} if failed else {}))
        self._ensure_logs()
        return manifest

    def _record_failure(
        self,
        manifest: dict[str, Any],
        *,
        phase: str,
        message: str,
        reason: Reason,
        dagster_run_id: str | None,
        details: dict[str, Any],
        log: str | None,
    ) -> None:
        self.journal.append(self.month, self.run_id, "failed")
        self._unmark()
        self._ensure_logs()
        manifest["status"] = "failed"
        manifest["completed_at"] = None
        manifest["error"] = {"message": message, "phase": phase, "reason": reason, "dagster_run_id": dagster_run_id}
        failure = ErrorRecord("error", phase, reason, message, details=details)  # type: ignore[arg-type]
        self._append_errors(manifest, [failure])
        what = "interrupted" if reason == "interrupted" else "failed"
        self._append_text(STDERR_LOG, f"[{utc_now_iso()}] {phase} {what}: {message}\n" + (f"{log}\n" if log else ""))
        self._save(manifest)

    def _ensure_logs(self) -> None:
        """Both logs exist from the first write on (stderr.txt empty while nothing failed)."""
        for relative in (STDOUT_LOG, STDERR_LOG):
            if not (self.path / relative).exists():
                atomic_write_bytes(self.path / relative, b"")

    def _clean_leftovers(self) -> list[Path]:
        removed = temp_leftovers(self.path)
        for path in removed:
            path.unlink(missing_ok=True)
        return removed

    def _save(self, manifest: dict[str, Any]) -> bytes:
        return atomic_write_json(self.path / MANIFEST, manifest)

    def _unmark(self) -> None:
        (self.path / SUCCESS_MARKER).unlink(missing_ok=True)

    def _finalize_if_complete(self, manifest: dict[str, Any]) -> bool:
        if not self.completion(manifest).complete:
            return False
        self.journal.append(self.month, self.run_id, "completed")
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
        data = write_artifact_file(path, artifact, frame, metadata)
        return {
            "path": ARTIFACT_PATHS[artifact],
            "rows": frame.height,
            "bytes": len(data),
            "sha256": sha256_bytes(data),
        }

    def _existing_errors(self) -> tuple[pa.Table, str | None]:
        """errors.parquet's rows and the sha256 of the file they were read from (None: no file)."""
        rows, sha, aside, problem = read_error_rows(self.artifact_path("errors"))
        if aside is not None:
            self._append_text(
                STDERR_LOG,
                f"[{utc_now_iso()}] {ARTIFACT_PATHS['errors']} was unreadable ({problem}); "
                f"moved aside to {aside.relative_to(self.path)}, its rows are not carried over\n",
            )
        return rows, sha

    def _replace_errors(self, manifest: dict[str, Any], phase: str, records: list[ErrorRecord]) -> None:
        existing, sha = self._existing_errors()
        keep = without_phase(existing, phase)
        recorded = (manifest["artifacts"].get("errors") or {}).get("sha256")
        if not records and keep.num_rows == existing.num_rows and sha == recorded:
            return  # the phase had no rows and has none, and the file is the one recorded (or none is)
        self._store_errors(manifest, pa.concat_tables([keep, error_rows(self.run_id, records)]))

    def _append_errors(self, manifest: dict[str, Any], records: list[ErrorRecord]) -> None:
        self._store_errors(manifest, pa.concat_tables([self._existing_errors()[0], error_rows(self.run_id, records)]))

    def _store_errors(self, manifest: dict[str, Any], table: pa.Table) -> None:
        path = self.artifact_path("errors")
        if table.num_rows == 0:
            path.unlink(missing_ok=True)
            manifest["artifacts"].pop("errors", None)
            return
        manifest["artifacts"]["errors"] = {
            **self._write_parquet("errors", frame_from_arrow(table), {}),
            "inputs": {},
        }

    def _append_text(self, relative: str, text: str) -> None:
        path = self.path / relative
        old = path.read_bytes() if path.exists() else b""
        atomic_write_bytes(path, old + text.encode())
