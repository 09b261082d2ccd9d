"""`quantlab runs status | resume RUN_ID` (docs/lifecycle.md "When a run is interrupted").

`status` reads each month's directory and says where it stands; `resume` repairs what a dead
writer left (temp files, a finalize cut short, a `running` manifest nobody writes any more) and
materializes only the steps whose artifacts are missing or stale, month by month.
"""

from __future__ import annotations

import json

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from quantlab_pipeline.cli.console import console, err_console, fail, note, ok, user_errors
from quantlab_pipeline.cli.months import finish, print_progress, results_or_exit
from quantlab_pipeline.cli.options import runs_dir_option
from quantlab_pipeline.core.spec import validate_run_id
from quantlab_pipeline.storage.paths import ProjectPaths

_STYLE = {
    "completed": "green",
    "stale": "yellow",
    "failed": "red",
    "interrupted": "yellow",
    "incomplete": "yellow",
    "running": "cyan",
    "missing": "dim",
}


@click.command("status")
@click.argument("run_id")
@runs_dir_option
@click.option("--format", "fmt", default="table", show_default=True, help="table | json.")
@user_errors
def runs_status(run_id: str, paths: ProjectPaths, fmt: str) -> None:
    """Where each month of a run stands: completed, stale (computed from a month before it that
    was rewritten since), failed, interrupted (writer gone), running (writer alive) or missing."""
    from quantlab_pipeline.storage.lifecycle import run_status
    from quantlab_pipeline.storage.specs import read_spec

    if fmt not in ("table", "json"):
        fail(f"--format: expected one of table, json, got {fmt!r}")
    spec = read_spec(paths.runs_dir, validate_run_id(run_id))
    statuses = run_status(paths.runs_dir, spec)
    if fmt == "json":
        click.echo(json.dumps([s.to_dict() for s in statuses], indent=2))
        return
    table = Table(
        title=f"Run {spec.run_id} ({spec.run_type})", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False
    )
    for name in ("month", "status", "detail", "directory"):
        table.add_column(name)
    for s in statuses:
        style = _STYLE[s.state]
        table.add_row(s.month, f"[{style}]{s.state}[/{style}]", escape(s.detail or ""), escape(str(s.path)))
    console.print(table)


@click.command("resume")
@click.argument("run_id")
@runs_dir_option
@user_errors
def runs_resume(run_id: str, paths: ProjectPaths) -> None:
    """Finish every month of a run that is not completed, running only the steps whose artifacts
    are missing or stale; exits 0 only when every month is complete."""
    from quantlab_pipeline.orchestration.launch import get_instance
    from quantlab_pipeline.orchestration.month_runner import MonthPlan, run_months
    from quantlab_pipeline.orchestration.month_runs import month_result, settle_dead_dagster_run
    from quantlab_pipeline.storage.lifecycle import run_status, steps_to_finish
    from quantlab_pipeline.storage.run_dir import RunDirectory
    from quantlab_pipeline.storage.specs import read_spec

    spec = read_spec(paths.runs_dir, validate_run_id(run_id))
    instance = get_instance(note)
    plan, done, busy = [], [], []
    for status in run_status(paths.runs_dir, spec):
        if status.state == "completed":
            ok(f"{status.month} already completed")
            done.append(month_result(spec, status.month, paths=paths, instance=instance))
            continue
        if status.state == "running":
            err_console.print(f"[cyan]…[/cyan] {status.month} is being written by a live process; left alone")
            busy.append(status.month)
            continue
        if status.state == "missing":  # never started: every step
            plan.append(MonthPlan(status.month))
            continue
        run_dir = RunDirectory(paths.runs_dir, status.month, spec.run_id)
        for action in run_dir.repair():
            console.print(f"  [dim]{status.month}[/dim] {escape(action)}")
        settle_dead_dagster_run(run_dir, instance)
        steps = steps_to_finish(run_dir)
        if not steps:
            ok(f"{status.month} completed by repair")
            done.append(month_result(spec, status.month, paths=paths, instance=instance))
            continue
        plan.append(MonthPlan(status.month, tuple(steps)))
    outcome = run_months(spec, plan, paths=paths, instance=instance, on_progress=print_progress) if plan else None
    results = results_or_exit(spec, outcome) if outcome else []
    by_month = {r.month: r for r in [*done, *results]}
    finish(spec, [by_month[m] for m in sorted(by_month)])
    if busy:
        fail(f"month(s) {', '.join(busy)} still being written; run `quantlab runs resume {spec.run_id}` again later", 1)


@click.command("wait")
@click.argument("run_id")
@runs_dir_option
@user_errors
def runs_wait(run_id: str, paths: ProjectPaths) -> None:
    """Follow the queued months of a run (`backtest … --submit`) to the end: the same progress,
    closing table and exit status as a foreground backtest."""
    from quantlab_pipeline.orchestration.launch import get_instance
    from quantlab_pipeline.orchestration.month_runner import follow_queued
    from quantlab_pipeline.storage.specs import read_spec

    spec = read_spec(paths.runs_dir, validate_run_id(run_id))
    instance = get_instance(note)
    console.print(f"[bold]Run[/bold] {spec.run_id} ({spec.run_type}): waiting for {len(spec.months())} month run(s)")
    outcome = follow_queued(spec, spec.months(), paths=paths, instance=instance, on_progress=print_progress)
    finish(spec, outcome.results)


COMMANDS = [runs_status, runs_resume, runs_wait]
