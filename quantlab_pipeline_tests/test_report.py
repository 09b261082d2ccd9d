"""`quantlab report` and its charts: numbers in titles, readable axes, deterministic offline SVG,
run loading, the CLI, and Chromium.

The hand-made run below has numbers chosen so every title can be checked by hand:

- paths (2024-01): 4 calls by callers a, a, b, c; 2x hit by 2 of them, 2 h and 6 h after entry
  (median 4.0 h); peak multiples 2.5, 1.2, 3.0, 1.5 (median 2.00×).
- trades (2024-01): returns -500, 1000, 3000, -200 bps (median 400, mean 825, win rate 50.0%);
  2 of 4 stopped out; MAE -800, -100, -300, -600 (5th percentile, linear: -770 bps).
- frontier: 4 policies of the all-callers group, p1 and p3 feasible, p1 p2 p3 on the Pareto
  front, p1 ranked first (median 100 bps); a per-caller row that the chart leaves out.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from quantlab_pipeline.core.confidence import OVERFITTING_SCHEMA
from quantlab_pipeline.core.errors import QuantlabError, SpecError
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.core.sweep_spec import Constraints
from quantlab_pipeline.orchestration.headlines import frontier_headline, report_link, summary_headline
from quantlab_pipeline.report import charts
from quantlab_pipeline.report.html import FRONTIER_TOP, build_sections, render_html
from quantlab_pipeline.storage.layout import report_path
from quantlab_pipeline.storage.run_contents import load_run
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import write_spec
from quantlab_pipeline_tests.browser import Browser, chromium_or_skip
from quantlab_pipeline_tests.helpers import run_cli

RUN_ID = "3f2b7c1e-9a4d-4e8f-8b6a-1c2d3e4f5a6b"
HOUR = 3_600_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00Z

TRADE_CHARTS = ["returns", "exit_reasons", "mae_vs_return"]
TRUTH_CHARTS = ["callers", "time_to_2x"]


def alerts_frame(n: int = 4) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "call_id": [f"c{i}" for i in range(n)],
            "mint": [f"m{i}" for i in range(n)],
            "caller_name": ["a", "a", "b", "c"][:n],
            "chain": ["solana"] * n,
            "alert_ts_ms": [T0 + i * HOUR for i in range(n)],
            "created_at": ["2024-01-01"] * n,
        }
    )


def paths_frame() -> pl.DataFrame:
    entry = [T0 + i * HOUR for i in range(4)]
    return pl.DataFrame(
        {
            "run_id": [RUN_ID] * 4,
            "call_id": [f"c{i}" for i in range(4)],
            "caller_name": ["a", "a", "b", "c"],
            "p0": [1.0] * 4,
            "hit_2x": [True, False, True, False],
            "t_2x_ms": [entry[0] + 2 * HOUR, None, entry[2] + 6 * HOUR, None],
            "peak_multiple": [2.5, 1.2, 3.0, 1.5],
            "dd_bps": [-800.0, -100.0, -300.0, -600.0],
            "entry_ts_ms": entry,
        }
    )


def trades_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "run_id": [RUN_ID] * 4,
            "policy_id": ["fixed-5"] * 4,
            "call_id": [f"c{i}" for i in range(4)],
            "exit_reason": ["stop_loss", "take_profit", "end_of_data", "stop_loss"],
            "realized_return_bps": [-500.0, 1000.0, 3000.0, -200.0],
            "stop_out": [True, False, False, True],
            "max_adverse_excursion_bps": [-800.0, -100.0, -300.0, -600.0],
            "time_exposed_ms": [HOUR] * 4,
            "tail_capture": [None, 0.5, 0.9, None],
        }
    )


def summary_frame() -> pl.DataFrame:
    return pl.DataFrame({"run_id": [RUN_ID], "trades_count": [4], "median_return_bps": [400.0]})


def frontier_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "run_id": [RUN_ID] * 5,
            "caller_name": [None, None, None, None, "a"],
            "policy_id": ["p1", "p2", "p3", "p4", "p1"],
            "policy_params": [f'{{"kind":"fixed_stop","stop_loss_bps":{s}}}' for s in (100, 200, 300, 400, 100)],
            "meets_constraints": [True, False, True, False, True],
            "objective_score": [100.0, 300.0, -100.0, -500.0, 900.0],
            "median_return_bps": [100.0, 300.0, -100.0, -500.0, 900.0],
            "avg_return_bps": [150.0, 250.0, -50.0, -400.0, 800.0],
            "stop_out_rate": [0.25, 0.5, 0.25, 0.75, 0.0],
            "p95_mae_bps": [-2000.0, -4000.0, -1000.0, -5000.0, -100.0],
            "trades_count": [4, 4, 4, 4, 2],
            "pareto": [True, True, True, False, True],
            "rank": [1, 3, 2, 4, 1],
        },
        schema_overrides={"caller_name": pl.String},
    )


def trade_charts(trades: pl.DataFrame) -> list[charts.Chart]:
    return [charts.return_distribution(trades), charts.exit_reasons(trades), charts.mae_vs_return(trades)]


def truth_charts(paths: pl.DataFrame) -> list[charts.Chart]:
    return [charts.callers(paths), charts.time_to_2x(paths)]


# -- chart builders -------------------------------------------------------------------------------


def test_every_chart_states_its_numbers_in_its_title():
    trades, paths = trades_frame(), paths_frame()
    titles = {c.key: c.title for c in [*trade_charts(trades), *truth_charts(paths)]}
    assert list(titles) == TRADE_CHARTS + TRUTH_CHARTS
    assert "4 trades, median 400 bps, mean 825 bps, win rate 50.0%" in titles["returns"]
    assert "4 trades, stop-out rate 50.0%" in titles["exit_reasons"]
    assert "p95 MAE -770 bps, median return 400 bps" in titles["mae_vs_return"]
    assert "3 callers, 4 calls; overall hit rate 50.0%, median peak 2.00×" in titles["callers"]
    assert "2 of 4 calls (50.0%), median 4.0 h" in titles["time_to_2x"]

    front = charts.frontier(frontier_frame(), Constraints())
    assert front.key == "frontier"
    assert "4 policies, 2 feasible, 3 on the Pareto front; best feasible: p1 (median 100 bps)" in front.title


def test_chart_text_and_axes_carry_units():
    svg = charts.return_distribution(trades_frame()).svg("t")
    assert svg.startswith('<svg role="img" aria-label="Realized return per trade — 4 trades')
    assert "bps of entry, net of fees and slippage" in svg  # text as text: labels are searchable
    assert "hours from entry" in charts.time_to_2x(paths_frame()).svg("t")
    front = charts.frontier(frontier_frame(), Constraints(min_p95_mae_bps=-3000.0)).svg("t")
    assert "feasible region: p95 MAE ≥ -3,000 bps" in front and "Pareto front (3)" in front


def heavy_tailed_returns(n: int = 2_000, seed: int = 3) -> np.ndarray:
    """A month like the reference one: a bulk around -580 bps (stops, fees) spread ±1,500 bps, and 3 %
    of 10x-70x winners (the mean far above the median)."""
    rng = np.random.default_rng(seed)
    returns = rng.normal(-580.0, 600.0, n)
    winners = rng.random(n) < 0.03
    returns[winners] = rng.uniform(100_000.0, 706_668.0, int(winners.sum()))
    return returns


def test_a_heavy_tail_leaves_the_bulk_of_the_trades_spread_over_several_bars():
    returns = heavy_tailed_returns()
    assert returns.mean() > 5_000 and abs(np.median(returns) + 580) < 100  # skewed like the reference month
    counts, _ = np.histogram(returns, bins=charts.return_bins(returns))
    # Equal widths over the whole range would put ~97 % of the trades in one bar; here the
    # busiest bar holds under a quarter and 8 bars hold at least 2 % of the trades each.
    linear, _ = np.histogram(returns, bins=counts.size)
    assert linear.max() / returns.size > 0.95
    assert counts.max() / returns.size < 0.25 and (counts >= 0.02 * returns.size).sum() >= 8
    assert counts.sum() == returns.size  # every trade drawn, the winners included
    # The axis says it is logarithmic past ±1,000 bps, and the winners are counted.
    trades = pl.concat([trades_frame()] * 500).with_columns(pl.Series("realized_return_bps", returns))
    svg = charts.return_distribution(trades).svg("t")
    doubled = int((returns >= 10_000).sum())
    assert "logarithmic beyond ±1,000" in svg and ">100,000<" in svg
    assert f"{doubled} trades ≥ 10,000 bps (2×), max {returns.max():,.0f} bps" in svg


def test_returns_within_the_usual_range_keep_a_linear_axis():
    returns = np.array([-500.0, 1000.0, 3000.0, -200.0])
    edges = charts.return_bins(returns)
    assert edges[0] == -500.0 and edges[-1] == 3000.0 and np.allclose(np.diff(edges), 350.0)
    assert "logarithmic" not in charts.return_distribution(trades_frame()).svg("t")


def test_empty_inputs_still_give_every_chart():
    trades, paths = trades_frame().clear(), paths_frame().clear()
    built = [*trade_charts(trades), *truth_charts(paths), charts.frontier(frontier_frame().clear())]
    assert [c.key for c in built] == [*TRADE_CHARTS, *TRUTH_CHARTS, "frontier"]
    assert "0 trades, median —" in built[0].title
    assert "no trades" in built[0].svg("t") and "no calls" in built[3].svg("t")
    assert "0 policies, 0 feasible, 0 on the Pareto front; no feasible policy" in built[-1].title


def test_svg_is_reproducible_machine_independent_and_its_ids_are_prefixed():
    a = charts.mae_vs_return(trades_frame()).svg("one")
    assert a == charts.mae_vs_return(trades_frame()).svg("one")  # matplotlib's id salt is fixed
    assert "<metadata" not in a and "dc:date" not in a and "matplotlib.org" not in a
    families = set(re.findall(r"font-family: ([^;\"]+)", a))
    assert families == {"'DejaVu Sans', sans-serif"}  # what to draw with where DejaVu Sans is missing
    ids = re.findall(r'\bid="([^"]+)"', a)
    refs = re.findall(r'(?:url\(#|href="#)([^")]+)', a)
    assert ids and refs and all(i.startswith("one-") for i in ids + refs) and set(refs) <= set(ids)


def big_month(n: int = 20_000, seed: int = 7) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Trades and paths of `n` calls shaped like a reference month: most trades stopped at -2,000 bps,
    a band of take-profits at 10,000, a few 10x-100x winners (the symlog axis)."""
    rng = np.random.default_rng(seed)
    stopped = rng.random(n) < 0.6
    returns = np.where(stopped, -2_080.0, rng.normal(1_500, 3_000, n))
    returns[rng.random(n) < 0.002] = 250_000.0
    mae = np.where(stopped, rng.uniform(-9_000, -2_000, n), rng.uniform(-2_000, 0, n))
    entry = T0 + rng.integers(0, 30 * 24, n) * HOUR
    hit = rng.random(n) < 0.3
    trades = pl.DataFrame(
        {
            "call_id": [f"c{i}" for i in range(n)],
            "exit_reason": np.where(stopped, "stop_loss", "end_of_data"),
            "realized_return_bps": returns,
            "stop_out": stopped,
            "max_adverse_excursion_bps": mae,
            "time_exposed_ms": np.full(n, HOUR),
            "tail_capture": np.full(n, 0.5),
        }
    )
    paths = pl.DataFrame(
        {
            "caller_name": rng.choice([f"caller_{i}" for i in range(25)], n),
            "hit_2x": hit,
            "t_2x_ms": entry + rng.integers(1, 120, n) * HOUR,
            "peak_multiple": rng.lognormal(0.3, 0.5, n),
            "entry_ts_ms": entry,
        }
    ).with_columns(pl.when(pl.col("hit_2x")).then(pl.col("t_2x_ms")).alias("t_2x_ms"))
    return trades, paths


