"""Creating a run spec from a request: the I/O around the pure builder.

Reads `@file.json` arguments, stamps a fresh run id and the creation time, captures the code's
provenance (git commit, branch, dirtiness, package version) and resolves relative paths against
the working directory — then `core.spec_builder.build_spec` decides everything else.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from quantlab_pipeline.core import json_text
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.spec import Provenance, RunSpec, new_run_id, utc_now_iso
from quantlab_pipeline.core.spec_builder import SpecRequest, build_spec


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


def load_json_arg(value: Any, *, field: str) -> Any:
    """A JSON argument as users give it (CLI flag or launchpad field): inline JSON text, or
    `@path/to/file.json`. Already-parsed values pass through."""
    if not isinstance(value, str):
        return value
    if not value.startswith("@"):
        return json_text.loads(value, field=field)
    path = Path(value[1:])
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{field}: cannot read {str(path)!r}: {exc.strerror or exc}") from None
    return json_text.loads(text, field=field, source=f"JSON in {str(path)!r}")


def create_run_spec(request: SpecRequest, *, run_id: str | None = None, base_dir: str | None = None) -> RunSpec:
    """A new, validated run spec for `request` (`policy`, `sweep` and `benchmark` may be text or `@file`)."""
    request = dataclasses.replace(
        request,
        policy=load_json_arg(request.policy, field="policy"),
        sweep=load_json_arg(request.sweep, field="sweep"),
        benchmark=load_json_arg(request.benchmark, field="benchmark"),
    )
    return build_spec(
        request,
        run_id=run_id or new_run_id(),
        created_at=utc_now_iso(),
        provenance=capture_provenance(),
        base_dir=base_dir or os.getcwd(),
    )
