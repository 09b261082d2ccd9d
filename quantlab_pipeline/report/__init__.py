"""Pictures of a run: the `quantlab report` HTML page and the charts on Dagster materializations.

Pure reporting: reads artifacts (frames or a run's directories), draws with its own small
renderer (`draw`, `layout`: Pillow PNGs, SVG text), returns HTML or Markdown. No Dagster imports; the orchestration layer attaches the Markdown.
"""

from quantlab_pipeline.report.charts import Chart
from quantlab_pipeline.report.html import Section, build_sections, render_html
from quantlab_pipeline.report.load import MonthArtifacts, RunArtifacts, load_run
from quantlab_pipeline.report.markdown import frontier_chart_markdown, summary_charts_markdown

__all__ = [
    "Chart",
    "MonthArtifacts",
    "RunArtifacts",
    "Section",
    "build_sections",
    "frontier_chart_markdown",
    "load_run",
    "render_html",
    "summary_charts_markdown",
]
