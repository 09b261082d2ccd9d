"""Where each month of a run stands, read from its directory alone (docs/lifecycle.md "When a run is
interrupted"), and the checks a command makes on the runs directory before writing into it.

A month is `completed` (manifest completed and `_SUCCESS` present), `stale` (completed, but its
portfolio was computed from the month before as it was before that month was rewritten:
docs/portfolio.md), `failed` (with its error's first line), `interrupted` (recorded as
interrupted, or its writer is gone while the manifest still says running), `incomplete` (its
writer ended cleanly between two steps, as a partial selection such as `dagster asset
materialize --select alerts,paths` does: the detail names the steps left and the command that
runs them), `running` (its writer is alive) or `missing` (no manifest yet).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from quantlab_pipeline.core.errors import EnvironmentFault, QuantlabError, first_line
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.storage.completion import changed_months
from quantlab_pipeline.storage.layout import ARTIFACT_INPUTS, SUCCESS_MARKER, iter_run_dirs, required_artifacts
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import read_spec
from quantlab_pipeline.storage.writer import writer_gone

State = Literal["completed", "stale", "failed", "interrupted", "incomplete", "running", "missing"]


@dataclass(frozen=True)
class MonthStatus:
    month: str
    run_id: str
    state: State
    path: Path
    # stale: what changed; failed/interrupted: the error's first line or why the writer is taken
    # for dead; else None
    detail: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {
            "month": self.month,
            "run_id": self.run_id,
            "state": self.state,
            "path": str(self.path),
            "detail": self.detail,
        }


def month_status(run_dir: RunDirectory) -> MonthStatus:
    """The state of one month, without taking the directory's lock or changing anything."""

    def status(state: State, detail: str | None = None) -> MonthStatus:
        return MonthStatus(run_dir.month, run_dir.run_id, state, run_dir.path, detail)

    try:
        manifest = run_dir.manifest()
    except QuantlabError as exc:  # run.json exists but cannot be parsed
        return status("failed", str(exc))
    if manifest is None:
        return status("missing")
    state = manifest.get("status")
    if state == "failed":
        error = manifest.get("error") or {}
        message = first_line(str(error.get("message") or "failed (no error recorded)"))
        return status("interrupted" if error.get("reason") == "interrupted" else "failed", message)
    if state == "completed" and (run_dir.path / SUCCESS_MARKER).exists():
        records = manifest.get("artifacts", {}).values()
        changed = sorted(
            {month for record in records for month in changed_months(run_dir.runs_dir, run_dir.run_id, record)}
        )
        if changed:
            return status("stale", f"computed from {', '.join(changed)} before it was rewritten")
        return status("completed")
    # `running`, or `completed` without its marker: a finalize in progress, or cut short.
    gone = writer_gone(manifest.get("writer"))
    if gone is None or run_dir.lock.held_elsewhere():
        return status("running")
    if state == "completed":
        return status("interrupted", f"{gone}; finalize was cut short before _SUCCESS")
    todo = steps_to_finish(run_dir)
    if (manifest.get("writer") or {}).get("step_ended") and todo:
        left = ", ".join(todo)
        return status("incomplete", f"{left} not materialized; run `quantlab runs resume {run_dir.run_id}`")
    return status("interrupted", gone)


def run_status(runs_dir: Path, spec: RunSpec) -> list[MonthStatus]:
    """Every month of the run's window; for an open-ended window, the months on disk."""
    if spec.window.from_ is not None and spec.window.to is not None:
        months = spec.months()
    else:
        months = sorted({m for m, run_id, _ in iter_run_dirs(runs_dir) if run_id == spec.run_id})
    return [month_status(RunDirectory(runs_dir, month, spec.run_id)) for month in months]


def steps_to_finish(run_dir: RunDirectory, spec: RunSpec | None = None) -> tuple[str, ...]:
    """The artifacts a month still needs, in the order they are computed: every required one
    that is missing or stale, and everything computed from those (rewriting an artifact may
    change its bytes and leave its dependents stale; docs/lifecycle.md "When a run is interrupted"). Empty
    when the month is complete. A month never written needs every step of its run type, taken
    from `spec` (read from the runs directory when not given)."""
    manifest = run_dir.manifest()
    if manifest is None:
        spec = spec or read_spec(run_dir.runs_dir, run_dir.run_id)
        return required_artifacts(spec.run_type, spec.to_dict())
    completion = run_dir.completion(manifest)
    todo = set(completion.missing) | set(completion.stale)
    required = required_artifacts(manifest["run_type"], manifest.get("spec"))
    for artifact in required:  # REQUIRED_ARTIFACTS lists upstream before downstream
        if any(upstream in todo for upstream in ARTIFACT_INPUTS[artifact]):
            todo.add(artifact)
    return tuple(a for a in required if a in todo)


def month_statuses(runs_dir: Path, month: str) -> list[MonthStatus]:
    """Where every run directory of `month` stands: archiving the month must not remove a live
    one, nor, unless asked, an interrupted one `runs resume` would finish (docs/catalog.md)."""
    return [month_status(RunDirectory(runs_dir, m, run_id)) for m, run_id, _ in iter_run_dirs(runs_dir) if m == month]


def ensure_runs_dir(path: Path) -> Path:
    """The runs directory, created if absent, checked before any state is created: a one-line
    `QuantlabError` naming it when it is (or lies under) a file, an `EnvironmentFault` (exit 1)
    when it cannot be created, is not writable or is on a read-only file system."""
    if path.exists() and not path.is_dir():
        raise QuantlabError(f"runs directory {path}: not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except NotADirectoryError:
        raise QuantlabError(f"runs directory {path}: a parent is not a directory") from None
    except OSError as exc:
        raise EnvironmentFault(f"runs directory {path}: cannot create it: {exc.strerror or exc}") from None
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        raise EnvironmentFault(f"runs directory {path}: read-only file system")
    if not os.access(path, os.W_OK | os.X_OK):
        raise EnvironmentFault(f"runs directory {path}: not writable")
    return path
