"""`quantlab runs delete RUN_ID… | prune --older-than D` (docs/lifecycle.md "Deleting and pruning runs").

Thin: the runs are chosen by the storage layer, their Dagster records found and removed by
`orchestration.retention`; here the list of what goes, the confirmation and the figures.
"""

from __future__ import annotations

import datetime as dt
import sys

import click
from rich.markup import escape

from quantlab_pipeline.cli.console import console, fail, note, ok, user_errors
from quantlab_pipeline.cli.options import runs_dir_option
from quantlab_pipeline.storage.paths import ProjectPaths

_DELETE_HELP = "Archive the runs' directories and specs to this .tar.gz first (restore: tar -xzf FILE -C <runs dir>)."


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _delete(run_files: list, paths: ProjectPaths, archive: str | None, dry_run: bool, yes: bool) -> None:
    from quantlab_pipeline.orchestration.launch import get_instance
    from quantlab_pipeline.orchestration.retention import plan_removal, remove_runs

    if not (dry_run or yes or sys.stdin.isatty()):
        fail("no terminal to confirm on: pass --yes to delete without asking (--dry-run lists what would go)")
    instance = get_instance(note)
    plans = plan_removal(instance, run_files)
    if not plans:
        ok("No run matches; nothing to delete")
        return
    console.print(f"{len(plans)} run(s) {'would be deleted' if dry_run else 'to delete'}:")
    for plan in plans:
        spec, files = plan.files.spec, plan.files
        what = f"{spec.run_type}, created {spec.created_at[:10]}" if spec else "no spec"
        partitions = ", ".join(f"{name}:{key}" for name, key in plan.partitions) or "none"
        console.print(
            f"  {plan.run_id} ({escape(what)}, {files.state}): {len(files.months)} month director"
            f"{'y' if len(files.months) == 1 else 'ies'}{' and its spec' if files.spec_file else ''} "
            f"({_mb(files.bytes)}), {len(plan.dagster_runs)} Dagster run(s), partition key(s) {partitions}",
            markup=False,
        )
    if dry_run:
        return
    if not yes and not click.confirm(f"Delete these {len(plans)} run(s) for good?", default=False):
        fail("not confirmed; nothing was deleted", 1)
    removed = remove_runs(instance, paths.runs_dir, plans, archive)
    if removed.archive is not None:
        ok(f"Archived {removed.archive[0]} files ({removed.archive[1]:,} bytes) to {archive}, verified")
    ok(
        f"Deleted {removed.runs} run(s): {paths.runs_dir} shrank by {_mb(removed.runs_dir_bytes)}, "
        f"the Dagster instance ({removed.instance_dir}) by {_mb(removed.instance_bytes)}"
    )
    for remark in removed.notes:
        console.print(f"  [yellow]note:[/yellow] {escape(remark)}")
    console.print("  The catalog drops their rows at its next sync (`quantlab backtest catalog-sync`).")


@click.command("delete")
@click.argument("run_ids", nargs=-1, required=True)
@runs_dir_option
@click.option("--archive", "archive", default=None, metavar="FILE", help=_DELETE_HELP)
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@user_errors
def runs_delete(run_ids: tuple[str, ...], paths: ProjectPaths, archive: str | None, dry_run: bool, yes: bool) -> None:
    """Delete runs completely: their Dagster runs with event and compute logs, their partition
    keys, their run directories and spec. A live run is refused."""
    from quantlab_pipeline.storage.retention import run_files

    runs = [run_files(paths.runs_dir, run_id) for run_id in dict.fromkeys(run_ids)]
    _delete(runs, paths, archive, dry_run, yes)


@click.command("prune")
@click.option("--older-than", required=True, help="Runs created longer ago than this: 90d, 12h, 30m, 10s.")
@click.option("--run-type", default=None, help="Only runs of this type: path-only | policy | optimization.")
@click.option("--status", default=None, help="Only runs in this state: completed | failed (failed or interrupted).")
@runs_dir_option
@click.option("--archive", "archive", default=None, metavar="FILE", help=_DELETE_HELP)
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@user_errors
def runs_prune(
    older_than: str,
    run_type: str | None,
    status: str | None,
    paths: ProjectPaths,
    archive: str | None,
    dry_run: bool,
    yes: bool,
) -> None:
    """Delete, as `runs delete` does, every run created longer ago than --older-than (and of
    --run-type, in --status); runs being written are left alone."""
    from quantlab_pipeline.core.durations import parse_duration_ms
    from quantlab_pipeline.storage.retention import select_runs

    age = dt.timedelta(milliseconds=parse_duration_ms(older_than, field="--older-than"))
    runs = select_runs(paths.runs_dir, older_than=age, run_type=run_type, status=status)
    _delete(runs, paths, archive, dry_run, yes)


COMMANDS = [runs_delete, runs_prune]
