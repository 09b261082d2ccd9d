"""The catalog's portfolio columns (docs/catalog.md, "The portfolio's figures"): each policy run-month
with a portfolio carries its `results/portfolio.parquet` row as `portfolio_*` columns, so runs rank
by drawdown in SQL; the step's time is `timing_portfolio_ms`, the three artifacts' bytes are rows of
`artifacts`.

Hand-written runs (figures chosen, so every expected value is the one written):
- run A, policy, 2024-01..2024-02: January's row capital 1000, equity_end 1100, max_drawdown 0.05;
  February's (the whole window) equity_end 900, total_return -0.1, max_drawdown 0.25, sharpe -1.5,
  sortino null, exposure 0.4, max_open 5, taken 12, skipped for cash 3, for the cap 2.
- run B, policy, 2024-01 only: equity_end 1050, max_drawdown 0.10.
- run C, policy, 2024-01..2024-02 with only January completed: max_drawdown 0.02 (not a whole window).
Ranked by the whole window's max drawdown, least first: B (0.10), A (0.25); C is left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pytest

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.core.portfolio import PORTFOLIO_SCHEMA
from quantlab_pipeline.storage.atomic import sha256_file
from quantlab_pipeline.storage.catalog import PUBLIC_RUN_COLUMNS, query_runs, sync_catalog
from quantlab_pipeline.storage.catalog.schema import PORTFOLIO_FIGURES
from quantlab_pipeline.storage.layout import ARTIFACT_PATHS
from quantlab_pipeline_tests.test_catalog import key, make_run, write_manifest

POLICY_ARTIFACTS = ("alerts", "paths", "trades", "summary", "equity", "positions")
FIGURES = [name for name, _, _ in PORTFOLIO_FIGURES]
A, B, C = (f"{c * 8}-0000-4000-8000-000000000000" for c in "abc")  # runs A, B, C of the docstring


def figures(**values) -> dict:
    base = dict.fromkeys(FIGURES)
    base |= {"capital": 1000.0, "total_return": 0.0, "max_drawdown": 0.0, "max_open_positions": 0}
    base |= {"calls_taken": 0, "calls_skipped_cash": 0, "calls_skipped_max_positions": 0}
    base |= values
    if base["equity_end"] is None:
        base["equity_end"] = 1000.0 * (1 + base["total_return"])
    return base


def rows_frame(*rows: dict) -> pl.DataFrame:
    """Rows of results/portfolio.parquet, typed as the portfolio step writes them."""
    return pl.DataFrame([{"run_id": "", "month": "", **r} for r in rows], schema=PORTFOLIO_SCHEMA)


def policy_month(
    runs: Path, month: str, run_id: str, window: tuple[str, str], row: dict | pl.DataFrame, portfolio_ms: int = 7
) -> Path:
    """A completed policy month whose spec has a portfolio; `row` written as results/portfolio.parquet."""
    run_dir = make_run(runs, month, run_id=run_id, run_type="policy", policy_id="stop-5", artifacts=POLICY_ARTIFACTS)
    frame = row if isinstance(row, pl.DataFrame) else rows_frame(row)
    frame = frame.with_columns(run_id=pl.lit(run_id), month=pl.lit(month))
    path = run_dir / ARTIFACT_PATHS["portfolio"]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    manifest = json.loads((run_dir / "run.json").read_text())
    manifest["spec"] |= {"window": {"from": window[0], "to": window[1]}, "portfolio": {"capital": 1000.0}}
    manifest["artifacts"]["portfolio"] = {
        "path": ARTIFACT_PATHS["portfolio"],
        "rows": frame.height,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "inputs": {},
    }
    manifest["timing"] |= {"equity_ms": 0, "positions_ms": 0, "portfolio_ms": portfolio_ms}
    write_manifest(run_dir, manifest, marker=True)
    return run_dir


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "catalog.duckdb"


def test_the_catalog_columns_are_the_portfolio_files(runs):
    assert {name: PORTFOLIO_SCHEMA[name] for name in FIGURES} == {
        name: pl.Float64 if sql == "DOUBLE" else pl.Int64 for name, sql, _ in PORTFOLIO_FIGURES
    }
    assert set(FIGURES) == set(PORTFOLIO_SCHEMA) - {"run_id", "month"}
    assert [c for c in PUBLIC_RUN_COLUMNS if c.startswith("portfolio_")] == [f"portfolio_{n}" for n in FIGURES]
    # one timing per step: the curve and the positions are written by the portfolio step, in its time
    timings = [c for c in PUBLIC_RUN_COLUMNS if c.startswith("timing_")]
    assert "timing_portfolio_ms" in timings
    assert "timing_equity_ms" not in timings and "timing_positions_ms" not in timings


def test_each_policy_month_carries_its_window_to_date_row(runs, db):
    window = ("2024-01-01", "2024-02-29")
    january = figures(equity_end=1100.0, total_return=0.1, max_drawdown=0.05, calls_taken=4)
    february = figures(
        total_return=-0.1,
        max_drawdown=0.25,
        sharpe=-1.5,
        exposure=0.4,
        max_open_positions=5,
        calls_taken=12,
        calls_skipped_cash=3,
        calls_skipped_max_positions=2,
    )
    jan_dir = policy_month(runs, "2024-01", A, window, january, portfolio_ms=7)
    feb_dir = policy_month(runs, "2024-02", A, window, february, portfolio_ms=9)
    path_only = make_run(runs, "2024-01")
    sync_catalog(db, runs)

    rows = {(r["run_id"], r["month"]): r for r in query_runs(db)}
    feb = rows[(A, "2024-02")]
    assert {n: feb[f"portfolio_{n}"] for n in FIGURES} == {
        "capital": 1000.0,
        "equity_end": 900.0,
        "total_return": -0.1,
        "max_drawdown": 0.25,
        "sharpe": -1.5,
        "sortino": None,
        "exposure": 0.4,
        "max_open_positions": 5,
        "calls_taken": 12,
        "calls_skipped_cash": 3,
        "calls_skipped_max_positions": 2,
    }
    jan = rows[(A, "2024-01")]
    assert [jan[f"portfolio_{n}"] for n in ("equity_end", "max_drawdown", "calls_taken")] == [1100.0, 0.05, 4]
    assert (jan["timing_portfolio_ms"], feb["timing_portfolio_ms"]) == (7, 9)
    assert jan["timing_total_ms"] == 52  # the fixture's total (alerts 12 + paths 40), as run.json records it
    other = rows[key(path_only)]
    assert all(other[f"portfolio_{n}"] is None for n in FIGURES) and other["timing_portfolio_ms"] is None

    with duckdb.connect(str(db), read_only=True) as conn:
        arts = conn.execute(
            "SELECT month, artifact_type, rows, bytes FROM artifacts WHERE run_id = ? "
            "AND artifact_type IN ('equity', 'positions', 'portfolio') ORDER BY month, artifact_type",
            [A],
        ).fetchall()
    expected = [
        (d.parent.name, kind, 1 if kind == "portfolio" else 3, (d / ARTIFACT_PATHS[kind]).stat().st_size)
        for d in (jan_dir, feb_dir)
        for kind in ("equity", "portfolio", "positions")
    ]
    assert arts == expected


def test_policy_runs_rank_by_the_whole_windows_drawdown_in_sql(runs, db):
    """The query of docs/catalog.md, as written there."""
    two_months, one_month = ("2024-01-01", "2024-02-29"), ("2024-01-01", "2024-01-31")
    policy_month(runs, "2024-01", A, two_months, figures(max_drawdown=0.05, equity_end=1100.0))
    policy_month(runs, "2024-02", A, two_months, figures(max_drawdown=0.25, total_return=-0.1, sharpe=-1.5))
    policy_month(runs, "2024-01", B, one_month, figures(max_drawdown=0.10, total_return=0.05, sharpe=2.0))
    policy_month(runs, "2024-01", C, two_months, figures(max_drawdown=0.02))
    sync_catalog(db, runs)
    doc = (Path(__file__).parents[1] / "docs" / "catalog.md").read_text()
    blocks = [block.split("```", 1)[0] for block in doc.split("```sql\n")[1:]]
    [sql] = [block for block in blocks if "portfolio_max_drawdown" in block]
    with duckdb.connect(str(db), read_only=True) as conn:
        ranked = conn.execute(sql).fetchall()
    assert [(r[0], r[2]) for r in ranked] == [(B, "2024-01"), (A, "2024-02")]
    assert [r[3:6] for r in ranked] == [(0.10, 0.05, 2.0), (0.25, -0.1, -1.5)]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (rows_frame(figures(), figures()), "2 rows, expected 1"),
        (rows_frame(figures()).drop("sharpe"), "no column 'sharpe'"),
        (
            rows_frame(figures()).with_columns(pl.col("calls_taken").cast(pl.Float64)),
            "column 'calls_taken' has type Float64, expected int64",
        ),
    ],
)
def test_a_portfolio_file_that_is_not_one_row_of_figures_is_rejected(runs, db, frame, reason):
    run_dir = policy_month(runs, "2024-01", A, ("2024-01-01", "2024-01-31"), frame)
    report = sync_catalog(db, runs)
    [(where, why)] = report.rejected
    assert where == str(run_dir.resolve())
    assert why.startswith(f"artifact portfolio: results/portfolio.parquet: {reason}")
    assert query_runs(db) == []


def test_a_catalog_of_the_previous_version_is_refused_in_one_line(runs, db):
    """A version-2 catalog has no portfolio columns: refused, as any other version; it is derived,
    so deleting it and syncing again rebuilds it with them."""
    make_run(runs)
    sync_catalog(db, runs)
    with duckdb.connect(str(db)) as conn:
        conn.execute("UPDATE catalog_meta SET value = '2'")
    with pytest.raises(QuantlabError, match=r"schema version '2', this quantlab uses '4'.*delete it") as err:
        sync_catalog(db, runs)
    assert "\n" not in str(err.value)
    db.unlink()
    assert len(sync_catalog(db, runs).registered) == 1
