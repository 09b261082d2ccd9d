"""`quantlab report RUN_ID`: one self-contained HTML page of a run's charts (docs/reports.md)."""

from __future__ import annotations

from pathlib import Path

import click

from quantlab_pipeline.cli.console import console, ok, user_errors
from quantlab_pipeline.cli.options import runs_dir_option
from quantlab_pipeline.core.spec import validate_run_id
from quantlab_pipeline.storage.atomic import atomic_write_bytes
from quantlab_pipeline.storage.layout import report_path
from quantlab_pipeline.storage.paths import ProjectPaths


@click.command("report")
@click.argument("run_id")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The HTML file to write.  [default: <runs-dir>/reports/<run_id>.html]",
)
@runs_dir_option
@user_errors
def report(run_id: str, out: Path | None, paths: ProjectPaths) -> None:
    """Write an offline HTML report of RUN_ID: its whole window and each month."""
    validate_run_id(run_id)
    # matplotlib loads only for this command, not for every `quantlab` invocation.
    from quantlab_pipeline.report.html import build_sections, render_html
    from quantlab_pipeline.storage.run_contents import load_run

    run = load_run(paths.runs_dir, run_id)
    sections = build_sections(run)
    path = out if out is not None else report_path(paths.runs_dir, run_id)
    atomic_write_bytes(path, render_html(run, sections).encode("utf-8"))
    for month in run.incomplete:
        console.print(f"[yellow]![/yellow] {month.month} is incomplete ({month.note}): included as far as it exists")
    n_charts = sum(len(s.charts) for s in sections)
    where = "the whole window" if len(sections) == 1 else f"the whole window and {len(sections) - 1} months"
    ok(f"Wrote {path.resolve()} ({n_charts} charts: {where})")