def test_a_big_month_draws_its_cloud_as_one_bitmap_and_its_busiest_callers():
    trades, paths = big_month()
    svg = charts.mae_vs_return(trades).svg("m")
    assert svg.count("<image ") == 1 and 'xlink:href="data:image/png;base64,' in svg
    assert "logarithmic beyond ±1,000" in svg and ">100,000<" in svg  # the symlog axis and its decades
    assert len(svg) < 400_000
    few = charts.mae_vs_return(trades_frame()).svg("f")
    assert "<image " not in few
    callers = charts.callers(paths)
    assert callers.title.startswith("2x hit rate and peak multiple by caller — 25 callers, 20000 calls")
    assert "top 20 of 25 callers by calls" in callers.svg("c")


def big_frontier(n: int, seed: int = 11) -> pl.DataFrame:
    """`n` policies of the all-callers group, a quarter feasible, ranked by median return."""
    rng = np.random.default_rng(seed)
    mae = rng.uniform(-6_000.0, -200.0, n)
    median = -300.0 + 0.1 * mae + rng.normal(0.0, 300.0, n)
    order = np.argsort(-median)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    return pl.DataFrame(
        {
            "caller_name": pl.Series([None] * n, dtype=pl.String),
            "policy_id": [f"p{i}" for i in range(n)],
            "policy_params": [f'{{"kind":"fixed_stop","stop_loss_bps":{i}}}' for i in range(n)],
            "meets_constraints": (mae >= -3_000.0) & (rng.random(n) < 0.5),
            "objective_score": median,
            "median_return_bps": median,
            "avg_return_bps": median + 50.0,
            "stop_out_rate": rng.random(n),
            "p95_mae_bps": mae,
            "trades_count": np.full(n, 100),
            "pareto": rank <= 5,
            "rank": rank,
        }
    )


