"""`quantlab sample-data`'s file: the generated sample tables (`core.sample_data`) as one DuckDB
database with the `alerts` and `ohlcv_candles` tables of docs/inputs.md "Inputs", replaced atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from quantlab_pipeline.core.sample_data import CALLERS, generate_sample_tables
from quantlab_pipeline.sources.duckdb import DuckDBConfig

ALERTS_DDL = (
    "CREATE TABLE alerts (call_id VARCHAR, mint VARCHAR, caller_name VARCHAR, chain VARCHAR, alert_ts_ms BIGINT)"
)
CANDLES_DDL = (
    "CREATE TABLE ohlcv_candles (mint VARCHAR, chain VARCHAR, interval VARCHAR, ts_ms BIGINT, "
    "open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE)"
)
# DuckDB keeps every block it wrote cached up to its memory limit (default: 80 % of RAM), so the
# process grew with the file (6 months: 9.1 GB). The blocks are on disk once written: a small
# cache bounds memory by one block of tokens (docs/performance.md "A year of sample data").
_DUCKDB_CONFIG: DuckDBConfig = {"memory_limit": "256MB"}


@dataclass(frozen=True)
class SampleDataSummary:
    """What was written, for the CLI's table."""

    path: Path
    months: tuple[str, ...]
    alert_rows: int
    candle_rows: int
    tokens: int
    callers: int


def _insert_candles(con: duckdb.DuckDBPyConnection, block: pa.Table, interval: str) -> None:
    con.register("candle_block", block)
    con.execute(
        "INSERT INTO ohlcv_candles SELECT mint::VARCHAR, chain::VARCHAR, ?, ts_ms, open, high, low, close, volume "
        "FROM candle_block",
        [interval],
    )
    con.unregister("candle_block")


def generate_sample_data(
    out: Path, *, months: list[str], alerts_per_month: int, seed: int, interval: str = "5m"
) -> SampleDataSummary:
    """Write `alerts` and `ohlcv_candles` to the DuckDB file `out`, replacing it atomically.

    The same arguments always produce the same rows. The file is built under a temporary name and
    renamed, so a reader never sees a half-written database and an interruption leaves none. The
    candles are generated and appended a block of tokens at a time, so memory does not grow with
    the months (docs/performance.md "A year of sample data").
    """
    tables = generate_sample_tables(months, alerts_per_month=alerts_per_month, seed=seed, interval=interval)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    for leftover in (tmp, Path(f"{tmp}.wal")):
        leftover.unlink(missing_ok=True)
    try:
        con = duckdb.connect(str(tmp), config=_DUCKDB_CONFIG)
        try:
            con.execute(ALERTS_DDL)
            con.register("alert_rows", tables.alerts)
            con.execute("INSERT INTO alerts SELECT * FROM alert_rows ORDER BY alert_ts_ms NULLS LAST, call_id")
            con.unregister("alert_rows")
            con.execute(CANDLES_DDL)
            for block in tables.candle_blocks:
                _insert_candles(con, block, tables.interval)
            alert_rows = con.execute("SELECT count(*) FROM alerts").fetchall()[0][0]
            candle_rows = con.execute("SELECT count(*) FROM ohlcv_candles").fetchall()[0][0]
            con.execute("CHECKPOINT")
        finally:
            con.close()
        Path(f"{out}.wal").unlink(missing_ok=True)  # a stale log of the replaced file must not replay onto this one
        os.replace(tmp, out)
    except BaseException:
        for leftover in (tmp, Path(f"{tmp}.wal")):
            leftover.unlink(missing_ok=True)
        raise
    return SampleDataSummary(
        path=out,
        months=tables.months,
        alert_rows=int(alert_rows),
        candle_rows=int(candle_rows),
        tokens=tables.tokens,
        callers=len(CALLERS),
    )
