"""The headline numbers each materialization carries, as a researcher reads them: rates as
percentages, returns in whole-ish bps, and a Markdown table on `summary` and `frontier`, with
where the run's HTML report goes and the command that writes it (docs/reports.md).

The CLI's closing table reads the same keys, so the terminal and the UI always agree. No
pictures: charts belong to the report, off the backtest's path, and every byte here is stored
in the instance once per run-month.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from dagster import MetadataValue

from quantlab_pipeline.core import display
from quantlab_pipeline.storage.layout import report_command, report_path


def percent(rate: float | None) -> float | None:
    """A rate in [0, 1] as a percentage with one decimal: 0.3297… → 33.0."""
    return None if rate is None else round(100 * rate, 1)


def rounded_bps(value: float | None) -> float | None:
    """bps to one decimal: -580.0000000000005 → -580.0."""
    return None if value is None else round(value, 1)


def _mean(frame: pl.DataFrame, expr: pl.Expr) -> float | None:
    return frame.select(expr.cast(pl.Float64).mean()).item() if frame.height else None


def _median(frame: pl.DataFrame, expr: pl.Expr) -> float | None:
    return frame.select(expr.cast(pl.Float64).median()).item() if frame.height else None


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def paths_headline(frame: pl.DataFrame, excluded: int) -> dict[str, Any]:
    return {
        "calls_processed": frame.height,
        "excluded": excluded,
        "hit_2x_pct": percent(_mean(frame, pl.col("hit_2x"))),
        "median_peak_multiple": None if frame.height == 0 else round(_median(frame, pl.col("peak_multiple")) or 0.0, 2),
    }


def trades_headline(frame: pl.DataFrame) -> dict[str, Any]:
    reasons = dict(frame.group_by("exit_reason").len().sort("exit_reason").iter_rows()) if frame.height else {}
    ret = pl.col("realized_return_bps")
    return {
        "avg_return_bps": rounded_bps(_mean(frame, ret)),
        "median_return_bps": rounded_bps(_median(frame, ret)),
        "stop_out_pct": percent(_mean(frame, pl.col("stop_out"))),
        "win_pct": percent(_mean(frame, ret > 0)),
        "exit_reasons": MetadataValue.json(reasons),
    }


def report_link(runs_dir: Path, run_id: str) -> dict[str, Any]:
    """Where the run's HTML report is (or goes: `quantlab report` writes it) and how to write it."""
    return {
        "report": MetadataValue.path(str(report_path(runs_dir, run_id).resolve())),
        "report_command": MetadataValue.text(report_command(runs_dir, run_id)),
    }