def test_a_frontier_of_10000_policies_stays_readable():
    chart = charts.frontier(big_frontier(10_000), Constraints())
    assert "10000 policies" in chart.title and "5 on the Pareto front" in chart.title
    svg = chart.svg("f")
    # The policies are one bitmap (the Pareto front, axes and text stay vector), the legend says what is what.
    assert svg.count("<image ") == 1 and len(svg) < 600_000
    assert "infeasible (" in svg and "Pareto front (5)" in svg


def test_the_frontier_table_lists_the_top_policies_only(tmp_path):
    runs = tmp_path / "runs"
    spec = write_spec(runs, make_spec("optimization", window_to="2024-01-31"))
    write_month(
        runs, spec, "2024-01", {"alerts": alerts_frame(), "paths": paths_frame(), "frontier": big_frontier(500)}
    )
    run = load_run(runs, RUN_ID)
    (section,) = build_sections(run)
    assert [row[0] for row in section.top_policies] == [str(r) for r in range(1, FRONTIER_TOP + 1)]
    page = render_html(run, [section])
    assert f"The {FRONTIER_TOP} best ranked of 500 policies (all callers)" in page
    assert (
        page.count("<tr><td>") == FRONTIER_TOP and '<td class="policy">{&quot;kind&quot;:&quot;fixed_stop&quot;' in page
    )


