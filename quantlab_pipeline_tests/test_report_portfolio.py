"""The report's equity curve and drawdown (docs/reports.md) for a policy run with a portfolio.

A hand-made two-month run with capital 1,000:
- 2024-01's curve: 1,000 at T0, 1,100 an hour later, 990 after two hours (10 % below the 1,100 peak);
  its row: equity end 990, total return -1.0 %, max drawdown 10.0 %.
- 2024-02's curve: 1,210 (a new peak), 968 (20 % below it), 1,089 (10 % below it); its row, the whole
  window: equity end 1,089, total return 8.9 %, max drawdown 20.0 %, Sharpe 1.25, Sortino null.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from quantlab_pipeline.core.portfolio import EQUITY_SCHEMA, PORTFOLIO_SCHEMA, POSITIONS_SCHEMA
from quantlab_pipeline.report import charts
from quantlab_pipeline.report.html import build_sections, render_html
from quantlab_pipeline.storage.layout import ARTIFACT_PATHS
from quantlab_pipeline.storage.run_contents import load_run
from quantlab_pipeline.storage.specs import write_spec
from quantlab_pipeline_tests.test_report import (
    HOUR,
    RUN_ID,
    T0,
    TRADE_CHARTS,
    TRUTH_CHARTS,
    alerts_frame,
    chart_keys,
    make_spec,
    paths_frame,
    summary_frame,
    trades_frame,
    write_month,
)

FEB = T0 + 31 * 24 * HOUR
CURVES = {
    "2024-01": [(T0, 1000.0), (T0 + HOUR, 1100.0), (T0 + 2 * HOUR, 990.0)],
    "2024-02": [(FEB, 1210.0), (FEB + HOUR, 968.0), (FEB + 2 * HOUR, 1089.0)],
}
ROWS = {
    "2024-01": {"equity_end": 990.0, "total_return": -0.01, "max_drawdown": 0.1, "sharpe": None},
    "2024-02": {"equity_end": 1089.0, "total_return": 0.089, "max_drawdown": 0.2, "sharpe": 1.25},
}


def curve(month: str) -> pl.DataFrame:
    ts, equity = zip(*CURVES[month])
    return pl.DataFrame(
        {"ts_ms": ts, "equity": equity, "cash": equity, "positions_value": [0.0] * 3, "open_positions": [0] * 3},
        schema=EQUITY_SCHEMA,
    )


def row(month: str) -> pl.DataFrame:
    figures = {"capital": 1000.0, "sortino": None, "exposure": 0.5, "max_open_positions": 2, "calls_taken": 4}
    figures |= {"calls_skipped_cash": 1, "calls_skipped_max_positions": 0, **ROWS[month]}
    return pl.DataFrame([{"run_id": RUN_ID, "month": month, **figures}], schema=PORTFOLIO_SCHEMA)


@pytest.fixture
def portfolio_run(tmp_path) -> Path:
    runs = tmp_path / "runs"
    spec = write_spec(runs, make_spec("policy", portfolio={"capital": 1000.0, "position_size": 100.0}))
    positions = pl.DataFrame(schema=POSITIONS_SCHEMA)
    for month in CURVES:
        policy = {
            "alerts": alerts_frame(),
            "paths": paths_frame(),
            "trades": trades_frame(),
            "summary": summary_frame(),
        }
        write_month(
            runs, spec, month, {**policy, "equity": curve(month), "positions": positions, "portfolio": row(month)}
        )
    return runs


def test_the_window_section_draws_the_months_curve_and_its_drawdown(portfolio_run):
    run = load_run(portfolio_run, RUN_ID)
    assert [m.status for m in run.months] == ["completed", "completed"]
    page = render_html(run, build_sections(run))
    # The curve spans the window (the drawdown's peak runs through it): drawn in its section only.
    assert chart_keys(page) == [
        "window-equity",
        *(f"window-{k}" for k in TRADE_CHARTS + TRUTH_CHARTS),
        *(f"{m}-{k}" for m in CURVES for k in TRADE_CHARTS + TRUTH_CHARTS),
    ]
    # Its title, from the six points, states what February's row holds for the whole window.
    title = "Equity and drawdown — capital 1,000.00, equity end 1,089.00 (8.9%), max drawdown 20.0%, 6 points"
    assert page.count(title) == 2  # the <svg>'s aria-label and its drawn title
    assert '<figure class="chart" id="window-equity" data-chart="equity"><svg ' in page
    # The headline tables: the window's is February's row, January's section its own row.
    for label, value in (("equity end (window to 2024-02)", "1,089.00"), ("max drawdown", "20.0%")):
        assert f"<tr><th>{label}</th><td>{value}</td></tr>" in page
    assert "<tr><th>Sharpe / Sortino</th><td>1.25 / —</td></tr>" in page
    assert "<tr><th>equity end (window to 2024-01)</th><td>990.00</td></tr>" in page
    assert "<tr><th>calls skipped</th><td>1 for cash, 0 for the cap</td></tr>" in page
    assert "<dt>portfolio</dt><dd>capital 1,000.00, 100.00 per entry, no cap</dd>" in page


def test_the_plotted_points_are_the_equity_files_end_to_end(portfolio_run):
    files = [portfolio_run / m / f"run_id={RUN_ID}" / ARTIFACT_PATHS["equity"] for m in CURVES]
    on_disk = pl.concat([pl.read_parquet(f) for f in files])
    run = load_run(portfolio_run, RUN_ID)
    drawn = pl.concat([m.frames["equity"] for m in run.months])
    assert drawn.equals(on_disk)
    _, _, fig = charts.equity.__wrapped__(drawn, 1000.0)  # the figure before it becomes SVG
    top, bottom = fig.axes
    line = top.lines[0]
    assert line.get_xdata(orig=True).astype("datetime64[ms]").astype(np.int64).tolist() == on_disk["ts_ms"].to_list()
    assert line.get_ydata(orig=True).tolist() == on_disk["equity"].to_list()
    # (running peak - equity) / running peak, in %, drawn downwards: 0, 0, 10, 0, 20, 10
    assert np.allclose(-bottom.lines[0].get_ydata(orig=True), [0.0, 0.0, 10.0, 0.0, 20.0, 10.0])
    assert list(top.lines[1].get_ydata(orig=True)) == [1000.0, 1000.0]  # the capital


def test_drawdown_starts_its_peak_at_the_capital():
    # below the capital from the start: 10 % and 20 % down, back to 5 % down from 1,000
    assert np.allclose(charts.drawdown(np.array([900.0, 800.0, 950.0]), 1000.0), [0.1, 0.2, 0.05])
    assert charts.drawdown(np.array([]), 1000.0).size == 0


def test_an_empty_curve_still_gives_the_chart():
    chart = charts.equity(pl.DataFrame(schema=EQUITY_SCHEMA), 1000.0)
    assert chart.key == "equity" and "equity end 1,000.00 (0.0%), max drawdown 0.0%, 0 points" in chart.title
    assert "no points yet" in chart.svg_text
