"""`quantlab backtest path-only|policy|optimize` and `quantlab runs create`.

Each builds a run spec from flags, checks the sources (bad input → one line, exit 2, nothing
created), registers the run in the Dagster instance, and — for backtests — materializes every
month of the window through Dagster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from quantlab_pipeline.cli.console import console, err_console, user_errors
from quantlab_pipeline.cli.options import runs_dir_option
from quantlab_pipeline.core import display
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.spec_builder import (
    DEFAULT_ALERTS_PATH,
    DEFAULT_ALERTS_TABLE,
    DEFAULT_FEE_BPS,
    DEFAULT_HORIZON,
    DEFAULT_INTERVAL,
    DEFAULT_SLIPPAGE_BPS,
    SpecRequest,
)


def _run_options(fn: Callable) -> Callable:
    """Flags shared by every command that creates a run."""
    options = [
        click.option(
            "--calls-from-duckdb",
            "alerts",
            default=DEFAULT_ALERTS_PATH,
            show_default=True,
            help="DuckDB database with the alerts table.",
        ),
        click.option("--alerts-table", default=DEFAULT_ALERTS_TABLE, show_default=True, help="Alerts table name."),
        click.option(
            "--candles-from",
            "candles",
            default=None,
            help="Candles: DuckDB database (table ohlcv_candles) or Parquet file/dir/glob. Default: the alerts database.",
        ),
        click.option("--interval", default=DEFAULT_INTERVAL, show_default=True, help="Candle interval."),
        click.option(
            "--from", "date_from", required=True, help="First day of the window (YYYY-MM-DD, UTC, inclusive)."
        ),
        click.option("--to", "date_to", required=True, help="Last day of the window (YYYY-MM-DD, UTC, inclusive)."),
        click.option(
            "--horizon",
            default=DEFAULT_HORIZON,
            show_default=True,
            help="How long after the alert the path is followed.",
        ),
        click.option("--caller", "callers", multiple=True, help="Only these callers (repeatable)."),
        click.option("--chain", "chains", multiple=True, help="Only these chains (repeatable)."),
        runs_dir_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _execution_options(fn: Callable) -> Callable:
    fn = click.option(
        "--slippage-bps", type=float, default=None, help=f"Slippage per side, bps [default: {DEFAULT_SLIPPAGE_BPS:g}]."
    )(fn)
    return click.option(
        "--fee-bps", type=float, default=None, help=f"Fee per side, bps [default: {DEFAULT_FEE_BPS:g}]."
    )(fn)


def _policy_options(fn: Callable) -> Callable:
    fn = click.option("--policy", "policy", default=None, help="Policy JSON, inline or @file.json.")(fn)
    return click.option("--policy-id", default=None, help="Name of the policy (stored with the run).")(fn)


def _sweep_options(fn: Callable) -> Callable:
    fn = click.option("--per-caller", is_flag=True, help="Also rank policies for each caller.")(fn)
    return click.option(
        "--sweep", default=None, help="Policy grid JSON, inline or @grid.json (default: the built-in grid)."
    )(fn)


def _request(run_type: str, opts: dict[str, Any]) -> SpecRequest:
    """The flags as a spec request; the builder decides what the run type needs or refuses."""
    return SpecRequest(
        run_type=run_type,
        alerts=opts["alerts"],
        window_from=opts["date_from"],
        window_to=opts["date_to"],
        alerts_table=opts["alerts_table"],
        candles=opts.get("candles"),
        interval=opts["interval"],
        horizon=opts["horizon"],
        callers=tuple(opts["callers"]),
        chains=tuple(opts["chains"]),
        policy_id=opts.get("policy_id"),
        policy=opts.get("policy"),
        fee_bps=opts.get("fee_bps"),
        slippage_bps=opts.get("slippage_bps"),
        sweep=opts.get("sweep"),
        per_caller=bool(opts.get("per_caller")),
    )


# Spec request fields as the user typed them here.
_FLAGS = {
    "alerts": "--calls-from-duckdb",
    "window_from": "--from",
    "window_to": "--to",
    "run_type": "--run-type",
    "policy_id": "--policy-id",
    "policy": "--policy",
    "fee_bps": "--fee-bps",
    "slippage_bps": "--slippage-bps",
    "sweep": "--sweep",
    "per_caller": "--per-caller",
}


def _naming_flags(exc: SpecError) -> SpecError:
    """The builder names request fields; a CLI user should read the flag they typed."""
    field, sep, rest = str(exc).partition(":")
    head = field.split(".")[0].split("[")[0]
    if not sep or head not in _FLAGS:
        return exc
    return SpecError(f"{_FLAGS[head]}:{rest}" if field == head else f"{_FLAGS[head]}: {field}:{rest}")


def _create(run_type: str, opts: dict[str, Any]):
    """Validate flags and sources, then register the run (spec + partition + run_spec)."""
    from quantlab_pipeline.orchestration.launch import create_run, get_instance
    from quantlab_pipeline.orchestration.partitions import check_months_exist
    from quantlab_pipeline.sources.alerts import check_alerts_source
    from quantlab_pipeline.sources.candles import check_candles_source
    from quantlab_pipeline.storage.run_creation import create_run_spec

    try:
        spec = create_run_spec(_request(run_type, opts))
    except SpecError as exc:
        raise _naming_flags(exc) from None
    months = spec.months()
    check_months_exist(months)
    check_alerts_source(spec.source.alerts, spec.source.alerts_table)
    check_candles_source(spec.source.candles_source, interval=spec.interval)
    instance = get_instance()
    create_run(spec, runs_dir=opts["runs_dir"], instance=instance)
    return spec, months, instance


class _ProgressHandler(logging.Handler):
    """Prints the steps' progress lines (`quantlab_pipeline.progress`) as they happen."""

    def emit(self, record: logging.LogRecord) -> None:
        month = getattr(record, "month", "")
        step = getattr(record, "step", "")
        console.print(f"  [dim]{month}[/dim] [cyan]{step:<8}[/cyan] {escape(record.getMessage())}")


