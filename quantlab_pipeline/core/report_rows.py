"""The report's tables as text (docs/reports.md): the run's spec, and a section's headline numbers
computed as in `results/summary.parquet` and, for the portfolio, as `results/portfolio.parquet`
holds them. Pure: the page (`report/`) lays them out; this says what they are."""

from __future__ import annotations

import json

import polars as pl

from quantlab_pipeline.core.display import bps_text, hours, multiple, num, pct
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.core.summary import trade_stats, truth_stats


def spec_rows(spec: RunSpec) -> dict[str, str]:
    """What the run was asked to do, one label per row."""
    rows = {
        "run id": spec.run_id,
        "run type": spec.run_type,
        "window": f"{spec.window.from_ or '…'} to {spec.window.to or '…'}",
        "interval / horizon": f"{spec.interval} / {spec.horizon}",
        "alerts": spec.source.alerts,
        "candles": spec.source.candles_source,
        "created": spec.created_at,
    }
    if spec.policy_id:
        rows["policy"] = f"{spec.policy_id}: {json.dumps(spec.policy)}"
    if spec.run_type == "policy":
        rows["fees + slippage"] = f"{spec.execution.fee_bps:g} + {spec.execution.slippage_bps:g} bps per side"
    if spec.run_type == "policy" and (account := spec.portfolio) is not None:
        spend = f"{num(account.position_size)}" if account.position_fraction is None else pct(account.position_fraction)
        cap = "no cap" if account.max_positions is None else f"at most {account.max_positions:,} open"
        rows["portfolio"] = f"capital {num(account.capital)}, {spend} per entry, {cap}"
    if spec.provenance.git_commit:
        rows["git commit"] = f"{spec.provenance.git_commit}{' (dirty)' if spec.provenance.git_dirty else ''}"
    return rows


def headline_rows(
    run_type: str,
    alerts: pl.DataFrame | None,
    paths: pl.DataFrame | None,
    trades: pl.DataFrame | None,
    portfolio: pl.DataFrame | None = None,
) -> dict[str, str]:
    """A section's numbers; the portfolio's are its last month's row: the window to that month."""
    rows = {} if alerts is None else {"valid alerts": f"{alerts.height:,}"}
    if paths is not None:
        t = truth_stats(paths)
        rows |= {"calls with an entry": f"{t['calls']:,}", "2x hit rate": pct(t["hit_rate_2x"])}
        rows |= {"median peak multiple": multiple(t["median_peak_multiple"])}
        rows |= {"median time to 2x": hours(t["median_hours_to_2x"])}
    if run_type == "policy" and trades is not None:
        s = trade_stats(trades)
        rows |= {"trades": f"{trades.height:,}", "median return": bps_text(s["median_return_bps"])}
        rows |= {"mean return": bps_text(s["avg_return_bps"]), "win rate": pct(s["win_rate"])}
        rows |= {"stop-out rate": pct(s["stop_out_rate"]), "p95 MAE": bps_text(s["p95_mae_bps"])}
    if run_type == "policy" and portfolio is not None and portfolio.height:
        p = portfolio.row(-1, named=True)
        to_date = f" (window to {p['month']})"
        rows |= {f"equity end{to_date}": num(p["equity_end"]), "total return": pct(p["total_return"])}
        rows |= {"max drawdown": pct(p["max_drawdown"])}
        rows |= {"Sharpe / Sortino": f"{num(p['sharpe'])} / {num(p['sortino'])}"}
        rows |= {"exposure": pct(p["exposure"]), "max open positions": num(p["max_open_positions"])}
        skipped = f"{num(p['calls_skipped_cash'])} for cash, {num(p['calls_skipped_max_positions'])} for the cap"
        rows |= {"calls taken": num(p["calls_taken"]), "calls skipped": skipped}
    return rows
