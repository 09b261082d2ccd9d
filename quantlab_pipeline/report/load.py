"""Read one run's artifacts, every month of it, for a report (read-only: nothing is written).

A run is `runs/YYYY-MM/run_id=<uuid>/` per month (README "What a run writes"). Completed months
(`_SUCCESS` present) are read in full; an incomplete month contributes the artifacts it has, and
its state is kept so the report can say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.core.spec import RunSpec, validate_run_id
from quantlab_pipeline.core.sweep_spec import Constraints, parse_sweep
from quantlab_pipeline.storage.artifact_files import frame_from_arrow
from quantlab_pipeline.storage.layout import (
    ARTIFACT_PATHS,
    MANIFEST,
    REQUIRED_ARTIFACTS,
    SUCCESS_MARKER,
    iter_run_dirs,
    spec_path,
)
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import read_spec

REPORTED_ARTIFACTS = ("alerts", "paths", "trades", "summary", "frontier")


@dataclass(frozen=True)
class MonthArtifacts:
    """One month of a run: its state and the artifacts found (None where absent)."""

    month: str
    status: str  # completed | running | failed | not started
    note: str  # why an incomplete month is incomplete; "" when completed
    frames: dict[str, pl.DataFrame]

    @property
    def complete(self) -> bool:
        return self.status == "completed"

    def get(self, artifact: str) -> pl.DataFrame | None:
        return self.frames.get(artifact)


@dataclass(frozen=True)
class RunArtifacts:
    run_id: str
    spec: RunSpec
    months: tuple[MonthArtifacts, ...]

    @property
    def run_type(self) -> str:
        return self.spec.run_type

    @property
    def constraints(self) -> Constraints | None:
        """The sweep's constraints (optimization runs), to draw the frontier's feasible region."""
        return parse_sweep(self.spec.sweep).constraints if self.run_type == "optimization" else None

    @property
    def incomplete(self) -> tuple[MonthArtifacts, ...]:
        return tuple(m for m in self.months if not m.complete)


def _read_parquet(path: Path) -> pl.DataFrame:
    try:
        return frame_from_arrow(pq.read_table(path))
    except OSError as exc:
        raise QuantlabError(f"{path}: unreadable artifact: {exc}") from None


def _read_month(month: str, run_dir: Path) -> MonthArtifacts:
    frames = {a: _read_parquet(p) for a in REPORTED_ARTIFACTS if (p := run_dir / ARTIFACT_PATHS[a]).is_file()}
    if (run_dir / SUCCESS_MARKER).is_file():
        return MonthArtifacts(month, "completed", "", frames)
    if not (run_dir / MANIFEST).is_file():
        return MonthArtifacts(month, "not started", "no run.json yet", frames)
    manifest: dict[str, Any] = RunDirectory.read_manifest(run_dir)
    status = str(manifest.get("status", "running"))
    if status == "completed":  # the manifest says so but the marker is gone: being re-written
        status = "running"
    missing = [a for a in REQUIRED_ARTIFACTS.get(manifest.get("run_type", ""), ()) if a not in frames]
    parts = [status]
    if status == "failed" and manifest.get("error"):
        error = manifest["error"]
        parts.append(str(error.get("message", error)) if isinstance(error, dict) else str(error))
    if missing:
        parts.append("missing " + ", ".join(missing))
    return MonthArtifacts(month, status, "; ".join(parts), frames)


def load_run(runs_dir: str | Path, run_id: str) -> RunArtifacts:
    """Every month of `run_id` under `runs_dir`; `QuantlabError` if there is none completed."""
    validate_run_id(run_id)
    runs_dir = Path(runs_dir)
    dirs = {month: path for month, rid, path in iter_run_dirs(runs_dir) if rid == run_id}
    if spec_path(runs_dir, run_id).is_file():
        spec = read_spec(runs_dir, run_id)
    elif dirs:  # a copied or restored run may lack runs/_specs/; every manifest carries the spec
        spec = RunSpec.from_dict(RunDirectory.read_manifest(next(iter(dirs.values())))["spec"])
    else:
        raise QuantlabError(f"run {run_id}: no such run under {runs_dir} (no {runs_dir}/YYYY-MM/run_id={run_id}/)")
    expected = spec.months() if spec.window.from_ and spec.window.to else []
    months = tuple(
        _read_month(m, dirs[m]) if m in dirs else MonthArtifacts(m, "not started", "no run directory", {})
        for m in sorted({*expected, *dirs})
    )
    if not any(m.complete for m in months):
        states = "; ".join(f"{m.month}: {m.note}" for m in months) or "no month directory"
        raise QuantlabError(f"run {run_id}: no completed month under {runs_dir} ({states})")
    return RunArtifacts(run_id, spec, months)
