"""When a run directory is complete (docs/artifacts.md "What a run writes"): every artifact its run type
requires is present at its recorded size and was computed from the current version of each
upstream artifact, of its own month or, for the portfolio's chained months (docs/portfolio.md),
of the month before."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlab_pipeline.storage.layout import (
    ARTIFACT_INPUTS,
    ARTIFACT_PATHS,
    MANIFEST,
    REQUIRED_ARTIFACTS,
    required_artifacts,
    run_dir_path,
    split_month_input,
)
from quantlab_pipeline.storage.manifest import InvalidJSONFile, read_json_object


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


def completion(runs_dir: Path, month: str, run_id: str, manifest: dict[str, Any] | None) -> Completion:
    """Which required artifacts of a run directory (its run.json `manifest`) are missing (or not at
    their recorded size) or stale: computed from an older version of an upstream artifact."""
    if manifest is None:
        return Completion(False, missing=REQUIRED_ARTIFACTS["path-only"])
    directory = run_dir_path(runs_dir, month, run_id)
    artifacts = manifest.get("artifacts", {})
    missing, stale = [], []
    for name in required_artifacts(manifest["run_type"], manifest.get("spec")):
        rec = artifacts.get(name)
        path = directory / rec["path"] if rec else directory / ARTIFACT_PATHS[name]
        if rec is None or not path.is_file() or path.stat().st_size != rec["bytes"]:
            missing.append(name)
            continue
        changed = any(
            (up := artifacts.get(upstream)) is None or rec["inputs"].get(upstream) != up["sha256"]
            for upstream in ARTIFACT_INPUTS[name]
        )
        if changed or changed_months(runs_dir, run_id, rec):
            stale.append(name)
    return Completion(not missing and not stale, tuple(missing), tuple(stale))


def changed_months(runs_dir: Path, run_id: str, record: dict[str, Any]) -> list[str]:
    """The months whose artifact an artifact (its run.json `record`) was computed from holds other
    bytes now. A month whose directory or record is gone (archived) or unreadable cannot say, and
    is not counted."""
    changed = []
    for key, sha in record.get("inputs", {}).items():
        other = split_month_input(key)
        if other is None:
            continue
        artifact, month = other
        try:
            _, manifest = read_json_object(run_dir_path(runs_dir, month, run_id) / MANIFEST)
        except (OSError, InvalidJSONFile):
            continue
        current = (manifest.get("artifacts") or {}).get(artifact, {}).get("sha256", sha)
        if current != sha:
            changed.append(month)
    return changed
