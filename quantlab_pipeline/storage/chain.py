"""Artifacts computed from another month of the same run (docs/portfolio.md: the portfolio's
months chain): which of those months were rewritten since."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantlab_pipeline.storage.layout import MANIFEST, run_dir_path, split_month_input
from quantlab_pipeline.storage.manifest import InvalidJSONFile, read_json_object


def changed_months(runs_dir: str | Path, run_id: str, record: dict[str, Any]) -> list[str]:
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
