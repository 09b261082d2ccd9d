"""Printing the months a command runs, shared by `backtest …`, `runs resume` and `runs wait`:
one line per month and step as the month runner reports them (`orchestration.month_runner`), the
closing table, and the closing line of an interruption (docs/architecture.md
"Interruptions"): each month's fate, the command that finishes the run, exit 130 or 143.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from quantlab_pipeline.cli.console import console, err_console
from quantlab_pipeline.core import display
from quantlab_pipeline.core.spec import RunSpec

_EXIT_ON_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
MONTH_MEMORY_BYTES = 2 << 30


def default_parallel(months: int) -> int:
    """Months at once when `--parallel` is not given: one per core, as many as memory holds at
    ~2 GiB each (a month's candles plus its share of the process), never more than the months."""
    cores = os.cpu_count() or 1
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        available = 2 * MONTH_MEMORY_BYTES
    return max(1, min(cores, available // MONTH_MEMORY_BYTES, months))


def print_progress(record: Any) -> None:
    """One line per record of the month runner (`MonthStarted`, `StepProgress`, `MonthEnded`)."""
    from quantlab_pipeline.orchestration.month_runner import MonthEnded, MonthStarted, StepProgress

    if isinstance(record, MonthStarted):
        steps = f" ({', '.join(record.steps)})" if record.steps else ""
        run = f" (Dagster run {record.dagster_run_id[:8]})" if record.dagster_run_id else ""
        console.print(f"[bold]{record.month}[/bold] materializing{steps}…{run}")
    elif isinstance(record, StepProgress):
        console.print(f"  [dim]{record.month}[/dim] [cyan]{record.step:<8}[/cyan] {escape(record.text)}")
    elif isinstance(record, MonthEnded):
        result = record.result
        if result.status == "completed":
            console.print(f"[green]✓[/green] {result.month} completed in {record.elapsed_s:.1f} s")
        else:
            err_console.print(f"[red]✗[/red] {result.month} {result.status}: {escape(result.error or 'incomplete')}")


def spawn_worker(request: dict[str, Any]) -> Any:
    """A `--parallel` run worker, forked by the warm server (`month_runner.execute_worker` there)."""
    from quantlab_pipeline.warm.client import start_process

    return start_process("months", **request)


def results_or_exit(spec: RunSpec, outcome: Any) -> list[Any]:
    """The months' results, unless a signal stopped the run: then one line naming each planned
    month's fate as it stands on disk, and exit 130 (SIGINT) or 143 (SIGTERM)."""
    if outcome.signal is None:
        return list(outcome.results)
    signum = signal.Signals(outcome.signal)
    fates = ", ".join(f"{r.month} {r.status}" for r in outcome.results)
    err_console.print(
        f"[bold red]interrupted[/bold red] ({signum.name}): {fates}; "
        f"finish the run with `quantlab runs resume {spec.run_id}`"
    )
    raise SystemExit(_EXIT_ON_SIGNAL[signum])


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
