"""The closing tables of `quantlab backtest optimize`: a month's best-ranked policies (the whole
grid stays in `results/frontier.parquet`), and with `--walk-forward` the walk-forward table and
the window's overfitting gap (docs/research.md "Walk-forward optimization")."""

from __future__ import annotations

from typing import Any

import polars as pl
from rich.table import Table

from quantlab_pipeline.cli.console import console
from quantlab_pipeline.core import display
from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.core.sweep_spec import parse_sweep
from quantlab_pipeline.core.walkforward import window_gap
from quantlab_pipeline.storage.paths import ProjectPaths
from quantlab_pipeline.storage.run_dir import RunDirectory


def print_frontier_top(spec: RunSpec, results: list[Any], *, paths: ProjectPaths) -> None:
    """The `display.FRONTIER_TOP` best-ranked policies (all callers) of a one-month optimization,
    however large its grid; a run of several months points to the report instead."""
    completed = [r for r in results if r.status == "completed"]
    if spec.run_type != "optimization" or parse_sweep(spec.sweep).train_months is not None or not completed:
        return
    if len(results) > 1:
        console.print(f"Each month's {display.FRONTIER_TOP} best-ranked policies are in its report section.")
        return
    try:
        frame = RunDirectory(paths.runs_dir, completed[0].month, spec.run_id).read_artifact("frontier").frame
    except QuantlabError as exc:
        console.print(f"[red]frontier {completed[0].month}: {exc}[/red]")
        return
    policies = frame.get_column("caller_name").is_null().sum()
    rows = display.frontier_rows(frame, display.FRONTIER_TOP)
    table = Table(
        title=f"Frontier {completed[0].month}: the {len(rows)} best ranked of {policies:,} policies (all callers); "
        "every policy: results/frontier.parquet",
        title_justify="left",
    )
    for name in display.FRONTIER_COLUMNS:
        table.add_column(name, justify="left" if name in ("policy", "feasible", "pareto") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def print_walk_forward(spec: RunSpec, results: list[Any], *, paths: ProjectPaths) -> None:
    """Per tested month the selection in and out of sample, then the window's gap; nothing for
    runs without walk-forward. Months that did not complete are left out (their status is above)."""
    if spec.run_type != "optimization" or parse_sweep(spec.sweep).train_months is None:
        return
    rows, frontiers = [], []
    for result in results:
        if result.status != "completed":
            continue
        directory = RunDirectory(paths.runs_dir, result.month, spec.run_id)
        try:
            rows.append(directory.read_artifact("walkforward").frame)
            frontiers.append(directory.read_artifact("frontier").frame.with_columns(month=pl.lit(result.month)))
        except QuantlabError as exc:
            console.print(f"[red]walk-forward {result.month}: {exc}[/red]")
    walkforward = pl.concat(rows) if rows else pl.DataFrame()
    if walkforward.height == 0:
        console.print("Walk-forward: no month of the window has its training months before it in the window.")
        return
    objective = walkforward.get_column("objective")[0]
    table = Table(title=f"Walk-forward (objective {objective}, all callers)", title_justify="left")
    for name in ("Month", "Trained on", "Selected policy", "In-sample", "Out-of-sample", "Gap", "Training PBO"):
        table.add_column(name, justify="left" if name in ("Month", "Trained on", "Selected policy") else "right")
    for r in walkforward.filter(pl.col("caller_name").is_null()).iter_rows(named=True):
        table.add_row(
            r["month"],
            r["train_months"],
            r["policy_id"] or "no feasible policy",
            display.bps(r["is_objective_score"]),
            display.bps(r["oos_objective_score"]),
            display.bps(r["score_gap"]),
            display.num(r.get("train_pbo")),  # docs/confidence.md
        )
    console.print(table)
    gap = window_gap(walkforward, pl.concat(frontiers, how="diagonal_relaxed"))
    months = f"{gap.tested_months[0]}..{gap.tested_months[-1]}"
    console.print(
        f"Over {months}, average monthly {gap.objective}: walk-forward {display.bps(gap.walk_forward_score)} "
        f"({display.num(gap.walk_forward_trades)} trades); best single policy in hindsight "
        f"{gap.hindsight_policy_id or 'none'} {display.bps(gap.hindsight_score)} "
        f"({display.num(gap.hindsight_trades)} trades)."
    )
    console.print(f"[bold]Overfitting gap[/bold]: {display.bps(gap.gap)} (hindsight − walk-forward).")