def _headline_table(run_type: str, results) -> Table:
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


def _backtest(run_type: str, opts: dict[str, Any]) -> None:
    from quantlab_pipeline.orchestration.launch import materialize_month
    from quantlab_pipeline.orchestration.steps import progress_logger

    spec, months, instance = _create(run_type, opts)
    console.print(f"[bold]Run[/bold] {spec.run_id} ({run_type}, {len(months)} month(s): {months[0]}..{months[-1]})")
    handler = _ProgressHandler()
    progress_logger.addHandler(handler)
    progress_logger.setLevel(logging.INFO)
    progress_logger.propagate = False
    results = []
    try:
        for month in months:
            started = time.perf_counter()
            console.print(f"[bold]{month}[/bold] materializing…")
            result = materialize_month(spec, month, runs_dir=opts["runs_dir"], instance=instance)
            elapsed = time.perf_counter() - started
            if result.status == "completed":
                console.print(f"[green]✓[/green] {month} completed in {elapsed:.1f} s")
            else:
                err_console.print(f"[red]✗[/red] {month} {result.status}: {escape(result.error or 'incomplete')}")
            results.append(result)
    finally:
        progress_logger.removeHandler(handler)
    console.print()
    console.print(f"[bold]run_id[/bold]: {spec.run_id}")
    for r in results:
        console.print(f"  {r.month}: {r.run_dir}")
    console.print(_headline_table(run_type, results))
    if any(r.status != "completed" for r in results):
        raise SystemExit(1)


@click.command("path-only")
@_run_options
@user_errors
def path_only(**opts: Any) -> None:
    """Truth layer only: per call, entry, multiples hit, peak and drawdowns."""
    _backtest("path-only", opts)


@click.command("policy")
@_run_options
@_policy_options
@_execution_options
@user_errors
def policy(**opts: Any) -> None:
    """Simulate an exit policy for every entry: trades and a summary per month."""
    _backtest("policy", opts)


@click.command("optimize")
@_run_options
@_sweep_options
@_execution_options
@user_errors
def optimize(**opts: Any) -> None:
    """Sweep a grid of policies over the same entries: a ranked frontier per month."""
    _backtest("optimization", opts)


@click.command("create")
@click.option(
    "--run-type", type=click.Choice(["path-only", "policy", "optimization"]), default="path-only", show_default=True
)
@_run_options
@_policy_options
@_execution_options
@_sweep_options
@user_errors
def runs_create(run_type: str, **opts: Any) -> None:
    """Create a run (spec + partition) for `dagster asset materialize`; prints the commands to run."""
    from quantlab_pipeline.storage.layout import REQUIRED_ARTIFACTS

    spec, months, _ = _create(run_type, opts)
    console.print(spec.run_id)
    selection = ",".join(REQUIRED_ARTIFACTS[run_type])
    err_console.print(f"[dim]Created {run_type} run {spec.run_id}; materialize each month with:[/dim]")
    for month in months:
        err_console.print(
            f"[dim]  dagster asset materialize -m quantlab_pipeline.definitions "
            f"--select {selection} --partition '{month}|{spec.run_id}'[/dim]"
        )


BACKTEST_COMMANDS = [path_only, policy, optimize]