# -- what the materializations carry instead of pictures ------------------------------------------


def test_summary_and_frontier_metadata_link_the_report_and_hold_no_image(tmp_path):
    link = report_link(tmp_path / "runs", RUN_ID)
    assert link["report"].value == str(report_path(tmp_path / "runs", RUN_ID).resolve())
    assert link["report"].value.endswith(f"/runs/reports/{RUN_ID}.html")
    assert link["report_command"].value == f"quantlab report {RUN_ID} --runs-dir {tmp_path / 'runs'}"
    assert report_link(Path("runs"), RUN_ID)["report_command"].value == f"quantlab report {RUN_ID}"
    row = {
        "trades_count": 4,
        "avg_return_bps": 825.0,
        "median_return_bps": 400.0,
        "p25_return_bps": -275.0,
        "p75_return_bps": 1500.0,
        "stop_out_rate": 0.5,
        "win_rate": 0.5,
        "calls_processed": 4,
        "calls_excluded": 0,
        "median_tail_capture": 0.7,
        "median_return_bps_ci_low": 100.0,
        "median_return_bps_ci_high": 900.0,
        "avg_return_bps_ci_low": -50.0,
        "avg_return_bps_ci_high": 1900.0,
    }
    for metadata in (summary_headline(row, link), frontier_headline(big_frontier(500), link)):
        assert metadata["report"] is link["report"] and metadata["report_command"] is link["report_command"]
        text = repr({k: getattr(v, "value", v) for k, v in metadata.items()})
        assert "data:image" not in text and "<svg" not in text and len(text) < 3_000
    assert len(metadata["headline"].value.splitlines()) == 2 + 10  # header, rule, the 10 best policies


# -- a run on disk --------------------------------------------------------------------------------


