"""The month runner: the one place that runs a run's months (docs/architecture.md "The month runner").

Three ways, one contract: `run_months` executes them in this process (one after another) or on
`parallel` run workers, `follow_queued` follows the runs the daemon launched from the queue
(`--submit`). Each reports what happens as plain records (`MonthStarted`, `StepProgress`,
`MonthEnded`) through a callback, and returns a `MonthsOutcome`: every planned month as its
directory and its Dagster run left it, and the signal that stopped the run, if one did. The CLI
only prints them.

Ctrl-C (SIGINT) and SIGTERM stop at the step being run: Dagster raises inside it, the step records
the month as `interrupted` (docs/architecture.md "Interruptions"), no later month starts. An interruption outside any
step (Dagster's bookkeeping) is recorded here, where the step would have.

Run workers (`--parallel`) are processes started by the `spawn` function the caller injects (the
warm server forks them, with Dagster and the kernels loaded); each runs `execute_worker`: it takes
the next month nobody has taken, creates its Dagster run and executes it as Dagster's own run
worker does, then takes the next, until none is left. Months are handed out through a claims
directory: a worker claims a month by linking a file named after it (only one link can win) and
rewrites the claim with the month's Dagster run id once the run exists, so the runner can follow
the run's events and fail it when its worker dies. A signal stops the hand-out (the runner claims
every month left) and each worker with one SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing.connection
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from dagster import DagsterEventType, DagsterInstance, deserialize_value, serialize_value

from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.orchestration import dagster_adapter
from quantlab_pipeline.orchestration.month_runs import (
    MonthResult,
    create_month_run,
    latest_month_runs,
    materialize_month,
    month_result,
    record_interruption,
    settle_worker_exit,
)
from quantlab_pipeline.orchestration.steps import check_label, check_outcomes, progress_logger
from quantlab_pipeline.sources.candles import kept_candle_buffers
from quantlab_pipeline.storage.paths import ProjectPaths
from quantlab_pipeline.storage.specs import read_spec

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class MonthPlan:
    month: str
    steps: tuple[str, ...] | None = None  # None: every step of the run type's job


@dataclass(frozen=True)
class MonthStarted:
    month: str
    steps: tuple[str, ...] | None
    dagster_run_id: str | None = None  # known up front when a worker or the daemon runs it


@dataclass(frozen=True)
class StepProgress:
    """A line about one step of a month: rows materialized, the checks' outcomes, a progress note."""

    month: str
    step: str
    text: str


@dataclass(frozen=True)
class MonthEnded:
    """A month that ended other than by the interruption (which `MonthsOutcome` reports)."""

    result: MonthResult
    elapsed_s: float


Progress = MonthStarted | StepProgress | MonthEnded
OnProgress = Callable[[Progress], None]


@dataclass(frozen=True)
class MonthsOutcome:
    results: list[MonthResult]  # every planned month, in month order, as it stands now
    signal: int | None = None  # SIGINT or SIGTERM when one stopped the run


class Worker(Protocol):
    """A run worker process, as `spawn` returns it (`warm.client.ServerProcess`)."""

    pid: int

    @property
    def sentinel(self) -> int: ...

    @property
    def exitcode(self) -> int | None: ...

    def terminate(self) -> None: ...

    def join(self) -> None: ...


Spawn = Callable[[dict[str, Any]], Worker]  # starts a process running `execute_worker(request)`


