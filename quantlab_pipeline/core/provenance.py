"""Code provenance captured when a run is created (git state of the working directory)."""

from __future__ import annotations

import subprocess
from importlib import metadata

from quantlab_pipeline.core.spec import Provenance


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
