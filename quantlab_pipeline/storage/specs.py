"""Run specs on disk: `runs/_specs/<run_id>.json`, written once and never changed.

Each run directory records the sha256 of its spec (`spec_sha256` in run.json) and refuses to be
written from another one, so an edited spec file cannot silently change a run's numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from quantlab_pipeline.core.errors import QuantlabError, SpecError
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.storage.atomic import atomic_write_bytes, sha256_bytes
from quantlab_pipeline.storage.layout import spec_path

# Fields fixed at creation; two specs that differ only in these describe the same backtest.
_CREATION_FIELDS = ("created_at", "provenance")


def _semantic(spec: RunSpec) -> dict:
    data = spec.to_dict()
    for key in _CREATION_FIELDS:
        data.pop(key, None)
    return data


def spec_bytes(spec: RunSpec | dict) -> bytes:
    """The canonical JSON of a spec: exactly the bytes `write_spec` stores."""
    data = spec.to_dict() if isinstance(spec, RunSpec) else spec
    return (json.dumps(data, indent=2, default=str) + "\n").encode()


def spec_sha256(spec: RunSpec | dict) -> str:
    """sha256 of the canonical spec JSON (of the spec file's bytes, unless hand-reformatted)."""
    return sha256_bytes(spec_bytes(spec))


def read_spec(runs_dir: Path, run_id: str) -> RunSpec:
    path = spec_path(runs_dir, run_id)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise QuantlabError(
            f"{path}: no run spec for run {run_id}; create the run first (quantlab runs create)"
        ) from None
    except (OSError, ValueError) as exc:
        raise QuantlabError(f"{path}: unreadable run spec: {exc}") from None
    return RunSpec.from_dict(data)


def write_spec(runs_dir: Path, spec: RunSpec) -> RunSpec:
    """Store `spec` unless it exists; an existing spec wins if identical, else the write is refused."""
    path = spec_path(runs_dir, spec.run_id)
    if path.exists():
        existing = read_spec(runs_dir, spec.run_id)
        if _semantic(existing) != _semantic(spec):
            raise SpecError(
                f"{path}: run {spec.run_id} already has a different spec; specs are immutable — create a new run"
            )
        return existing
    atomic_write_bytes(path, spec_bytes(spec))
    return spec