def run_months(
    spec: RunSpec,
    plan: Sequence[MonthPlan],
    *,
    paths: ProjectPaths,
    instance: DagsterInstance,
    on_progress: OnProgress,
    parallel: int = 1,
    spawn: Spawn | None = None,
) -> MonthsOutcome:
    """Materialize each planned month as a Dagster run: one at a time in this process, or
    `parallel` at a time on workers started by `spawn`. Stops at an interruption."""
    handler = _ProgressHandler(on_progress)
    progress_logger.addHandler(handler)
    progress_logger.setLevel(logging.INFO)
    progress_logger.propagate = False
    try:
        with _signals_seen() as received:
            ended: dict[str, MonthResult] = {}  # with their Dagster run's error, when it failed
            if parallel <= 1 or len(plan) <= 1 or spawn is None:
                _in_process(spec, plan, paths, instance, on_progress, received, ended)
            else:
                _in_workers(spec, plan, paths, instance, on_progress, received, ended, parallel, spawn)
            with _signals_only_recorded():  # reading the fates is not interrupted
                results = [
                    ended.get(i.month) or month_result(spec, i.month, paths=paths, instance=instance) for i in plan
                ]
                return MonthsOutcome(results, _stop_signal(received()))
    finally:
        progress_logger.removeHandler(handler)


def follow_queued(
    spec: RunSpec,
    months: Sequence[str],
    *,
    paths: ProjectPaths,
    instance: DagsterInstance,
    on_progress: OnProgress,
    poll_s: float = 1.0,
) -> MonthsOutcome:
    """Follow the month runs the daemon launches (`--submit`) to their end, reporting each step's
    materialization as it is recorded and each month as it ends, in order of completion."""
    events = _EventReader(instance, on_progress)
    ended: dict[str, MonthResult] = {}
    started = time.perf_counter()
    while len(ended) < len(months):
        runs = latest_month_runs(instance, spec.run_id)
        for month in months:
            run = runs.get(month)
            if month in ended or run is None:
                continue
            events.read_new(month, run.run_id)
            if run.is_finished:
                ended[month] = month_result(spec, month, paths=paths, instance=instance, run=run)
                on_progress(MonthEnded(ended[month], time.perf_counter() - started))
        if len(ended) < len(months):
            time.sleep(poll_s)
    return MonthsOutcome([ended[m] for m in sorted(ended)])


class _ProgressHandler(logging.Handler):
    """The in-process steps' progress lines (`quantlab_pipeline.progress`), as records."""

    def __init__(self, on_progress: OnProgress):
        super().__init__()
        self.on_progress = on_progress

    def emit(self, record: logging.LogRecord) -> None:
        month, step = getattr(record, "month", ""), getattr(record, "step", "")
        self.on_progress(StepProgress(month, step, record.getMessage()))


