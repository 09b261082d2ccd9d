"""Creating a run spec: defaults, a fresh run id, creation time and code provenance (git state)."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.spec import Provenance, RunSpec, new_run_id, utc_now_iso


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def package_version() -> str:
    try:
        return metadata.version("quantlab_pipeline")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def capture_provenance() -> Provenance:
    """Git commit, branch and dirtiness of the current directory; absent fields outside git."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return Provenance(quantlab_version=package_version())
    branch = _git("rev-parse", "--abbrev-ref", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return Provenance(
        git_commit=commit,
        git_branch=branch,
        git_dirty=bool(status) if status is not None else None,
        quantlab_version=package_version(),
    )


def load_json_arg(value: str, *, field: str) -> Any:
    """A JSON value given inline or as `@path/to/file.json` (CLI flags, launchpad config)."""
    text = value
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SpecError(f"{field}: invalid JSON: {exc}") from None


def create_run_spec(fields: dict[str, Any], *, run_id: str | None = None) -> RunSpec:
    """Validate user-given spec fields and stamp them with an id, creation time and provenance.

    A `policy` given as text (inline JSON or `@file`) is parsed and stored in canonical form.
    """
    from quantlab_pipeline.core.policy_spec import parse_policy, policy_to_dict

    data = dict(fields)
    if data.get("policy") is not None:
        data["policy"] = policy_to_dict(parse_policy(data["policy"]))
    if isinstance(data.get("sweep"), str):
        data["sweep"] = load_json_arg(data["sweep"], field="sweep")
    data["run_id"] = run_id or new_run_id()
    data["created_at"] = utc_now_iso()
    data["provenance"] = capture_provenance().model_dump(mode="json")
    return RunSpec.from_dict(data)
