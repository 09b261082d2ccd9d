"""One run's artifacts, every month of it, read for a report; nothing is written (docs/reports.md).

A run is `runs/YYYY-MM/run_id=<uuid>/` per month. Each month's state is `lifecycle.month_status`'s
(what `quantlab runs status` prints); a month not completed contributes the artifacts it has, and
the report says what it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from quantlab_pipeline.core.confidence import benchmark_phrase, overfitting_sentence
from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.core.spec import RunSpec, validate_run_id
from quantlab_pipeline.core.sweep_spec import Constraints, benchmark_policy, parse_sweep
from quantlab_pipeline.storage.artifact_files import frame_from_arrow
from quantlab_pipeline.storage.layout import ARTIFACT_PATHS, iter_run_dirs, spec_path
from quantlab_pipeline.storage.lifecycle import month_status
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import read_spec

REPORTED_ARTIFACTS = ("alerts", "paths", "trades", "summary", "frontier", "overfitting", "equity", "portfolio")


@dataclass(frozen=True)
class MonthArtifacts:
    """One month of a run: its state and the artifacts found (absent ones are not in `frames`)."""

    month: str
    status: str  # `MonthStatus.state`, with "not started" for "missing"
    note: str  # why a month is not completed: its state, the error, the artifacts it lacks; "" when completed
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

    def overfitting_words(self, month: MonthArtifacts) -> str | None:
        """A month's `results/overfitting.parquet` in words (docs/confidence.md); None without one."""
        found = month.get("overfitting")
        if self.run_type != "optimization" or found is None or not found.height:
            return None
        horizon = self.spec.horizon_ms
        benchmark = benchmark_phrase(benchmark_policy(parse_sweep(self.spec.sweep), horizon), horizon)
        return overfitting_sentence(found.row(0, named=True), benchmark=benchmark)

    @property
    def incomplete(self) -> tuple[MonthArtifacts, ...]:
        return tuple(m for m in self.months if not m.complete)


def _read_parquet(path: Path) -> pl.DataFrame:
    try:
        return frame_from_arrow(pq.read_table(path))
    except OSError as exc:
        raise QuantlabError(f"{path}: unreadable artifact: {exc}") from None


def _read_month(run_dir: RunDirectory) -> MonthArtifacts:
    status = month_status(run_dir)
    frames = {a: _read_parquet(p) for a in REPORTED_ARTIFACTS if (p := run_dir.path / ARTIFACT_PATHS[a]).is_file()}
    if status.state == "completed":
        return MonthArtifacts(run_dir.month, "completed", "", frames)
    if status.state == "missing":
        return MonthArtifacts(run_dir.month, "not started", "not started", frames)
    try:
        missing = run_dir.completion().missing
    except QuantlabError:  # run.json unreadable: `status.detail` says so
        missing = ()
    parts = [status.state, status.detail or "", f"missing {', '.join(missing)}" if missing else ""]
    return MonthArtifacts(run_dir.month, status.state, "; ".join(p for p in parts if p), frames)


def load_run(runs_dir: Path, run_id: str) -> RunArtifacts:
    """Every month of `run_id` under `runs_dir`; `QuantlabError` if there is none completed."""
    validate_run_id(run_id)
    dirs = {month: path for month, rid, path in iter_run_dirs(runs_dir) if rid == run_id}
    if spec_path(runs_dir, run_id).is_file():
        spec = read_spec(runs_dir, run_id)
    elif dirs:  # a copied or restored run may lack runs/_specs/; every manifest carries the spec
        spec = RunSpec.from_dict(RunDirectory.read_manifest(next(iter(dirs.values())))["spec"])
    else:
        raise QuantlabError(f"run {run_id}: no such run under {runs_dir} (no {runs_dir}/YYYY-MM/run_id={run_id}/)")
    expected = spec.months() if spec.window.from_ and spec.window.to else []
    months = tuple(_read_month(RunDirectory(runs_dir, m, run_id)) for m in sorted({*expected, *dirs}))
    if not any(m.complete for m in months):
        states = "; ".join(f"{m.month}: {m.note}" for m in months) or "no month directory"
        raise QuantlabError(f"run {run_id}: no completed month under {runs_dir} ({states})")
    return RunArtifacts(run_id, spec, months)
