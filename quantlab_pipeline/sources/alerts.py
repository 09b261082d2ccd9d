"""The alerts source: a DuckDB table (default `alerts`) of the user's database (docs/inputs.md "Inputs").

The query derives missing call ids and ranks repeats over the whole table; `core.inputs` then
splits valid rows from skipped ones. A bad source is one `InputError` naming file, table, column.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import polars as pl

from quantlab_pipeline.core.errors import InputError, first_line
from quantlab_pipeline.core.inputs import (
    DEFAULT_CALLER,
    DEFAULT_CHAIN,
    DERIVED_CALL_ID_PREFIX,
    AlertsInput,
    alerts_input,
)
from quantlab_pipeline.core.spec import validate_identifier
from quantlab_pipeline.sources.duckdb import (
    ColumnRules,
    check_columns,
    connect_read_only,
    is_integer,
    is_varchar,
    table_columns,
)

_REQUIRED: ColumnRules = {"mint": ("VARCHAR", is_varchar), "alert_ts_ms": ("an integer type", is_integer)}
_OPTIONAL: ColumnRules = {
    "call_id": ("VARCHAR", is_varchar),
    "caller_name": ("VARCHAR", is_varchar),
    "chain": ("VARCHAR", is_varchar),
}


def _open(path: str, table: str) -> tuple[duckdb.DuckDBPyConnection, dict[str, str]]:
    """A read-only connection and the table's columns, once the table is known to be usable."""
    validate_identifier(table, field="alerts_table")
    con = connect_read_only(path, "alerts database")
    try:
        columns = table_columns(con, table)
        where = f"alerts database {path}, table {table}"
        if not columns:
            raise InputError(f"{where}: table not found")
        check_columns(columns, where, _REQUIRED, _OPTIONAL)
    except BaseException:
        con.close()
        raise
    return con, columns


def check_alerts_source(path: str, table: str = "alerts") -> None:
    """Raise `InputError` (one line naming file, table, column) unless the alerts table is usable:
    an empty table is refused, a month of a non-empty one may hold no calls (docs/inputs.md)."""
    con, _ = _open(path, table)
    try:
        # `table` is a checked identifier (`validate_identifier`).
        if con.execute(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 1)").fetchone() == (0,):
            raise InputError(f"alerts database {path}, table {table}: no rows (an alerts table with no calls)")
    except duckdb.Error as exc:
        raise InputError(f"alerts database {path}, table {table}: {first_line(exc)}") from None
    finally:
        con.close()


def read_alerts(
    path: str,
    table: str = "alerts",
    *,
    start_ms: int,
    end_ms: int,
    callers: Sequence[str] = (),
    chains: Sequence[str] = (),
    include_null_ts: bool = False,
) -> AlertsInput:
    """The alerts with `start_ms <= alert_ts_ms < end_ms` (and the caller/chain filters).

    A missing `call_id` is derived from (mint, alert_ts_ms, caller_name), so it is the same in
    every month and every run. Duplicates of a `call_id` are judged over the whole table — the
    earliest valid alert of an id is kept, ties broken by mint, caller, chain — so a repeat in a
    later month is still a repeat. Rows with a null `alert_ts_ms` belong to no month; they are
    reported (and counted) only when `include_null_ts`.
    """
    con, columns = _open(path, table)

    def col(name: str, default_sql: str) -> str:
        return name if name in columns else default_sql

    # `table` is a checked identifier (`validate_identifier`); every value is a bound parameter.
    query = f"""
        WITH src AS (
            SELECT mint, CAST(alert_ts_ms AS BIGINT) AS alert_ts_ms,
                   coalesce({col("caller_name", "NULL")}, $default_caller) AS caller_name,
                   coalesce({col("chain", "NULL")}, $default_chain) AS chain,
                   {col("call_id", "NULL::VARCHAR")} AS given_id
            FROM {table}
        ), ided AS (
            SELECT *, (mint IS NULL OR alert_ts_ms IS NULL) AS has_null,
                   coalesce(given_id, CASE WHEN mint IS NOT NULL AND alert_ts_ms IS NOT NULL THEN
                       $prefix || left(sha256(concat_ws(chr(31), mint, alert_ts_ms::VARCHAR, caller_name)), 32)
                   END) AS call_id
            FROM src
        ), ranked AS (
            SELECT *,
                   row_number() OVER w AS rank_in_id,
                   first_value(alert_ts_ms) OVER w AS kept_ts_ms
            FROM ided
            WINDOW w AS (PARTITION BY call_id, has_null ORDER BY alert_ts_ms, mint, caller_name, chain)
        )
        SELECT call_id, mint, caller_name, chain, alert_ts_ms,
               strftime(epoch_ms(alert_ts_ms), '%Y-%m-%dT%H:%M:%S.%gZ') AS created_at,
               has_null, rank_in_id, kept_ts_ms
        FROM ranked
        WHERE ((alert_ts_ms >= $start_ms AND alert_ts_ms < $end_ms) OR ($include_null_ts AND alert_ts_ms IS NULL))
          AND (len($callers) = 0 OR list_contains($callers, caller_name))
          AND (len($chains) = 0 OR list_contains($chains, chain))
        ORDER BY alert_ts_ms NULLS LAST, call_id
    """
    params = {
        "default_caller": DEFAULT_CALLER,
        "default_chain": DEFAULT_CHAIN,
        "prefix": DERIVED_CALL_ID_PREFIX,
        "start_ms": int(start_ms),
        "end_ms": int(end_ms),
        "include_null_ts": bool(include_null_ts),
        "callers": [str(c) for c in callers],
        "chains": [str(c) for c in chains],
    }
    try:
        rows = pl.DataFrame(con.sql(query, params=params).to_arrow_table())
    except duckdb.Error as exc:
        raise InputError(f"alerts database {path}, table {table}: {first_line(exc)}") from None
    finally:
        con.close()
    return alerts_input(rows)


def count_alerts(path: str, table: str = "alerts", *, start_ms: int, end_ms: int) -> int:
    """How many rows of the table have `start_ms <= alert_ts_ms < end_ms`: an upper bound on a
    month's entries (duplicates and filters not yet applied), cheap enough to check a request with."""
    con, _ = _open(path, table)
    # `table` is a checked identifier (`validate_identifier`); the bounds are bound parameters.
    query = f"SELECT count(*) FROM {table} WHERE alert_ts_ms >= $start_ms AND alert_ts_ms < $end_ms"
    try:
        rows = con.sql(query, params={"start_ms": int(start_ms), "end_ms": int(end_ms)}).fetchall()
    except duckdb.Error as exc:
        raise InputError(f"alerts database {path}, table {table}: {first_line(exc)}") from None
    finally:
        con.close()
    return int(rows[0][0])
