"""What every DuckDB source shares: opening a user's file read-only, and checking its columns.

Each failure is one `InputError` line naming the file, table and column (README "A first
backtest": bad input is one line naming the culprit, exit code 2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import duckdb

from quantlab_pipeline.core.errors import InputError, first_line

DuckDBConfig = dict[str, str | bool | int | float | list[str]]
# column -> (the type the error message names, the check of a DuckDB type name)
ColumnRules = Mapping[str, tuple[str, Callable[[str], bool]]]

_INTEGER_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
)
_FLOAT_TYPES = frozenset({"FLOAT", "DOUBLE"})


def is_integer(duck_type: str) -> bool:
    return duck_type in _INTEGER_TYPES


def is_number(duck_type: str) -> bool:
    return duck_type in _INTEGER_TYPES or duck_type in _FLOAT_TYPES or duck_type.startswith("DECIMAL")


def is_varchar(duck_type: str) -> bool:
    return duck_type == "VARCHAR"


def connect_read_only(path: str, what: str, config: DuckDBConfig | None = None) -> duckdb.DuckDBPyConnection:
    """Open an existing DuckDB file read-only, so other readers and a later writer are never
    blocked by a run; anything else is one line naming the file (`what` says which input it is)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {path}: file not found")
    if not p.is_file():
        raise InputError(f"{what} {path}: not a file")
    try:
        return duckdb.connect(str(p), read_only=True, config=config or {})
    except duckdb.Error as exc:
        raise InputError(f"{what} {path}: not a readable DuckDB database ({first_line(exc)})") from None


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """Lower-cased column name -> DuckDB type of a table or view in the main schema; {} if absent."""
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = 'main' AND lower(table_name) = lower(?) "
        "ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return {name.lower(): dtype for name, dtype in rows}


def check_columns(columns: Mapping[str, str], where: str, required: ColumnRules, optional: ColumnRules) -> None:
    """Raise `InputError` naming the first missing required column, or the first mistyped one."""
    for name, (expected, _) in required.items():
        if name not in columns:
            raise InputError(f"{where}: missing required column '{name}' ({expected})")
    for name, (expected, ok) in {**required, **optional}.items():
        if name in columns and not ok(columns[name]):
            raise InputError(f"{where}: column '{name}' is {columns[name]}, expected {expected}")
