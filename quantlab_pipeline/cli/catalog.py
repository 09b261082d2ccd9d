"""`quantlab backtest catalog-sync | catalog-query | catalog-archive` (docs/catalog.md "The catalog").

Thin: flags in, `storage.catalog` does the work, the seed's output style out (the output
formats live here: they are presentation, not storage). Every bad value is a one-line error with
exit code 2 (values are validated by the storage layer, not by click choices, whose errors span
several lines).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from quantlab_pipeline.cli.console import console, fail, ok, user_errors
from quantlab_pipeline.cli.options import catalog_option, runs_dir_option
from quantlab_pipeline.storage.catalog import (
    PUBLIC_ARTIFACT_COLUMNS,
    PUBLIC_RUN_COLUMNS,
    CatalogStats,
    RunFilter,
    SyncReport,
    archive_month,
    query_artifacts,
    query_runs,
    sync_catalog,
)
from quantlab_pipeline.storage.paths import ProjectPaths

DEFAULT_LIMIT = 10
OUTPUT_FORMATS = ("table", "json", "csv")


def _plural(n: int, word: str = "run", plural: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


def _counts(counts: dict[str, int]) -> str:
    """The seed's `{ "path-only": 1 }`."""
    if not counts:
        return "{}"
    return "{ " + ", ".join(f"{json.dumps(k)}: {v}" for k, v in counts.items()) + " }"


def print_sync_report(report: SyncReport, *, stats: bool) -> None:
    if report.initialized:
        ok("Initialized catalog tables")
    ok(f"Registered {_plural(len(report.registered))}")
    ok(f"Updated {_plural(len(report.updated))}")
    ok(f"Removed {_plural(len(report.removed))}")
    ok(f"Rejected {_plural(len(report.rejected))}")
    for run_dir, reason in report.rejected:
        shown = Path(run_dir).relative_to(report.runs_dir) if Path(run_dir).is_relative_to(report.runs_dir) else run_dir
        console.print(f"    [yellow]{escape(str(shown))}[/yellow]: {escape(reason)}")
    ok(f"Skipped {_plural(len(report.skipped))}")
    if stats and report.stats is not None:
        print_stats(report.stats)


def print_stats(stats: CatalogStats) -> None:
    lines = [
        "",
        "Catalog Statistics:",
        f"  Total runs: {stats.total_runs}",
        f"  Completed: {stats.runs_by_status['completed']}",
        f"  Failed: {stats.runs_by_status['failed']}",
        f"  By type: {_counts(stats.runs_by_type)}",
        f"  Total artifacts: {stats.total_artifacts}",
        f"  By type: {_counts(stats.artifacts_by_type)}",
    ]
    for line in lines:
        console.print(line, markup=False)


@click.command("catalog-sync")
@runs_dir_option
@catalog_option
@click.option("--stats", is_flag=True, help="Print catalog statistics after the sync.")
@click.option(
    "--full",
    is_flag=True,
    help="Inspect every run directory, not only those the journal names (after a restore or a change by hand).",
)
@click.option(
    "--verify", is_flag=True, help="Re-examine every run directory, sha256 of every artifact included (implies --full)."
)
@user_errors
def catalog_sync(paths: ProjectPaths, stats: bool, full: bool, verify: bool) -> None:
    """Reconcile the catalog with the run directories: register completed and failed runs,
    update re-materialized ones, remove incomplete or deleted ones, reject invalid ones. Only
    the directories that changed since the last sync are inspected, unless --full."""
    print_sync_report(sync_catalog(paths.catalog_path, paths.runs_dir, verify=verify, full=full), stats=stats)


def _parse_limit(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        fail(f"--limit: expected a positive integer, got {value!r}")
    return limit


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _emit(rows: list[dict[str, Any]], columns: tuple[str, ...], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps([{c: _plain(r[c]) for c in columns} for r in rows], indent=2))
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: _plain(r[c]) for c in columns} for r in rows)


SHORT_RUN_ID = 8  # characters of a run id shown when the full ones do not fit the terminal


def _print_runs_table(rows: list[dict[str, Any]], *, wide: bool) -> None:
    """Compact: optional columns appear only when some row has a value. Run ids are shortened when
    the full table would not fit the terminal, rather than cut to "20…"; `wide`: printed whole."""
    table = _build_runs_table(rows, short_ids=False)
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if wide:  # wider than the terminal: its lines wrap there, each row whole
        previous = console.size
        console.size = (max(natural, previous.width), previous.height)
        try:
            console.print(table)
        finally:
            console.size = previous
        return
    if natural > console.width:
        table = _build_runs_table(rows, short_ids=True)
        table.caption = f"run ids: first {SHORT_RUN_ID} characters (--wide or --format json for the full ones)"
        table.caption_justify = "left"
    console.print(table)