class _Signals:
    """The signals that arrived so far, whoever handled them: Dagster swaps the SIGINT/SIGTERM
    handlers while a step runs, but every signal reaches the wakeup fd (`fd`, to wait on)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.seen: list[int] = []

    def __call__(self) -> list[int]:
        with contextlib.suppress(BlockingIOError):
            self.seen.extend(os.read(self.fd, 64))
        return self.seen


def _stop_signal(seen: Sequence[int]) -> int | None:
    return next((s for s in reversed(seen) if s in STOP_SIGNALS), None)


@contextlib.contextmanager
def _signals_seen() -> Iterator[_Signals]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous_term = signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C
    try:
        yield _Signals(read_fd)
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.set_wakeup_fd(previous_fd)
        os.close(read_fd)
        os.close(write_fd)


@contextlib.contextmanager
def _signals_only_recorded() -> Iterator[None]:
    """SIGINT and SIGTERM raise nothing inside the block; the wakeup fd still records them.

    A KeyboardInterrupt raised at an arbitrary point can be lost (one raised inside a weakref
    callback, e.g. a SQLAlchemy registry's, is printed and ignored) or land between creating a
    run and starting its worker; a loop that checks `_Signals` instead stops every time, cleanly.
    """
    previous = {signum: signal.signal(signum, lambda _signum, _frame: None) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _in_process(
    spec: RunSpec,
    plan: Sequence[MonthPlan],
    paths: ProjectPaths,
    instance: DagsterInstance,
    on_progress: OnProgress,
    received: _Signals,
    ended: dict[str, MonthResult],
) -> None:
    """One month after another, until a signal. The month it stopped is recorded as interrupted
    here unless its step did (Dagster caught it outside any step, or it landed before the step's
    recording began, and the month would stay `running`); one that completed stays completed."""
    current: str | None = None
    try:
        with kept_candle_buffers():  # each month's candles written where the month before's were
            for item in plan:
                if received():
                    return
                current, started = item.month, time.perf_counter()
                on_progress(MonthStarted(item.month, item.steps))
                result = materialize_month(spec, item.month, paths=paths, instance=instance, steps=item.steps)
                if received():  # its fate is reported with the interruption's
                    break
                current, ended[item.month] = None, result
                on_progress(MonthEnded(result, time.perf_counter() - started))
    except KeyboardInterrupt:
        if _stop_signal(received()) is None:  # raised, yet not seen on the wakeup fd
            received.seen.append(signal.SIGINT)
    if current is not None:
        with _signals_only_recorded():
            ended[current] = record_interruption(spec, current, paths=paths, instance=instance)


def _in_workers(
    spec: RunSpec,
    plan: Sequence[MonthPlan],
    paths: ProjectPaths,
    instance: DagsterInstance,
    on_progress: OnProgress,
    received: _Signals,
    ended: dict[str, MonthResult],
    parallel: int,
    spawn: Spawn,
) -> None:
    """`parallel` run workers, each running the months it claims one after another (a worker that
    dies is replaced while months are left); the steps' lines read from the runs' events."""
    months = [item.month for item in plan]
    steps = {item.month: item.steps for item in plan}
    announced: dict[str, float] = {}  # month: when its run was first seen
    events = _EventReader(instance, on_progress)
    with tempfile.TemporaryDirectory(prefix="quantlab-months-") as directory, _signals_only_recorded():
        claims = Path(directory)
        request = {
            "run_id": spec.run_id,
            "runs_dir": str(paths.resolved().runs_dir),
            "plan": [[m, list(s) if s else None] for m, s in steps.items()],
            "claims": str(claims),
            "instance_ref": serialize_value(instance.get_ref()),
        }

        stopped: set[str] = set()  # months the interruption ended: their fate is read from disk

        def follow(exited: Worker | None = None, *, report: bool = True) -> None:
            """Report what the runs recorded since the last look; end the months that ended —
            those of `exited` (a worker that has exited) whether or not their run finished."""
            for month, claim in sorted(read_claims(claims).items()):
                if month in ended or month in stopped or claim.pid == os.getpid():
                    continue
                run = instance.get_run_by_id(claim.dagster_run_id) if claim.dagster_run_id else None
                if run is not None and month not in announced:
                    announced[month] = time.perf_counter()
                    on_progress(MonthStarted(month, steps[month], run.run_id))
                if run is not None:
                    events.read_new(month, run.run_id)
                gone = exited is not None and claim.pid == exited.pid
                if gone and run is not None and exited is not None and exited.exitcode != 0:
                    settle_worker_exit(run.run_id, exited.exitcode or 0, instance)
                    run = instance.get_run_by_id(run.run_id)
                if (gone or (run is not None and run.is_finished)) and not report:
                    stopped.add(month)
                elif gone or (run is not None and run.is_finished):
                    ended[month] = month_result(spec, month, paths=paths, instance=instance, run=run)
                    elapsed = time.perf_counter() - announced.get(month, time.perf_counter())
                    on_progress(MonthEnded(ended[month], elapsed))

        workers = [spawn(request) for _ in range(min(parallel, len(months)))]
        while workers and not received():
            multiprocessing.connection.wait([received.fd, *(w.sentinel for w in workers)], timeout=0.3)
            for worker in list(workers):
                if worker.exitcode is not None:
                    workers.remove(worker)
                    follow(exited=worker)
                    taken = read_claims(claims)
                    if any(c.pid == worker.pid for c in taken.values()) and any(m not in taken for m in months):
                        workers.append(spawn(request))  # it died in a month, with months left
            follow()
        if received():
            for month in months:  # nobody takes another month
                claim(claims, month)
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.join()
                follow(exited=worker, report=False)
            for month in sorted(stopped):  # a worker stopped outside a step leaves its month `running`
                record_interruption(spec, month, paths=paths, instance=instance)


class _EventReader:
    """One record per materialization a run records, and one per step with its checks' outcomes
    (when the step ends), read from the instance's event log."""

    def __init__(self, instance: DagsterInstance, on_progress: OnProgress):
        self.instance, self.on_progress = instance, on_progress
        self.cursors: dict[str, str] = {}
        self.checks: dict[tuple[str, str], list[Any]] = {}  # (run, step): its check evaluations so far

    def read_new(self, month: str, run_id: str) -> None:
        result = self.instance.get_records_for_run(run_id, cursor=self.cursors.get(run_id))
        self.cursors[run_id] = result.cursor
        for record in result.records:
            event = record.event_log_entry.dagster_event
            if event is None:
                continue
            if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
                self.checks.setdefault((run_id, event.step_key or ""), []).append(event.event_specific_data)
            elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                step = event.step_key or ""
                evaluations = self.checks.pop((run_id, step), [])
                if evaluations:
                    line = check_outcomes(
                        (check_label(e.check_name, e.asset_key.path[-1], step), e.passed, e.severity)
                        for e in evaluations
                    )
                    self.on_progress(StepProgress(month, step, line))
            elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                materialization = event.step_materialization_data.materialization
                rows = materialization.metadata.get("dagster/row_count")
                detail = f": {rows.value:,} rows" if rows is not None else ""
                self.on_progress(StepProgress(month, materialization.asset_key.path[-1], f"materialized{detail}"))


# The run worker's side (`execute_worker`, in the process `spawn` started).


@dataclass(frozen=True)
class Claim:
    pid: int  # the worker that took the month (the runner's own pid: nobody runs it)
    dagster_run_id: str | None  # once the worker has created the month's run


def _write_claim(claims: Path, month: str, taken: Claim, *, exclusive: bool) -> bool:
    """Write the month's claim through a temporary file: linked (fails if the month is taken)
    when `exclusive`, else replacing the worker's own claim. Readers never see a partial claim."""
    fd, tmp = tempfile.mkstemp(dir=claims, prefix=".claim-")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": taken.pid, "dagster_run_id": taken.dagster_run_id}, fh)
        if not exclusive:
            os.replace(tmp, claims / month)
            return True
        try:
            os.link(tmp, claims / month)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def claim(claims: Path, month: str) -> bool:
    """Take `month` for this process; False when another process has it."""
    return _write_claim(claims, month, Claim(os.getpid(), None), exclusive=True)


def read_claims(claims: Path) -> dict[str, Claim]:
    """Every month taken so far, with who took it (claims being written are not shown yet)."""
    out = {}
    for path in claims.iterdir():
        if not path.name.startswith("."):
            data = json.loads(path.read_text())
            out[path.name] = Claim(int(data["pid"]), data["dagster_run_id"])
    return out


def execute_worker(request: dict[str, Any]) -> None:
    """A run worker's body. It has its own process group, outside the terminal's: a Ctrl-C reaches
    the runner alone, which then stops each worker with one SIGTERM (a second signal could
    interrupt the step while it records the first); the interrupted step records its month as
    interrupted. Its standard streams are /dev/null: the runs' events and each month's logs/ say
    what happened."""
    paths = ProjectPaths(runs_dir=Path(request["runs_dir"]))
    claims = Path(request["claims"])
    spec = read_spec(paths.runs_dir, request["run_id"])
    with (
        dagster_adapter.run_worker_interrupts(),
        DagsterInstance.from_ref(cast(Any, deserialize_value(request["instance_ref"]))) as instance,
        kept_candle_buffers(),  # each month's candles written where the month before's were
    ):
        for month, steps in request["plan"]:
            if not claim(claims, month):
                continue
            run = create_month_run(spec, month, paths=paths, instance=instance, steps=steps)
            _write_claim(claims, month, Claim(os.getpid(), run.run_id), exclusive=False)
            dagster_adapter.execute_run_as_worker(run.run_id, instance)
