"""`quantlab sample-data`: write a deterministic, messy sample alerts/candles DuckDB file."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.table import Table

from quantlab_pipeline.cli.console import console, ok, user_errors
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.spec import MONTH_RE, month_bounds, months_between
from quantlab_pipeline.sources.sample_db import generate_sample_data


def parse_month_range(text: str) -> list[str]:
    """`YYYY-MM..YYYY-MM` (inclusive) or a single `YYYY-MM`."""
    first, sep, last = text.strip().partition("..")
    if not sep:
        last = first
    if not (MONTH_RE.match(first) and MONTH_RE.match(last)):
        raise SpecError(f"--months: expected YYYY-MM or YYYY-MM..YYYY-MM, got {text!r}")
    if last < first:
        raise SpecError(f"--months: the range ends ({last}) before it starts ({first})")
    return months_between(month_bounds(first)[0], month_bounds(last)[0])


def _positive_int(text: str, flag: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SpecError(f"{flag}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise SpecError(f"{flag}: must be at least {minimum}, got {value}")
    return value


@click.command("sample-data")
@click.option("--out", default="data/alerts.duckdb", show_default=True, help="DuckDB file to write (replaced).")
@click.option("--months", default="2024-01..2024-03", show_default=True, help="YYYY-MM..YYYY-MM or one YYYY-MM.")
@click.option("--alerts-per-month", default="300", show_default=True, metavar="N", help="Alert rows per month (>= 10).")
@click.option("--seed", default="7", show_default=True, metavar="N", help="Same seed, same data.")
@user_errors
def sample_data(out: str, months: str, alerts_per_month: str, seed: str) -> None:
    """Write sample `alerts` and `ohlcv_candles` tables, with the mess real data has."""
    month_list = parse_month_range(months)
    per_month = _positive_int(alerts_per_month, "--alerts-per-month", 10)
    seed_value = _positive_int(seed, "--seed", 0)
    started = time.perf_counter()
    summary = generate_sample_data(Path(out), months=month_list, alerts_per_month=per_month, seed=seed_value)
    elapsed = time.perf_counter() - started

    table = Table(title="Sample data", title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    table.add_row("alerts", f"{summary.alert_rows:,}")
    table.add_row("ohlcv_candles", f"{summary.candle_rows:,}")
    console.print(table)
    span = month_list[0] if len(month_list) == 1 else f"{month_list[0]}..{month_list[-1]}"
    console.print(
        f"months: {span} ({len(month_list)}), tokens: {summary.tokens:,}, callers: {summary.callers}, seed: {seed_value}"
    )
    ok(f"Wrote {summary.path} in {elapsed:.1f}s")
