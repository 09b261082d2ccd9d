"""The refusals a run directory makes before it is touched (docs/artifacts.md "What a run writes").

Each is a `WriteRefused`, raised before anything is written: a completed run stays completed, and
a removed directory is not recreated to hold one artifact alone. A refusal that stops a month its
own process left `running` is recorded as that month's failure (`RunDirectory.record_failure`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.storage.layout import artifact_applies
from quantlab_pipeline.storage.specs import spec_sha256


class WriteRefused(SpecError):
    """A write refused before the run directory was touched. `stops_month` is False for a request
    the run type never makes (the month's own steps still finish it), so it is never recorded."""

    def __init__(self, message: str, *, stops_month: bool = True):
        super().__init__(message)
        self.stops_month = stops_month


def check_artifact_applies(spec: RunSpec, artifact: str, month: str | None = None) -> None:
    """Refuse an artifact the run's type never writes: materializing `trades` for a path-only run
    (Dagster's "Materialize all") would otherwise reopen a completed directory and leave it failed."""
    if not artifact_applies(spec.run_type, artifact):
        where = f" {month}" if month else ""
        raise WriteRefused(
            f"{artifact}: run {spec.run_id} is a {spec.run_type} run and has no {artifact}; "
            f"run directory{where} left untouched",
            stops_month=False,
        )


def recorded_spec_sha256(manifest: dict[str, Any]) -> str | None:
    """`spec_sha256`, or for a manifest written before it was recorded, that of its `spec`."""
    if "spec_sha256" in manifest:
        return manifest["spec_sha256"]
    return spec_sha256(manifest["spec"]) if "spec" in manifest else None


def check_spec(manifest: dict[str, Any], spec: RunSpec, spec_file: Path, month: str) -> None:
    """Refuse to write a month from a spec other than the one it was written from: an edited
    `runs/_specs/<id>.json` would otherwise silently change the run's numbers."""
    recorded, current = recorded_spec_sha256(manifest), spec_sha256(spec)
    if recorded is not None and recorded != current:
        raise WriteRefused(
            f"{spec_file}: the spec of run {spec.run_id} changed since {month} was written "
            f"(sha256 {current[:12]}, recorded {recorded[:12]}); specs are immutable — restore it or create a new run"
        )


def raise_directory_gone(path: Path, artifact: str, inputs: dict[str, str]) -> None:
    """`artifact` was computed from artifacts read from `path`, which has no manifest any more:
    it was removed (archived) while the run computed."""
    raise WriteRefused(
        f"{path}: {artifact} was computed from {', '.join(sorted(inputs))} read from this run "
        "directory, which has since been removed (archived?); nothing was written"
    )
