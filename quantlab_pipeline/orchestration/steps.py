"""What every artifact step shares: the window check, failure recording, step logs, the object
an asset hands to the IO manager, and the evaluation of the asset's checks inside its step.

Assets hold no path logic: they compute with `core` and return an `ArtifactOutput`; the IO
manager writes it into the run directory.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import duckdb
import polars as pl
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    DagsterExecutionInterruptedError,
    Failure,
    Output,
)

from quantlab_pipeline.core.errors import ErrorRecord, SpecError
from quantlab_pipeline.core.spec import RunSpec, utc_now_iso
from quantlab_pipeline.orchestration.checks import ARTIFACT_CHECKS, DEFAULT_MAX_EXCLUDED_SHARE, CheckSubject
from quantlab_pipeline.orchestration.partitions import split_month_run_key
from quantlab_pipeline.orchestration.resources import CandleStoreResource, RunStoreResource
from quantlab_pipeline.storage.artifact_files import LoadedArtifact
from quantlab_pipeline.storage.faults import fault_point
from quantlab_pipeline.storage.guards import WriteRefused
from quantlab_pipeline.storage.layout import month_input_key, step_artifacts
from quantlab_pipeline.storage.run_dir import RunDirectory

# The CLI attaches a handler here to print one progress line per month and step.
progress_logger = logging.getLogger("quantlab_pipeline.progress")


@dataclass
class ArtifactOutput:
    """An artifact computed by an asset, with what the run directory records about it, and the
    other artifacts its step wrote with it (`companions`: a multi-artifact step's other assets)."""

    frame: pl.DataFrame
    phase: str
    inputs: dict[str, str]
    errors: list[ErrorRecord]
    headline: dict[str, Any] = field(default_factory=dict)
    parquet_metadata: dict[str, str] = field(default_factory=dict)
    compute_ms: int = 0
    companions: dict[str, ArtifactOutput] = field(default_factory=dict)


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
        return self.context.op_def.name  # the asset's name (one asset, or a multi-artifact step's first)

    @contextmanager
    def untimed(self) -> Iterator[None]:
        """What the step does inside (waiting for another month) is not its compute time."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._started += time.perf_counter() - started

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
        other_months: Mapping[str, LoadedArtifact] | None = None,
        companions: Mapping[str, ArtifactOutput] | None = None,
    ) -> ArtifactOutput:
        """The artifact and what it was computed from: `inputs` of this month, `other_months`
        (month: artifact) of the months before it. The step's time is recorded once, with this
        artifact: its `companions` record none."""
        recorded = {a.artifact: a.sha256 for a in inputs}
        recorded |= {month_input_key(a.artifact, month): a.sha256 for month, a in (other_months or {}).items()}
        return ArtifactOutput(
            frame=frame,
            phase=self.phase,
            inputs=recorded,
            errors=list(errors or []),
            headline=headline or {},
            parquet_metadata=parquet_metadata or {},
            compute_ms=int((time.perf_counter() - self._started) * 1000),
            companions={name: dataclasses.replace(c, compute_ms=0) for name, c in (companions or {}).items()},
        )


HEARTBEAT_EVERY_S = 60.0  # well inside storage.writer.HEARTBEAT_STALE_AFTER


@contextmanager
def _heartbeat(run_dir: RunDirectory) -> Iterator[None]:
    """Refresh the writer's heartbeat while a step computes, so a reader on another host can
    tell this live writer from a dead one (on this host the process table tells)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_EVERY_S):
            run_dir.heartbeat()

    thread = threading.Thread(target=beat, name="quantlab-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


@contextmanager
def artifact_step(
    context: AssetExecutionContext, run_store: RunStoreResource, spec: RunSpec, phase: str
) -> Iterator[ArtifactStep]:
    """Run an asset body for one (month, run) partition.

    A month outside the run's window, an artifact the run type does not produce, or a spec that
    changed since the directory was written fails before anything touches disk: a completed run
    is never reopened by a step that cannot complete it (a month this run left `running` records
    the refusal as its failure). Otherwise the run is marked running
    (removing `_SUCCESS`, recording this writer), and an exception is recorded in the run
    directory (`status: failed`, errors.parquet, logs/stderr.txt) before it propagates to
    Dagster — an interruption (Ctrl-C, SIGTERM, a run terminated from the UI) as `interrupted`.
    """
    month, run_id = split_month_run_key(context.partition_key)
    try:
        spec.month_window(month)
    except SpecError as exc:
        raise Failure(description=f"{exc}; nothing was written", allow_retries=False) from None
    run_dir = run_store.directory(month, run_id)
    fault_point(f"step.{context.op_def.name}")  # between steps: no lock held
    try:
        run_dir.begin(spec, artifact=context.op_def.name, phase=phase, dagster_run_id=context.run_id)
    except WriteRefused as exc:
        run_dir.record_failure(spec, phase=phase, exc=exc, dagster_run_id=context.run_id)
        raise Failure(description=str(exc), allow_retries=False) from None
    step = ArtifactStep(context, phase, month, run_id)
    try:
        with recording_failures(run_dir, spec, phase, context.run_id, log=step.log), _heartbeat(run_dir):
            yield step
    finally:
        run_dir.append_stdout(step.lines)


@contextmanager
def recording_failures(
    run_dir: RunDirectory, spec: RunSpec, phase: str, dagster_run_id: str, log: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Record whatever stops a step in its run directory, then let it propagate: an interruption
    (Ctrl-C, SIGTERM, a run terminated from the UI, also when it lands in a DuckDB query) as
    `interrupted`, anything else as a failure."""
    try:
        yield
    except (KeyboardInterrupt, DagsterExecutionInterruptedError) as exc:
        if log:
            log("interrupted")
        run_dir.record_failure(spec, phase=phase, exc=exc, dagster_run_id=dagster_run_id, reason="interrupted")
        raise
    except Exception as exc:
        interrupted = _interrupted_query(exc)
        if log:
            log("interrupted" if interrupted else f"failed: {exc}")
        reason: Literal["failure", "interrupted"] = "interrupted" if interrupted else "failure"
        run_dir.record_failure(spec, phase=phase, exc=exc, dagster_run_id=dagster_run_id, reason=reason)
        raise


# What DuckDB says when a signal lands in one of its queries; read through Arrow, the query's
# error reaches Python as Arrow's exception with this text rather than as DuckDB's own.
_DUCKDB_INTERRUPTED = "Query interrupted"


def _interrupted_query(exc: BaseException) -> bool:
    """Whether a signal (Ctrl-C, SIGTERM) stopped a DuckDB query under `exc` or what it wraps."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, duckdb.InterruptException) or _DUCKDB_INTERRUPTED in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def check_outcomes(results: Iterable[tuple[str, bool, AssetCheckSeverity]]) -> str:
    """A step's check evaluations as one progress line: `checks: no_look_ahead passed, …`."""
    words = {True: "passed", False: "failed"}
    return "checks: " + ", ".join(
        f"{name} {words[passed]}{' (warning)' if not passed and severity == AssetCheckSeverity.WARN else ''}"
        for name, passed, severity in results
    )


def check_label(check: str, artifact: str, step: str) -> str:
    """A check as a step's progress line names it: by its name, prefixed by its artifact when that
    is another of the step's artifacts (`equity.manifest_consistent`)."""
    return check if artifact == step else f"{artifact}.{check}"


def _outcomes(results: Iterable[AssetCheckResult], step: str) -> str:
    return check_outcomes(
        (check_label(r.check_name or "", r.asset_key.path[-1] if r.asset_key else step, step), r.passed, r.severity)
        for r in results
    )


def checked_step(
    context: AssetExecutionContext,
    run_store: RunStoreResource,
    spec: RunSpec,
    phase: str,
    compute: Callable[[ArtifactStep], ArtifactOutput],
    *,
    inputs: Mapping[str, LoadedArtifact],
    candle_store: CandleStoreResource,
    max_excluded_share: float = DEFAULT_MAX_EXCLUDED_SHARE,
) -> Iterator[Output | AssetCheckResult]:
    """The body of a checked asset (`orchestration.checks`): compute the artifact in its
    `artifact_step`, evaluate its content checks on the frame in memory, let the IO manager write
    it, then check the write. With only checks selected (the UI's "Execute checks") the stored
    artifact is read and checked, and nothing is written.

    A step that writes several artifacts (one asset each; `compute` returns the others as the
    output's `companions`) yields those selected, the companions first; each artifact's checks
    see the frames of all of them."""
    artifact = context.op_def.name  # the asset's name: one asset per op, or the step's first
    artifacts = step_artifacts(artifact)
    month, run_id = split_month_run_key(context.partition_key)
    run_dir = run_store.directory(month, run_id)
    selected = [
        (name, check)
        for name in artifacts
        for check in ARTIFACT_CHECKS.get(name, ())
        if AssetCheckKey(AssetKey(name), check.name) in context.selected_asset_check_keys
    ]

    def subject(name: str, frames: Mapping[str, pl.DataFrame]) -> CheckSubject:
        return CheckSubject(name, frames[name], inputs, spec, run_dir, candle_store, max_excluded_share, frames)

    content = [(name, check) for name, check in selected if not check.after_write]
    written = [name for name in artifacts if AssetKey(name) in context.selected_asset_keys]
    if written:
        with artifact_step(context, run_store, spec, phase) as step:
            output = compute(step)
            outputs = {artifact: output, **output.companions}
            frames = {name: out.frame for name, out in outputs.items()}
            results = [check.result(subject(name, frames)) for name, check in content]
            if results:  # logs/stdout.txt gets them before the write, which may finalize the month
                step.lines.append(f"{utc_now_iso()} [{artifact}] {_outcomes(results, artifact)}")
        for name in [*artifacts[1:], artifact]:
            if name in written and name in outputs:  # a companion a run does not have is not written
                yield Output(outputs[name], output_name=name)
    else:
        frames = {name: run_dir.read_artifact(name).frame for name in artifacts}
        results = [check.result(subject(name, frames)) for name, check in content]
    results += [check.result(subject(name, frames)) for name, check in selected if check.after_write]
    if results:
        context.log.info(_outcomes(results, artifact))
        progress_logger.info(_outcomes(results, artifact), extra={"month": month, "step": artifact})
    yield from results
