"""The report's charts as Markdown for Dagster materializations (`MetadataValue.md`).

Dagster's UI renders Markdown images, and a `data:` URI keeps each picture inside the event
itself: nothing to serve, nothing to go stale. Images are small palette PNGs, ~3–10 KB each
(the five summary charts of 19,188 trades: 31 KB in all, drawn in ~35 ms).
"""

from __future__ import annotations

import polars as pl

from quantlab_pipeline.core.sweep_spec import Constraints
from quantlab_pipeline.report import charts
from quantlab_pipeline.report.charts import Chart


def _markdown(built: list[Chart]) -> str:
    def alt(title: str) -> str:
        return title.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")

    return "\n\n".join(f"![{alt(c.title)}]({c.png_data_uri()})" for c in built) + "\n"


def summary_charts_markdown(trades: pl.DataFrame, paths: pl.DataFrame) -> str:
    """Return distribution, exit reasons, MAE vs return, callers and time to 2x of one partition."""
    return _markdown([*charts.trade_charts(trades), *charts.truth_charts(paths)])


def frontier_chart_markdown(frontier: pl.DataFrame, constraints: Constraints | None = None) -> str:
    """The frontier scatter; pass the sweep's `constraints` to shade the feasible region."""
    return _markdown([charts.frontier(frontier, constraints)])