def make_spec(run_type: str, window_to: str = "2024-02-29", **extra: Any) -> RunSpec:
    data: dict[str, Any] = {
        "run_id": RUN_ID,
        "run_type": run_type,
        "created_at": "2024-03-01T00:00:00.000Z",
        "window": {"from": "2024-01-01", "to": window_to},
        "source": {"alerts": "/data/alerts.duckdb"},
        "features": False,  # the hand-made months hold the charted artifacts only
        **extra,
    }
    if run_type == "policy":
        data.update(policy_id="fixed-5", policy={"kind": "fixed_stop", "stop_loss_bps": 500})
    return RunSpec.from_dict(data)


def write_month(runs: Path, spec: RunSpec, month: str, artifacts: dict[str, pl.DataFrame]) -> None:
    rd = RunDirectory(runs, month, spec.run_id)
    shas: dict[str, str] = {}
    for name, frame in artifacts.items():
        record = rd.write_artifact(name, frame, spec, inputs=shas, dagster_run_id=None, elapsed_ms=1)
        shas[name] = record["sha256"]


@pytest.fixture
def policy_run(tmp_path) -> Path:
    """Two months: 2024-01 complete, 2024-02 with alerts and paths only (still running)."""
    runs = tmp_path / "policy-runs"
    spec = write_spec(runs, make_spec("policy"))
    full = {"alerts": alerts_frame(), "paths": paths_frame(), "trades": trades_frame(), "summary": summary_frame()}
    write_month(runs, spec, "2024-01", full)
    write_month(runs, spec, "2024-02", {"alerts": alerts_frame(), "paths": paths_frame()})
    return runs


@pytest.fixture
def optimization_run(tmp_path) -> Path:
    runs = tmp_path / "optimization-runs"
    spec = write_spec(runs, make_spec("optimization", window_to="2024-01-31"))
    write_month(runs, spec, "2024-01", {"alerts": alerts_frame(), "paths": paths_frame(), "frontier": frontier_frame()})
    return runs


def chart_keys(page: str) -> list[str]:
    return re.findall(r'<figure class="chart" id="([^"]+)"', page)


def test_policy_report_covers_the_window_and_each_month_and_says_what_is_incomplete(policy_run):
    run = load_run(policy_run, RUN_ID)
    assert [(m.month, m.status) for m in run.months] == [("2024-01", "completed"), ("2024-02", "running")]
    assert run.months[1].note == "running; missing trades, summary"
    page = render_html(run, build_sections(run))
    assert chart_keys(page) == [
        *(f"window-{k}" for k in TRADE_CHARTS + TRUTH_CHARTS),
        *(f"2024-01-{k}" for k in TRADE_CHARTS + TRUTH_CHARTS),
        *(f"2024-02-{k}" for k in TRUTH_CHARTS),
    ]
    assert page.count("<svg ") == len(chart_keys(page))
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    assert "Incomplete month 2024-02</strong>: running; missing trades, summary" in page
    assert "No trades artifact yet" in page
    # The whole window holds both months' truth layer: 8 calls, 4 of them hit 2x.
    assert "4 of 8 calls (50.0%), median 4.0 h" in page
    # Offline by construction: no script, no remote reference, and a CSP that forbids both.
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    assert "default-src 'none'" in page
    assert page == render_html(run, build_sections(run))


def test_a_month_whose_writer_is_gone_is_reported_as_runs_status_says(policy_run):
    manifest_path = policy_run / "2024-02" / f"run_id={RUN_ID}" / "run.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["writer"]
    manifest_path.write_text(json.dumps(manifest))
    run = load_run(policy_run, RUN_ID)
    assert (run.months[1].status, run.months[1].note) == (
        "interrupted",
        "interrupted; no writer recorded; missing trades, summary",
    )
    page = render_html(run, build_sections(run))
    assert "Incomplete month 2024-02</strong>: interrupted; no writer recorded; missing trades, summary" in page


def test_optimization_report_has_the_frontier_and_no_trade_charts(optimization_run):
    run = load_run(optimization_run, RUN_ID)
    page = render_html(run, build_sections(run))
    assert chart_keys(page) == ["window-frontier", "window-callers", "window-time_to_2x"]
    # The sweep's default constraints shade the region and name every constraint.
    assert "feasible region: p95 MAE ≥ -3,000 bps" in page and "stop-out ≤ 30.0%" in page


