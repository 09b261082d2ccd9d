"""`quantlab backtest path-only|policy|optimize` and `quantlab runs create`.

Each builds a run spec from flags, checks the sources (bad input → one line, exit 2, nothing
created), registers the run in the Dagster instance, and — for backtests — materializes every
month of the window through Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from rich.markup import escape

from quantlab_pipeline.cli.console import console, err_console, note, user_errors
from quantlab_pipeline.cli.months import default_parallel, finish, print_progress, results_or_exit, spawn_worker
from quantlab_pipeline.cli.options import runs_dir_option
from quantlab_pipeline.cli.walkforward import print_frontier_top, print_walk_forward
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.spec_builder import (
    DEFAULT_ALERTS_PATH,
    DEFAULT_ALERTS_TABLE,
    DEFAULT_CAPITAL,
    DEFAULT_FEE_BPS,
    DEFAULT_HORIZON,
    DEFAULT_INTERVAL,
    DEFAULT_POSITION_SIZE,
    DEFAULT_SLIPPAGE_BPS,
    SpecRequest,
)
from quantlab_pipeline.storage.layout import report_command


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


def _portfolio_options(fn: Callable) -> Callable:
    """The account that follows a policy run's trades (docs/portfolio.md)."""
    options = [
        click.option(
            "--no-portfolio",
            is_flag=True,
            help="Skip the portfolio (portfolio/equity.parquet, results/portfolio.parquet).",
        ),
        click.option(
            "--capital",
            type=float,
            default=None,
            help=f"The account's starting cash [default: {DEFAULT_CAPITAL:,.0f}].",
        ),
        click.option(
            "--position-size",
            type=float,
            default=None,
            help=f"Quote units each entry spends [default: {DEFAULT_POSITION_SIZE:g}].",
        ),
        click.option(
            "--position-fraction",
            type=float,
            default=None,
            help="Instead of --position-size: the fraction of equity each entry spends, in (0, 1].",
        ),
        click.option(
            "--max-positions", type=int, default=None, help="At most this many positions open [default: no cap]."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _features_option(fn: Callable) -> Callable:
    return click.option(
        "--no-features", is_flag=True, help="Skip features/features.parquet (per-call pre-alert features)."
    )(fn)


def _sweep_options(fn: Callable) -> Callable:
    fn = click.option(
        "--train-months",
        type=click.IntRange(min=1),
        default=None,
        help="Walk-forward: months the policy is selected on before each tested month [default: 1].",
    )(fn)
    fn = click.option(
        "--walk-forward",
        is_flag=True,
        help="Also select the best policy on the months before each month and test it on that month.",
    )(fn)
    fn = click.option(
        "--benchmark",
        default=None,
        help="Policy JSON the grid is tested against (SPA), inline or @file.json "
        '[default: holding to the horizon, {"kind":"time_stop","max_hold":"<horizon>"}].',
    )(fn)
    fn = click.option(
        "--cscv-blocks",
        default=None,
        metavar="S",
        help="PBO: blocks each month's days are cut into, an even integer from 2 to 16 [default: 8].",
    )(fn)
    fn = click.option("--per-caller", is_flag=True, help="Also rank policies for each caller.")(fn)
    return click.option(
        "--sweep", default=None, help="Policy grid JSON, inline or @grid.json (default: the built-in grid)."
    )(fn)


def _request(run_type: str, opts: dict[str, Any]) -> SpecRequest:
    """The flags as a spec request; the builder decides what the run type needs or refuses."""
    if opts.get("train_months") is not None and not opts.get("walk_forward"):
        raise SpecError("--train-months: only with --walk-forward")
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
        features=not opts.get("no_features"),
        train_months=(opts.get("train_months") or 1) if opts.get("walk_forward") else None,
        cscv_blocks=opts.get("cscv_blocks"),
        benchmark=opts.get("benchmark"),
        portfolio=not opts.get("no_portfolio"),
        capital=opts.get("capital"),
        position_size=opts.get("position_size"),
        position_fraction=opts.get("position_fraction"),
        max_positions=opts.get("max_positions"),
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
    "features": "--no-features",
    "train_months": "--walk-forward",
    "cscv_blocks": "--cscv-blocks",
    "benchmark": "--benchmark",
    "portfolio": "--no-portfolio",
    "capital": "--capital",
    "position_size": "--position-size",
    "position_fraction": "--position-fraction",
    "max_positions": "--max-positions",
}


def _naming_flags(exc: SpecError) -> SpecError:
    """The builder names request fields; a CLI user should read the flag they typed."""
    field, sep, rest = str(exc).partition(":")
    head = field.split(".")[0].split("[")[0]
    if not sep or head not in _FLAGS:
        return exc
    return SpecError(f"{_FLAGS[head]}:{rest}" if field == head else f"{_FLAGS[head]}: {field}:{rest}")


def _create(run_type: str, opts: dict[str, Any]):
    """Validate flags and sources, then register the run (spec + partitions + run_spec)."""
    from quantlab_pipeline.storage.run_creation import create_run_spec
    from quantlab_pipeline.warm.client import start_private_server

    try:
        spec = create_run_spec(_request(run_type, opts))
    except SpecError as exc:
        raise _naming_flags(exc) from None
    months = spec.months()
    if "parallel" in opts and _launch_parallel(run_type, opts, spec, months) > 1:  # a backtest command
        start_private_server()  # unless forked by the warm server: its imports overlap what follows

    from quantlab_pipeline.orchestration.launch import (
        check_dagster_home,
        create_run,
        get_instance,
        queue_daemon_running,
    )
    from quantlab_pipeline.orchestration.month_runs import check_queue
    from quantlab_pipeline.orchestration.partitions import check_months_exist
    from quantlab_pipeline.sources.alerts import check_alerts_source
    from quantlab_pipeline.sources.candles import check_candles_source
    from quantlab_pipeline.storage.lifecycle import ensure_runs_dir

    check_months_exist(months)
    check_alerts_source(spec.source.alerts, spec.source.alerts_table)
    check_candles_source(spec.source.candles_source, interval=spec.interval)
    check_dagster_home()
    if run_type == "optimization":
        _check_sweep_memory(spec, months)
    ensure_runs_dir(opts["paths"].runs_dir)  # last check, first thing created
    instance = get_instance(note)
    if opts.get("submit"):
        check_queue(instance)
        if not queue_daemon_running(instance):
            note(
                "--submit: no Dagster daemon is running for this instance, so nothing launches until one starts "
                "(`dagster-daemon run` with the same DAGSTER_HOME, or `make dev`)"
            )
    create_run(spec, paths=opts["paths"], instance=instance)
    return spec, months, instance


def _check_sweep_memory(spec: Any, months: list[str]) -> None:
    """Refuse a grid the memory cannot hold over its largest month (docs/performance.md), before the run exists."""
    from quantlab_pipeline.core.durations import UNIT_MS
    from quantlab_pipeline.core.frontier import check_sweep_memory
    from quantlab_pipeline.core.spec import date_to_ms, month_bounds
    from quantlab_pipeline.core.sweep_spec import parse_sweep
    from quantlab_pipeline.sources.alerts import count_alerts
    from quantlab_pipeline.sources.machine import available_memory_bytes

    entries = 0
    for month in months:
        first, last = month_bounds(month)
        bounds = {"start_ms": date_to_ms(first), "end_ms": date_to_ms(last) + UNIT_MS["d"]}
        entries = max(entries, count_alerts(spec.source.alerts, spec.source.alerts_table, **bounds))
    check_sweep_memory(len(parse_sweep(spec.sweep).policies), entries, available_memory_bytes(), where="--sweep")


def _launch_parallel(run_type: str, opts: dict[str, Any], spec: Any, months: list[str]) -> int:
    """Months at once in the foreground: `--parallel`, else the default; 0 with `--submit`; 1 for
    a walk-forward (each month selects its policy on the months before it)."""
    from quantlab_pipeline.storage.layout import required_artifacts

    if opts.get("submit"):
        return 0
    if "walkforward" in required_artifacts(run_type, spec.to_dict()):
        return 1
    return min(opts["parallel"] or default_parallel(len(months)), len(months))


def _backtest(run_type: str, opts: dict[str, Any]) -> None:
    from quantlab_pipeline.warm.kernels import kernels_compiled

    if opts.get("walk_forward") and (opts["submit"] or (opts["parallel"] or 1) > 1):
        # each month selects its policy on the months before it (docs/research.md "Walk-forward optimization")
        flag = "--submit" if opts["submit"] else "--parallel"
        raise SpecError(f"{flag}: a walk-forward optimization runs its months in order, one at a time")
    spec, months, instance = _create(run_type, opts)
    if opts["submit"]:
        from quantlab_pipeline.orchestration.month_runs import submit_month

        for month in months:
            submit_month(spec, month, paths=opts["paths"], instance=instance)
        err_console.print(
            f"Queued {len(months)} month run(s) of {run_type} run {spec.run_id}; "
            f"follow them with `quantlab runs wait {spec.run_id}`"
        )
        console.print(spec.run_id)
        return
    parallel = _launch_parallel(run_type, opts, spec, months)
    console.print(
        f"[bold]Run[/bold] {spec.run_id} ({run_type}, {len(months)} month(s): {months[0]}..{months[-1]}, "
        f"{parallel} at a time)"
    )
    if not kernels_compiled(policy=run_type == "policy", sweep=run_type == "optimization"):
        console.print("[dim]compiling the numba kernels (first run only, a few seconds)…[/dim]")
    from quantlab_pipeline.orchestration.month_runner import MonthPlan, run_months

    plan = [MonthPlan(m) for m in months]
    outcome = run_months(
        spec,
        plan,
        paths=opts["paths"],
        instance=instance,
        on_progress=print_progress,
        parallel=parallel,
        spawn=spawn_worker,
    )
    results = results_or_exit(spec, outcome)
    try:
        finish(spec, results)
    finally:  # after the headline table, also when a month did not complete
        print_frontier_top(spec, results, paths=opts["paths"])
        print_walk_forward(spec, results, paths=opts["paths"])
        if any(r.status == "completed" for r in results):  # charts are drawn on demand (docs/reports.md)
            console.print(f"Charts: [bold]{escape(report_command(opts['paths'].runs_dir, spec.run_id))}[/bold]")


def _launch_options(fn: Callable) -> Callable:
    fn = click.option(
        "--submit",
        is_flag=True,
        help="Queue the months on the instance's run queue and return; follow with `quantlab runs wait RUN_ID`.",
    )(fn)
    return click.option(
        "--parallel",
        type=click.IntRange(min=1),
        default=None,
        help="Months at once [default: one per core, as many as memory holds at ~2 GiB a month].",
    )(fn)


@click.command("path-only")
@_run_options
@_launch_options
@_features_option
@user_errors
def path_only(**opts: Any) -> None:
    """Truth layer only: per call, entry, multiples hit, peak and drawdowns."""
    _backtest("path-only", opts)


@click.command("policy")
@_run_options
@_launch_options
@_policy_options
@_features_option
@_portfolio_options
@_execution_options
@user_errors
def policy(**opts: Any) -> None:
    """Simulate an exit policy for every entry: trades and a summary per month, and an account
    following the trades (its equity curve and window-to-date figures)."""
    _backtest("policy", opts)


@click.command("optimize")
@_run_options
@_launch_options
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
@_features_option
@_portfolio_options
@user_errors
def runs_create(run_type: str, **opts: Any) -> None:
    """Create a run (spec + partitions) for `dagster asset materialize`; prints the commands to run."""
    from quantlab_pipeline.orchestration.partitions import month_run_key
    from quantlab_pipeline.storage.layout import required_artifacts

    spec, months, _ = _create(run_type, opts)
    console.print(spec.run_id)
    selection = ",".join(required_artifacts(run_type, spec.to_dict()))
    err_console.print(f"[dim]Created {run_type} run {spec.run_id}; materialize each month with:[/dim]")
    for month in months:
        err_console.print(
            f"[dim]  dagster asset materialize -m quantlab_pipeline.definitions "
            f"--select {selection} --partition '{month_run_key(spec, month)}'[/dim]"
        )


BACKTEST_COMMANDS = [path_only, policy, optimize]