def _build_runs_table(rows: list[dict[str, Any]], *, short_ids: bool) -> Table:
    table = Table(
        title=_plural(len(rows)),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    columns: list[tuple[str, Any]] = [
        ("run_id", lambda r: r["run_id"][:SHORT_RUN_ID] if short_ids else r["run_id"]),
        ("month", lambda r: r["month"]),
        ("run_type", lambda r: r["run_type"]),
        ("status", lambda r: r["status"]),
        ("calls", lambda r: "" if r["calls_count"] is None else str(r["calls_count"])),
        ("created (UTC)", lambda r: r["created_at"].strftime("%Y-%m-%d %H:%M") if r["created_at"] else ""),
    ]
    columns += [
        (name, lambda r, n=name: r[n] or "") for name in ("policy_id", "git_branch") if any(r[name] for r in rows)
    ]
    for name, _ in columns:
        wraps = name in ("policy_id", "git_branch")
        table.add_column(
            name,
            no_wrap=not wraps,
            overflow="fold" if wraps else "ellipsis",
            justify="right" if name == "calls" else "left",
        )
    for r in rows:
        table.add_row(*(escape(get(r)) for _, get in columns))
    return table


@click.command("catalog-query")
@catalog_option
@click.option("--run-id", default=None, help="Only this run.")
@click.option("--run-type", default=None, help="path-only | policy | optimization.")
@click.option("--status", default=None, help="completed | failed.")
@click.option("--month", default=None, help="Data month YYYY-MM.")
@click.option("--policy-id", default=None, help="Only runs of this policy id.")
@click.option("--git-branch", default=None, help="Only runs created on this git branch.")
@click.option("--from-date", default=None, help="Created on or after this UTC date (YYYY-MM-DD).")
@click.option("--to-date", default=None, help="Created on or before this UTC date (YYYY-MM-DD).")
@click.option("--artifact-type", default=None, help="Print this artifact's path(s) instead of runs, one per line.")
@click.option(
    "--limit",
    default=None,
    help=f"At most this many rows [default: {DEFAULT_LIMIT}; with --run-id and --artifact-type: every month].",
)
@click.option("--format", "fmt", default="table", show_default=True, help="table | json | csv.")
@click.option("--wide", is_flag=True, help="Full run ids in the table, however wide it gets.")
@user_errors
def catalog_query(
    paths: ProjectPaths,
    run_id,
    run_type,
    status,
    month,
    policy_id,
    git_branch,
    from_date,
    to_date,
    artifact_type,
    limit,
    fmt,
    wide,
) -> None:
    """List runs of the catalog (newest first), or the paths of one artifact type."""
    if fmt not in OUTPUT_FORMATS:
        fail(f"--format: expected one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    n = _parse_limit(limit)
    selected = RunFilter(
        run_type=run_type,
        status=status,
        from_date=from_date,
        to_date=to_date,
        month=month,
        policy_id=policy_id,
        git_branch=git_branch,
        run_id=run_id,
    )
    if artifact_type is not None:
        # one run's artifact: every month it covers, unless --limit says otherwise
        n = n if n is not None or run_id is not None else DEFAULT_LIMIT
        rows = query_artifacts(paths.catalog_path, artifact_type, selected, limit=n)
        if not rows and run_id is not None:
            fail(f"run {run_id} has no {artifact_type!r} artifact in catalog {paths.catalog_path}")
        if fmt == "table":
            for row in rows:
                click.echo(row["path"])
        else:
            _emit(rows, PUBLIC_ARTIFACT_COLUMNS, fmt)
        return
    rows = query_runs(paths.catalog_path, selected, limit=n or DEFAULT_LIMIT)
    if fmt != "table":
        _emit(rows, PUBLIC_RUN_COLUMNS, fmt)
    elif rows:
        _print_runs_table(rows, wide=wide)
    else:
        console.print("No runs match.")


@click.command("catalog-archive")
@click.option("--month", required=True, help="Data month to archive (YYYY-MM).")
@click.option("--to", "dest", required=True, help="Archive file to create (.tar.gz); never overwritten.")
@click.option(
    "--include-interrupted",
    is_flag=True,
    help="Archive (and remove) interrupted runs too; without it a month holding one is refused.",
)
@runs_dir_option
@catalog_option
@user_errors
def catalog_archive(month: str, dest: str, include_interrupted: bool, paths: ProjectPaths) -> None:
    """Archive a month of run directories to a verified .tar.gz, remove them, then reconcile
    the catalog. Restore with `tar -xzf FILE -C <runs dir>` and `catalog-sync --full`."""
    report = archive_month(paths.runs_dir, month, dest, paths.catalog_path, include_interrupted=include_interrupted)
    ok(
        f"Archived {_plural(len(report.run_dirs), 'run directory', 'run directories')} "
        f"of {report.month} to {report.archive} ({_plural(report.files, 'file')}, {report.bytes:,} bytes)"
    )
    ok("Verified archive: member list and sizes match")
    ok(f"Removed {paths.runs_dir / report.month}")
    print_sync_report(report.sync, stats=False)


COMMANDS = [catalog_sync, catalog_query, catalog_archive]