def test_optimization_report_says_how_much_of_the_winner_is_luck_and_shows_the_intervals(tmp_path):
    runs = tmp_path / "runs"
    spec = write_spec(runs, make_spec("optimization", window_to="2024-01-31"))
    frontier = frontier_frame().with_columns(
        avg_return_bps=pl.col("median_return_bps") + 5,
        median_return_bps_ci_low=pl.when(pl.col("rank") == 1).then(pl.col("median_return_bps") - 30.2),
        median_return_bps_ci_high=pl.when(pl.col("rank") == 1).then(pl.col("median_return_bps") + 15.6),
        avg_return_bps_ci_low=pl.when(pl.col("rank") == 1).then(pl.lit(-1.0)),
        avg_return_bps_ci_high=pl.when(pl.col("rank") == 1).then(pl.lit(1234.0)),
    )
    row = {
        "run_id": RUN_ID,
        "n_policies": 4,
        "n_days": 31,
        "cscv_blocks": 8,
        "cscv_splits": 70,
        "pbo": 0.62,
        "logit_median": -0.4,
        "benchmark_policy_id": "b",
        "spa_pvalue": 0.31,
        "spa_pvalue_lower": 0.2,
        "spa_pvalue_upper": 0.4,
    }
    overfit = pl.DataFrame([row], schema=OVERFITTING_SCHEMA)
    month = {"alerts": alerts_frame(), "paths": paths_frame(), "frontier": frontier, "overfitting": overfit}
    write_month(runs, spec, "2024-01", month)
    page = html.unescape(render_html(load_run(runs, RUN_ID), build_sections(load_run(runs, RUN_ID))))
    assert (
        "<th>overfitting</th><td>PBO 0.62: the in-sample winner lands in the bottom half out of sample in 62 % "
        "of splits; SPA p = 0.31 against holding to the horizon: no policy reliably beats it</td>"
    ) in page
    assert "<th>median bps (95 % CI)</th><th>avg bps (95 % CI)</th>" in page
    assert "<td>100 (70 … 116)</td><td>105 (-1 … 1,234)</td>" in page  # rank 1; the others without
    assert "<td>-100</td><td>-95</td>" in page


def test_path_only_report_has_the_truth_charts_only(tmp_path):
    runs = tmp_path / "runs"
    spec = write_spec(runs, make_spec("path-only", window_to="2024-01-31"))
    write_month(runs, spec, "2024-01", {"alerts": alerts_frame(), "paths": paths_frame()})
    run = load_run(runs, RUN_ID)
    assert chart_keys(render_html(run, build_sections(run))) == ["window-callers", "window-time_to_2x"]


def test_a_run_without_its_spec_file_is_read_from_its_manifest(policy_run):
    (policy_run / "_specs" / f"{RUN_ID}.json").unlink()
    assert load_run(policy_run, RUN_ID).run_type == "policy"


def test_bad_run_id_unknown_run_and_no_completed_month_are_user_errors(tmp_path, policy_run):
    with pytest.raises(SpecError, match="run_id: expected a lowercase UUID4"):
        load_run(policy_run, "../etc")
    other = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"
    with pytest.raises(QuantlabError, match=f"run {other}: no such run"):
        load_run(policy_run, other)
    shutil.rmtree(policy_run / "2024-01")
    with pytest.raises(QuantlabError, match=r"no completed month .*2024-01: not started; 2024-02: running; missing"):
        load_run(policy_run, RUN_ID)


@pytest.mark.slow
def test_a_backtest_month_never_imports_matplotlib():
    """Charts are drawn by `quantlab report` only: loading the definitions (what runs a month) leaves
    matplotlib unimported, so it costs a backtest neither its import nor its drawing."""
    code = "import sys, quantlab_pipeline.definitions; print('matplotlib' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


# -- headless Chromium ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    return chromium_or_skip()


MEASURE = """Array.from(document.querySelectorAll('figure.chart')).map(f => {
  const g = f.querySelector(':scope > svg, :scope > img');
  const r = g ? g.getBoundingClientRect() : {width: 0, height: 0};
  return {id: f.id, width: r.width, height: r.height,
          marks: g ? g.querySelectorAll('path, rect, use, text, image').length : 0};
})"""


