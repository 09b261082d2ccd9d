"""Running the months of a run from the CLI, shared by `backtest …` and `runs resume`: one
progress line per month and step, the closing table, and what an interruption leaves behind.

Ctrl-C (SIGINT) and SIGTERM stop at the step being run: Dagster raises inside it, the step
records the month as `interrupted` (README "When a run is interrupted"), no later month starts,
and the command exits 130 or 143 with one line saying how to finish the run.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.connection
import os
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from quantlab_pipeline.cli.console import console, err_console
from quantlab_pipeline.core import display
from quantlab_pipeline.core.spec import RunSpec

_EXIT_ON_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
MONTH_MEMORY_BYTES = 2 << 30


@dataclass(frozen=True)
class MonthPlan:
    month: str
    steps: tuple[str, ...] | None = None  # None: every step of the run type's job


class _ProgressHandler(logging.Handler):
    """Prints the steps' progress lines (`quantlab_pipeline.progress`) as they happen."""

    def emit(self, record: logging.LogRecord) -> None:
        month = getattr(record, "month", "")
        step = getattr(record, "step", "")
        console.print(f"  [dim]{month}[/dim] [cyan]{step:<8}[/cyan] {escape(record.getMessage())}")


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
    stop = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda _signum, _frame: None) for signum in stop}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def default_parallel(months: int) -> int:
    """Months at once when `--parallel` is not given: one per core, as many as memory holds at
    ~2 GiB each (a month's candles plus its share of the process), never more than the months."""
    cores = os.cpu_count() or 1
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        available = 2 * MONTH_MEMORY_BYTES
    return max(1, min(cores, available // MONTH_MEMORY_BYTES, months))


def run_months(
    spec: RunSpec, plan: Sequence[MonthPlan], *, runs_dir: str, instance: Any, parallel: int = 1
) -> list[Any]:
    """Materialize each planned month as a Dagster run: one at a time in this process, or
    `parallel` at a time in Dagster run worker processes. Stops at an interruption."""
    from quantlab_pipeline.orchestration.steps import progress_logger

    handler = _ProgressHandler()
    progress_logger.addHandler(handler)
    progress_logger.setLevel(logging.INFO)
    progress_logger.propagate = False
    try:
        with _signals_seen() as received:
            if parallel <= 1 or len(plan) <= 1:
                return _in_process(spec, plan, runs_dir=runs_dir, instance=instance, received=received)
            return _in_workers(spec, plan, runs_dir=runs_dir, instance=instance, parallel=parallel, received=received)
    finally:
        progress_logger.removeHandler(handler)


def _in_process(spec: RunSpec, plan: Sequence[MonthPlan], *, runs_dir: str, instance: Any, received) -> list[Any]:
    from quantlab_pipeline.orchestration.month_runs import materialize_month, record_interruption

    results = []
    for item in plan:
        started = time.perf_counter()
        console.print(f"[bold]{item.month}[/bold] materializing{_steps(item.steps)}…")
        try:
            result = materialize_month(spec, item.month, runs_dir=runs_dir, instance=instance, steps=item.steps)
        except KeyboardInterrupt:  # outside a step: no step recorded it
            result = record_interruption(spec, item.month, runs_dir=runs_dir, instance=instance)
        if received() or result.status == "interrupted":  # one line, not the ✗ line as well
            _interrupted(spec, item.month, received())
        results.append(result)
        _report(result, time.perf_counter() - started)
    return results


def _in_workers(
    spec: RunSpec, plan: Sequence[MonthPlan], *, runs_dir: str, instance: Any, parallel: int, received: _Signals
) -> list[Any]:
    """`parallel` run workers, each running the months it claims one after another (a worker that
    dies is replaced while months are left); the steps' lines printed from the runs' events.
    A signal stops the hand-out and every worker with SIGTERM: each records its step as interrupted."""
    from quantlab_pipeline.orchestration import month_worker
    from quantlab_pipeline.orchestration.month_runs import month_result, settle_worker_exit

    months = [(item.month, item.steps) for item in plan]
    steps = dict(months)
    results: dict[str, Any] = {}
    announced: dict[str, float] = {}  # month: when its run was first seen
    events = _EventPrinter(instance)
    with tempfile.TemporaryDirectory(prefix="quantlab-months-") as directory, _signals_only_recorded():
        claims = Path(directory)

        def start_worker() -> Any:
            return month_worker.start(spec, months, runs_dir=runs_dir, claims=claims, instance=instance)

        def follow(exited: Any = None, *, report: bool = True) -> None:
            """Print what the runs recorded since the last look; collect the months that ended —
            those of `exited` (a worker that has exited) whether or not their run finished —
            each with its ✓/✗ line unless not `report` (an interruption has its own line)."""
            for month, claim in sorted(month_worker.read_claims(claims).items()):
                if month in results or claim.pid == os.getpid():
                    continue
                run = instance.get_run_by_id(claim.dagster_run_id) if claim.dagster_run_id else None
                if run is not None and month not in announced:
                    announced[month] = time.perf_counter()
                    console.print(
                        f"[bold]{month}[/bold] materializing{_steps(steps[month])}… (Dagster run {run.run_id[:8]})"
                    )
                if run is not None:
                    events.print_new(month, run.run_id)
                ended = exited is not None and claim.pid == exited.pid
                if ended and run is not None and exited.exitcode != 0:
                    settle_worker_exit(run.run_id, exited.exitcode, instance)
                    run = instance.get_run_by_id(run.run_id)
                if ended or (run is not None and run.is_finished):
                    results[month] = month_result(spec, month, runs_dir=runs_dir, instance=instance, run=run)
                    if report:
                        _report(results[month], time.perf_counter() - announced.get(month, time.perf_counter()))

        workers = [start_worker() for _ in range(min(parallel, len(months)))]
        while workers and not received():
            multiprocessing.connection.wait([received.fd, *(w.sentinel for w in workers)], timeout=0.3)
            for worker in list(workers):
                if worker.exitcode is not None:
                    workers.remove(worker)
                    follow(exited=worker)
                    taken = month_worker.read_claims(claims)
                    if any(c.pid == worker.pid for c in taken.values()) and any(m not in taken for m, _ in months):
                        workers.append(start_worker())  # it died in a month, with months left
            follow()
        if received():
            for month, _ in months:  # nobody takes another month
                month_worker.claim(claims, month)
            taken = month_worker.read_claims(claims)
            running = sorted(m for m, c in taken.items() if c.pid != os.getpid() and m not in results)
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.join()
                follow(exited=worker, report=False)
            _interrupted(spec, ", ".join(running or [m for m, _ in months if m not in results]), received())
        for month, _ in months:  # no worker took it: every worker failed before its first month
            if month not in results:
                results[month] = month_result(spec, month, runs_dir=runs_dir, instance=instance)
    return [results[m] for m in sorted(results)]


def _steps(steps: Sequence[str] | None) -> str:
    return f" ({', '.join(steps)})" if steps else ""


class _EventPrinter:
    """One line per materialization a run records, and one per step with its checks' outcomes
    (printed when the step ends), read from the instance's event log."""

    def __init__(self, instance: Any):
        self.instance = instance
        self.cursors: dict[str, str] = {}
        self.checks: dict[tuple[str, str], list[Any]] = {}  # (run, step): its check evaluations so far

    def print_new(self, month: str, run_id: str) -> None:
        from dagster import DagsterEventType

        from quantlab_pipeline.orchestration.steps import check_label, check_outcomes

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
                    self._line(month, step, escape(line))
            elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                materialization = event.step_materialization_data.materialization
                rows = materialization.metadata.get("dagster/row_count")
                detail = f": {rows.value:,} rows" if rows is not None else ""
                self._line(month, materialization.asset_key.path[-1], f"materialized{detail}")

    @staticmethod
    def _line(month: str, step: str, text: str) -> None:
        console.print(f"  [dim]{month}[/dim] [cyan]{step:<8}[/cyan] {text}")


def _report(result: Any, elapsed: float) -> None:
    if result.status == "completed":
        console.print(f"[green]✓[/green] {result.month} completed in {elapsed:.1f} s")
    else:
        err_console.print(f"[red]✗[/red] {result.month} {result.status}: {escape(result.error or 'incomplete')}")


def follow_queued(
    spec: RunSpec, months: Sequence[str], *, runs_dir: str, instance: Any, poll_s: float = 1.0
) -> list[Any]:
    """Wait for the month runs the daemon launches (`--submit`), printing each step's line as its
    materialization is recorded and each month's result as it ends, in order of completion."""
    from quantlab_pipeline.orchestration.month_runs import latest_month_runs, month_result

    events = _EventPrinter(instance)
    results: dict[str, Any] = {}
    started = time.perf_counter()
    while len(results) < len(months):
        runs = latest_month_runs(instance, spec.run_id)
        for month in months:
            run = runs.get(month)
            if month in results or run is None:
                continue
            events.print_new(month, run.run_id)
            if run.is_finished:
                results[month] = month_result(spec, month, runs_dir=runs_dir, instance=instance, run=run)
                _report(results[month], time.perf_counter() - started)
        if len(results) < len(months):
            time.sleep(poll_s)
    return [results[m] for m in sorted(results)]


def _interrupted(spec: RunSpec, month: str, seen: list[int]) -> None:
    signum = next((s for s in reversed(seen) if s in _EXIT_ON_SIGNAL), signal.SIGINT)
    err_console.print(
        f"[bold red]interrupted[/bold red] ({signal.Signals(signum).name}) in {month}: recorded as interrupted; "
        f"finish the run with `quantlab runs resume {spec.run_id}`"
    )
    raise SystemExit(_EXIT_ON_SIGNAL[signal.Signals(signum)])


def headline_table(run_type: str, results: Sequence[Any]) -> Table:
    """One row per metric, one column per month: fits any terminal width."""
    table = Table(title="Headline numbers", title_justify="left")
    metrics: list[tuple[str, str, str, str]] = [
        ("Calls", "paths", "calls_processed", "num"),
        ("Excluded", "paths", "excluded", "num"),
        ("Hit 2x", "paths", "hit_2x_pct", "percent"),
        ("Median peak ×", "paths", "median_peak_multiple", "num"),
    ]
    if run_type == "policy":
        metrics += [
            ("Trades", "summary", "trades_count", "num"),
            ("Avg ret bps", "summary", "avg_return_bps", "bps"),
            ("Median ret bps", "summary", "median_return_bps", "bps"),
            ("Median 95% CI", "summary", "median_return_bps_ci", "str"),
            ("Stop-out", "summary", "stop_out_pct", "percent"),
            ("Win rate", "summary", "win_pct", "percent"),
        ]
    if any("portfolio" in r.headline for r in results):  # window to date (docs/portfolio.md)
        metrics += [
            ("Equity end", "portfolio", "equity_end", "num"),
            ("Total return", "portfolio", "total_return_pct", "percent"),
            ("Max drawdown", "portfolio", "max_drawdown_pct", "percent"),
            ("Sharpe", "portfolio", "sharpe", "num"),
        ]
    if run_type == "optimization":
        metrics += [
            ("Policies", "frontier", "policies", "num"),
            ("Feasible", "frontier", "feasible_policies", "num"),
            ("Best policy", "frontier", "best_policy", "str"),
            ("Best score", "frontier", "best_objective_score", "bps"),
            # how much of the winner is luck, in words (docs/confidence.md)
            ("Overfitting", "overfitting", "sentence", "str"),
        ]
    table.add_column("")
    for r in results:
        table.add_column(r.month, justify="right")
    table.add_row(
        "Status",
        *("[green]completed[/green]" if r.status == "completed" else f"[red]{r.status}[/red]" for r in results),
    )
    for title, asset, key, kind in metrics:
        table.add_row(title, *(display.FORMATS[kind](r.headline.get(asset, {}).get(key)) for r in results))
    return table


def finish(spec: RunSpec, results: Sequence[Any]) -> None:
    """The closing block: run id, each month's directory, the headline table; exit 1 unless every
    month completed."""
    console.print()
    console.print(f"[bold]run_id[/bold]: {spec.run_id}")
    for r in results:
        console.print(f"  {r.month}: {r.run_dir}")
    console.print(headline_table(spec.run_type, results))
    if any(r.status != "completed" for r in results):
        raise SystemExit(1)