def summary_headline(row: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    headline = {
        "trades_count": row["trades_count"],
        "avg_return_bps": rounded_bps(row["avg_return_bps"]),
        "median_return_bps": rounded_bps(row["median_return_bps"]),
        "stop_out_pct": percent(row["stop_out_rate"]),
        "win_pct": percent(row["win_rate"]),
        "median_return_bps_ci": display.bps_interval(row["median_return_bps_ci_low"], row["median_return_bps_ci_high"]),
    }
    table = _table(
        (
            "calls",
            "excluded",
            "trades",
            "avg bps (95 % CI)",
            "median bps (95 % CI)",
            "p25 / p75 bps",
            "stop-out",
            "win rate",
            "tail capture",
        ),
        [
            (
                display.num(row["calls_processed"]),
                display.num(row["calls_excluded"]),
                display.num(row["trades_count"]),
                f"{display.bps(row['avg_return_bps'])} "
                f"({display.bps_interval(row['avg_return_bps_ci_low'], row['avg_return_bps_ci_high'])})",
                f"{display.bps(row['median_return_bps'])} "
                f"({display.bps_interval(row['median_return_bps_ci_low'], row['median_return_bps_ci_high'])})",
                f"{display.bps(row['p25_return_bps'])} / {display.bps(row['p75_return_bps'])}",
                display.pct(row["stop_out_rate"]),
                display.pct(row["win_rate"]),
                display.num(row["median_tail_capture"]),
            )
        ],
    )
    return {**headline, "headline": MetadataValue.md(table), **report}


FRONTIER_TOP = 10  # policies listed in the frontier's Markdown table


def frontier_headline(frame: pl.DataFrame, report: dict[str, Any]) -> dict[str, Any]:
    overall = frame.filter(pl.col("caller_name").is_null()).sort("rank")
    headline: dict[str, Any] = {
        "policies": overall.height,
        "feasible_policies": int(overall.get_column("meets_constraints").sum()),
    }
    if overall.height:
        best = overall.row(0, named=True)
        headline.update(
            best_policy_id=best["policy_id"],
            best_policy=best["policy_params"],
            best_objective_score=rounded_bps(best["objective_score"]),
        )
    rows = [(rank, f"`{policy}`", *rest) for rank, policy, *rest in display.frontier_rows(frame, FRONTIER_TOP)]
    return {**headline, "headline": MetadataValue.md(_table(display.FRONTIER_COLUMNS, rows)), **report}


def overfitting_headline(row: dict[str, Any], sentence: str) -> dict[str, Any]:
    """PBO and SPA of the month (docs/confidence.md), and the sentence a researcher reads."""
    return {
        "pbo": None if row["pbo"] is None else round(row["pbo"], 3),
        "spa_pvalue": row["spa_pvalue"],
        "cscv_splits": row["cscv_splits"],
        "n_days": row["n_days"],
        "benchmark_policy_id": row["benchmark_policy_id"],
        "sentence": sentence,
    }


def features_headline(frame: pl.DataFrame) -> dict[str, Any]:
    """How much history the calls had: the share with a 24 h return and with a prior caller record."""
    return {
        "calls": frame.height,
        "with_24h_history_pct": percent(_mean(frame, pl.col("ret_24h_bps").is_not_null())),
        "with_caller_record_pct": percent(_mean(frame, pl.col("caller_prior_resolved") > 0)),
        "median_ret_1h_bps": rounded_bps(_median(frame, pl.col("ret_1h_bps"))),
    }


def walkforward_headline(frame: pl.DataFrame) -> dict[str, Any]:
    """The all-callers selection of a tested month: what was chosen, its score in and out of sample."""
    overall = frame.filter(pl.col("caller_name").is_null())
    if overall.height == 0:
        return {"tested": False}
    row = overall.row(0, named=True)
    return {
        "tested": True,
        "train_months": row["train_months"],
        "selected_policy_id": row["policy_id"],
        "selected_policy": row["policy_params"],
        "in_sample_score": rounded_bps(row["is_objective_score"]),
        "out_of_sample_score": rounded_bps(row["oos_objective_score"]),
        "score_gap": rounded_bps(row["score_gap"]),
        "train_pbo": None if row.get("train_pbo") is None else round(row["train_pbo"], 3),
    }


def portfolio_headline(row: dict[str, Any]) -> dict[str, Any]:
    """The window-to-date account (docs/portfolio.md): equity and return, drawdown, ratios, calls."""
    headline = {
        "equity_end": round(row["equity_end"], 2),
        "total_return_pct": percent(row["total_return"]),
        "max_drawdown_pct": percent(row["max_drawdown"]),
        "sharpe": None if row["sharpe"] is None else round(row["sharpe"], 2),
        "sortino": None if row["sortino"] is None else round(row["sortino"], 2),
        "exposure_pct": percent(row["exposure"]),
        "max_open_positions": row["max_open_positions"],
        "calls_taken": row["calls_taken"],
        "calls_skipped_cash": row["calls_skipped_cash"],
        "calls_skipped_max_positions": row["calls_skipped_max_positions"],
    }
    table = _table(
        (
            "capital",
            "equity",
            "return",
            "max drawdown",
            "Sharpe",
            "Sortino",
            "exposure",
            "taken",
            "skipped (cash / cap)",
        ),
        [
            (
                display.num(row["capital"]),
                display.num(row["equity_end"]),
                display.pct(row["total_return"]),
                display.pct(row["max_drawdown"]),
                display.num(row["sharpe"]),
                display.num(row["sortino"]),
                display.pct(row["exposure"]),
                display.num(row["calls_taken"]),
                f"{display.num(row['calls_skipped_cash'])} / {display.num(row['calls_skipped_max_positions'])}",
            )
        ],
    )
    return {**headline, "headline": MetadataValue.md(f"Window to date:\n\n{table}")}