def render_in_chromium(chromium: str, page: Path, profile: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Load `page`; return each chart's drawn size and every error the page caused."""
    browser = Browser(chromium, profile)
    try:
        session = browser.open_page()
        browser.navigate(page.resolve().as_uri(), session)
        sizes = browser.evaluate(MEASURE, session)
    finally:
        browser.close()
    return sizes, browser.errors()


def assert_every_chart_draws(chromium: str, page: Path, profile: Path, expected: int) -> None:
    started = time.monotonic()
    sizes, errors = render_in_chromium(chromium, page, profile)
    assert errors == []
    assert len(sizes) == expected
    for chart in sizes:
        assert chart["width"] > 300 and chart["height"] > 150 and chart["marks"] > 20, chart
    assert time.monotonic() - started < 20


@pytest.mark.slow
def test_the_chromium_check_sees_blank_charts_errors_and_fetches(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        '<figure class="chart" id="x"><svg width="0" height="0"></svg></figure>'
        '<img src="https://example.invalid/x.png"><script>console.error("oops"); throw new Error("boom")</script>'
    )
    sizes, errors = render_in_chromium(chromium, page, tmp_path / "profile")
    assert sizes == [{"id": "x", "width": 0, "height": 0, "marks": 0}]
    assert "network request: https://example.invalid/x.png" in errors
    assert any("oops" in e for e in errors) and any("Uncaught" in e for e in errors)


@pytest.mark.slow
def test_hand_made_reports_draw_in_chromium_without_errors(chromium, tmp_path, policy_run, optimization_run):
    for name, runs, expected in (("policy", policy_run, 12), ("optimization", optimization_run, 3)):
        run = load_run(runs, RUN_ID)
        page = tmp_path / f"{name}.html"
        page.write_text(render_html(run, build_sections(run)), encoding="utf-8")
        assert_every_chart_draws(chromium, page, tmp_path / f"profile-{name}", expected)


# -- the CLI on a real run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_policy_run(tmp_path_factory, sample_db) -> tuple[Path, str]:
    """A policy backtest of 2024-01 on the sample data, through the CLI: (workdir, run id)."""
    workdir = tmp_path_factory.mktemp("report_cli")
    (workdir / "data").mkdir()
    shutil.copy(sample_db, workdir / "data" / "alerts.duckdb")
    proc = run_cli(
        [
            "backtest",
            "policy",
            "--calls-from-duckdb",
            "data/alerts.duckdb",
            "--policy-id",
            "fixed-stop-5pct",
            "--policy",
            '{"kind":"fixed_stop","stop_loss_bps":500}',
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-31",
        ],
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"run_id\S*:?\s+([0-9a-f-]{36})", proc.stdout)
    assert match, proc.stdout
    assert f"Charts: quantlab report {match.group(1)}\n" in proc.stdout  # drawn on demand, not in the backtest
    return workdir, match.group(1)


@pytest.mark.slow
def test_cli_report_writes_the_page_and_fails_in_one_line(real_policy_run):
    workdir, run_id = real_policy_run
    proc = run_cli(["report", run_id], cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = workdir / "runs" / "reports" / f"{run_id}.html"
    assert f"Wrote {page}" in proc.stdout and "(6 charts: the whole window)" in proc.stdout
    # the portfolio is on by default: its equity curve comes first
    assert chart_keys(page.read_text()) == [f"window-{k}" for k in ["equity", *TRADE_CHARTS, *TRUTH_CHARTS]]

    out = workdir / "elsewhere" / "r.html"
    proc = run_cli(["report", run_id, "--out", str(out), "--runs-dir", "runs"], cwd=workdir)
    assert proc.returncode == 0 and out.read_text() == page.read_text()

    # Killed just before the new page is renamed into place: the previous page is still whole.
    before = page.read_bytes()
    proc = run_cli(["report", run_id], cwd=workdir, env_extra={"QUANTLAB_FAULT": f"KILL:{run_id}.html"})
    assert proc.returncode != 0 and page.read_bytes() == before

    for args, needle in (
        (["report", "not-a-uuid"], "run_id: expected a lowercase UUID4"),
        (["report", RUN_ID], "no such run"),
        (["report", run_id, "--runs-dir", "nowhere"], "no such run"),
    ):
        proc = run_cli(args, cwd=workdir)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr


@pytest.mark.slow
def test_cli_report_draws_in_chromium_without_errors(chromium, real_policy_run, tmp_path):
    workdir, run_id = real_policy_run
    out = tmp_path / "report.html"
    proc = run_cli(["report", run_id, "--out", str(out)], cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_every_chart_draws(chromium, out, tmp_path / "profile", expected=6)
