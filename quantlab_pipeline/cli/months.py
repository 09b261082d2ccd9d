"""Running the months of a run from the CLI, shared by `backtest …` and `runs resume`: one
progress line per month and step, the closing table, and what an interruption leaves behind.

Ctrl-C (SIGINT) and SIGTERM stop at the step being run: Dagster raises inside it, the step
records the month as `interrupted` (README "When a run is interrupted"), no later month starts,
and the command exits 130 or 143 with one line saying how to finish the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from rich.table import Table

from quantlab_pipeline.cli.console import console, err_console
from quantlab_pipeline.core import display
from quantlab_pipeline.core.spec import RunSpec

_EXIT_ON_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


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


@contextlib.contextmanager
def _signals_seen() -> Iterator[Callable[[], list[int]]]:
    """Yield `received()`: the signals that arrived so far, whoever handled them. Dagster swaps
    the SIGINT/SIGTERM handlers while a step runs, but every signal reaches the wakeup fd."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous_term = signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C
    seen: list[int] = []

    def received() -> list[int]:
        with contextlib.suppress(BlockingIOError):
            seen.extend(os.read(read_fd, 64))
        return seen

    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.set_wakeup_fd(previous_fd)
        os.close(read_fd)
        os.close(write_fd)


def run_months(spec: RunSpec, plan: Sequence[MonthPlan], *, runs_dir: str, instance: Any) -> list[Any]:
    """Materialize each planned month through Dagster, in order; stop at an interruption."""
    from quantlab_pipeline.orchestration.launch import materialize_month, record_interruption
    from quantlab_pipeline.orchestration.steps import progress_logger

    handler = _ProgressHandler()
    progress_logger.addHandler(handler)
    progress_logger.setLevel(logging.INFO)
    progress_logger.propagate = False
    results = []
    try:
        with _signals_seen() as received:
            for item in plan:
                started = time.perf_counter()
                steps = f" ({', '.join(item.steps)})" if item.steps else ""
                console.print(f"[bold]{item.month}[/bold] materializing{steps}…")
                try:
                    result = materialize_month(spec, item.month, runs_dir=runs_dir, instance=instance, steps=item.steps)
                except KeyboardInterrupt:  # outside a step: no step recorded it
                    result = record_interruption(spec, item.month, runs_dir=runs_dir, instance=instance)
                results.append(result)
                if received() or result.status == "interrupted":
                    _interrupted(spec, item.month, received())
                elapsed = time.perf_counter() - started
                if result.status == "completed":
                    console.print(f"[green]✓[/green] {item.month} completed in {elapsed:.1f} s")
                else:
                    err_console.print(
                        f"[red]✗[/red] {item.month} {result.status}: {escape(result.error or 'incomplete')}"
                    )
    finally:
        progress_logger.removeHandler(handler)
    return results


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
            ("Stop-out", "summary", "stop_out_pct", "percent"),
            ("Win rate", "summary", "win_pct", "percent"),
        ]
    if run_type == "optimization":
        metrics += [
            ("Policies", "frontier", "policies", "num"),
            ("Feasible", "frontier", "feasible_policies", "num"),
            ("Best policy", "frontier", "best_policy", "str"),
            ("Best score", "frontier", "best_objective_score", "bps"),
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
