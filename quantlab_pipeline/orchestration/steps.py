"""What every artifact step shares: the window check, failure recording, step logs, and the
object an asset hands to the IO manager.

Assets hold no path logic: they compute with `core` and return an `ArtifactOutput`; the IO
manager writes it into the run directory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from dagster import AssetExecutionContext, Failure

from quantlab_pipeline.core.errors import ErrorRecord
from quantlab_pipeline.core.spec import RunSpec, utc_now_iso
from quantlab_pipeline.orchestration.partitions import split_month_run_key
from quantlab_pipeline.orchestration.resources import RunStoreResource
from quantlab_pipeline.storage.layout import REQUIRED_ARTIFACTS
from quantlab_pipeline.storage.run_dir import LoadedArtifact

# The CLI attaches a handler here to print one progress line per month and step.
progress_logger = logging.getLogger("quantlab_pipeline.progress")


@dataclass
class ArtifactOutput:
    """An artifact computed by an asset, with what the run directory records about it."""

    frame: pl.DataFrame
    phase: str
    inputs: dict[str, str]
    errors: list[ErrorRecord]
    headline: dict[str, Any] = field(default_factory=dict)
    parquet_metadata: dict[str, str] = field(default_factory=dict)
    compute_ms: int = 0


class ArtifactStep:
    """Handle given to an asset body: logging into the partition's `logs/stdout.txt` and output."""

    def __init__(self, context: AssetExecutionContext, phase: str, month: str, run_id: str):
        self.context = context
        self.phase = phase
        self.month = month
        self.run_id = run_id
        self.lines: list[str] = []
        self._started = time.perf_counter()

    @property
    def artifact(self) -> str:
        return self.context.asset_key.path[-1]

    def log(self, message: str) -> None:
        self.context.log.info(message)
        self.lines.append(f"{utc_now_iso()} [{self.artifact}] {message}")
        progress_logger.info(message, extra={"month": self.month, "step": self.artifact})

    def output(
        self,
        frame: pl.DataFrame,
        *,
        inputs: tuple[LoadedArtifact, ...] = (),
        errors: list[ErrorRecord] | None = None,
        headline: dict[str, Any] | None = None,
        parquet_metadata: dict[str, str] | None = None,
    ) -> ArtifactOutput:
        return ArtifactOutput(
            frame=frame,
            phase=self.phase,
            inputs={a.artifact: a.sha256 for a in inputs},
            errors=list(errors or []),
            headline=headline or {},
            parquet_metadata=parquet_metadata or {},
            compute_ms=int((time.perf_counter() - self._started) * 1000),
        )


@contextmanager
def artifact_step(
    context: AssetExecutionContext, run_store: RunStoreResource, spec: RunSpec, phase: str
) -> Iterator[ArtifactStep]:
    """Run an asset body for one (month, run) partition.

    An artifact the run type does not produce, or a month outside the run's window, fails before
    anything touches disk: a completed run is never reopened by a step that cannot complete it. Otherwise the run is
    marked running (removing `_SUCCESS`), and any exception is recorded in the run directory
    (`status: failed`, errors.parquet, logs/stderr.txt) before it propagates to Dagster.
    """
    month, run_id = split_month_run_key(context.partition_key)
    artifact = context.asset_key.path[-1]
    if artifact not in REQUIRED_ARTIFACTS[spec.run_type]:  # e.g. "Materialize all" on a path-only run
        raise Failure(
            description=f"{artifact} does not apply to run {run_id} ({spec.run_type}); nothing was changed",
            allow_retries=False,
        )
    if not spec.covers_month(month):
        raise Failure(
            description=(
                f"month {month} is outside run {run_id}'s window "
                f"{spec.window.from_ or '…'}..{spec.window.to or '…'}; nothing was written"
            ),
            allow_retries=False,
        )
    run_dir = run_store.directory(month, run_id)
    run_dir.begin(spec)
    step = ArtifactStep(context, phase, month, run_id)
    try:
        yield step
    except Exception as exc:
        step.log(f"failed: {exc}")
        run_dir.record_failure(spec, phase=phase, exc=exc, dagster_run_id=context.run_id)
        raise
    finally:
        run_dir.append_stdout(step.lines)
