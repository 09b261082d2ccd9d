"""Input readers and validation (DESIGN §2): the alerts of one partition and the candles it needs.

A bad *source* (missing file, table, column, wrong type, unreadable database) is one `InputError`
line naming the file, table and column. Bad *rows* never stop a run: they are skipped or dropped
and reported as `ErrorRecord`s.

Candles are the big input (§12: 28.8 M rows a month), so `read_candles` pushes mints, interval and
time range into the DuckDB query, selects a small integer mint index instead of the mint string,
streams Arrow batches, and groups, sorts, validates and de-duplicates them in numba passes.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numba
import numpy as np
import polars as pl
import pyarrow as pa

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.durations import interval_ms
from quantlab_pipeline.core.errors import ErrorRecord, InputError
from quantlab_pipeline.core.spec import validate_identifier

ALERT_COLUMNS: tuple[str, ...] = ("call_id", "mint", "caller_name", "chain", "alert_ts_ms", "created_at")
ALERTS_SCHEMA: dict[str, pl.DataType] = {
    "call_id": pl.String,
    "mint": pl.String,
    "caller_name": pl.String,
    "chain": pl.String,
    "alert_ts_ms": pl.Int64,
    "created_at": pl.String,
}
DEFAULT_CALLER = "unknown"
DEFAULT_CHAIN = "solana"
DERIVED_CALL_ID_PREFIX = "auto-"
CANDLES_TABLE = "ohlcv_candles"

_INTEGER_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
)
_FLOAT_TYPES = frozenset({"FLOAT", "DOUBLE"})
_NUMBER_COLUMNS = ("open", "high", "low", "close", "volume")
_BATCH_ROWS = 1 << 17
# DuckDB keeps every block it scanned cached up to its memory limit (default: 80 % of RAM). The
# candle scan streams, so a small cache costs no time and keeps that second copy out of memory.
_CANDLES_DUCKDB_CONFIG = {"memory_limit": "128MB"}


def _is_integer(duck_type: str) -> bool:
    return duck_type in _INTEGER_TYPES


def _is_number(duck_type: str) -> bool:
    return duck_type in _INTEGER_TYPES or duck_type in _FLOAT_TYPES or duck_type.startswith("DECIMAL")


def _is_varchar(duck_type: str) -> bool:
    return duck_type == "VARCHAR"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _connect_read_only(path: str, what: str, config: dict[str, str] | None = None) -> duckdb.DuckDBPyConnection:
    """Open an existing DuckDB file read-only; anything else is one line naming the file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {path}: file not found")
    if not p.is_file():
        raise InputError(f"{what} {path}: not a file")
    try:
        return duckdb.connect(str(p), read_only=True, config=config or {})
    except duckdb.Error as exc:
        raise InputError(f"{what} {path}: not a readable DuckDB database ({_first_line(exc)})") from None


def _table_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """Lower-cased column name -> DuckDB type of a table or view in the main schema; {} if absent."""
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = 'main' AND lower(table_name) = lower(?) "
        "ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return {name.lower(): dtype for name, dtype in rows}


_ColumnRule = dict[str, tuple[str, Callable[[str], bool]]]  # column -> (expected type, check)


def _check_columns(columns: dict[str, str], where: str, required: _ColumnRule, optional: _ColumnRule) -> None:
    for name, (expected, _) in required.items():
        if name not in columns:
            raise InputError(f"{where}: missing required column '{name}' ({expected})")
    for name, (expected, ok) in {**required, **optional}.items():
        if name in columns and not ok(columns[name]):
            raise InputError(f"{where}: column '{name}' is {columns[name]}, expected {expected}")


# -- alerts -----------------------------------------------------------------------------------

_ALERT_REQUIRED = {"mint": ("VARCHAR", _is_varchar), "alert_ts_ms": ("an integer type", _is_integer)}
_ALERT_OPTIONAL = {
    "call_id": ("VARCHAR", _is_varchar),
    "caller_name": ("VARCHAR", _is_varchar),
    "chain": ("VARCHAR", _is_varchar),
}


def _alerts_columns(path: str, table: str) -> tuple[duckdb.DuckDBPyConnection, dict[str, str]]:
    validate_identifier(table, field="alerts_table")
    con = _connect_read_only(path, "alerts database")
    try:
        columns = _table_columns(con, table)
        where = f"alerts database {path}, table {table}"
        if not columns:
            raise InputError(f"{where}: table not found")
        _check_columns(columns, where, _ALERT_REQUIRED, _ALERT_OPTIONAL)
    except BaseException:
        con.close()
        raise
    return con, columns


def check_alerts_source(path: str, table: str = "alerts") -> None:
    """Raise `InputError` (one line naming file, table, column) unless the alerts table is usable."""
    con, _ = _alerts_columns(path, table)
    con.close()


@dataclass(frozen=True)
class AlertsInput:
    """One partition's alerts: the valid, de-duplicated rows, and what was skipped and why."""

    frame: pl.DataFrame  # ALERT_COLUMNS, sorted by alert_ts_ms, call_id
    source_rows: int  # alert rows of the partition, valid + skipped
    errors: list[ErrorRecord] = field(default_factory=list)


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
    con, columns = _alerts_columns(path, table)

    def col(name: str, default_sql: str) -> str:
        return name if name in columns else default_sql

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
        rows = pl.from_arrow(con.sql(query, params=params).to_arrow_table())
    except duckdb.Error as exc:
        raise InputError(f"alerts database {path}, table {table}: {_first_line(exc)}") from None
    finally:
        con.close()

    skipped = rows.filter(pl.col("has_null") | (pl.col("rank_in_id") > 1))
    errors = [_skipped_alert_error(row) for row in skipped.iter_rows(named=True)]
    valid = rows.filter(~pl.col("has_null") & (pl.col("rank_in_id") == 1))
    frame = valid.select(ALERT_COLUMNS).cast(ALERTS_SCHEMA)
    return AlertsInput(frame=frame, source_rows=rows.height, errors=errors)


def _skipped_alert_error(row: dict) -> ErrorRecord:
    if row["has_null"]:
        missing = " and ".join(name for name in ("mint", "alert_ts_ms") if row[name] is None)
        return ErrorRecord(
            level="warning",
            phase="inputs",
            reason="null_field",
            message=f"alert skipped: null {missing}",
            call_id=row["call_id"],
            mint=row["mint"],
            details={"null_fields": missing.split(" and ")},
        )
    return ErrorRecord(
        level="warning",
        phase="inputs",
        reason="duplicate_call",
        message=f"alert skipped: call_id {row['call_id']} repeats the alert at {row['kept_ts_ms']} (the earliest is kept)",
        call_id=row["call_id"],
        mint=row["mint"],
        details={"kept_alert_ts_ms": row["kept_ts_ms"], "alert_ts_ms": row["alert_ts_ms"]},
    )


# -- candles ----------------------------------------------------------------------------------

_CANDLE_REQUIRED = {
    "mint": ("VARCHAR", _is_varchar),
    "interval": ("VARCHAR", _is_varchar),
    "ts_ms": ("an integer type", _is_integer),
    **{name: ("DOUBLE", _is_number) for name in _NUMBER_COLUMNS},
}


@dataclass(frozen=True)
class _CandleSource:
    """An open connection and the FROM item that reads the candles, with its bound parameters."""

    con: duckdb.DuckDBPyConnection
    from_sql: str
    params: dict[str, object]
    where: str  # names the source in error messages


def _is_parquet_file(path: Path) -> bool:
    if path.suffix.lower() == ".parquet":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError as exc:
        raise InputError(f"candles source {path}: unreadable ({exc.strerror})") from None


def _open_candles(source: str) -> _CandleSource:
    """DuckDB database with table `ohlcv_candles`, or Parquet file / directory / glob."""
    path = Path(source)
    is_glob = any(ch in source for ch in "*?[")
    if not is_glob and not path.exists():
        raise InputError(f"candles source {source}: no such file or directory")
    if is_glob or path.is_dir() or _is_parquet_file(path):
        pattern = str(path / "**" / "*.parquet") if path.is_dir() else source
        if not glob.glob(pattern, recursive=True):
            raise InputError(f"candles source {source}: no Parquet files found")
        con = duckdb.connect(config=_CANDLES_DUCKDB_CONFIG)
        from_sql = "read_parquet($files, hive_partitioning = true, hive_types_autocast = false, union_by_name = true)"
        src = _CandleSource(con, from_sql, {"files": pattern}, f"candles source {source}")
        try:
            rows = con.execute(f"DESCRIBE SELECT * FROM {from_sql}", src.params).fetchall()
        except duckdb.Error as exc:
            con.close()
            raise InputError(f"candles source {source}: unreadable Parquet ({_first_line(exc)})") from None
        columns = {name.lower(): dtype for name, dtype, *_ in rows}
    else:
        con = _connect_read_only(source, "candles database", _CANDLES_DUCKDB_CONFIG)
        src = _CandleSource(con, CANDLES_TABLE, {}, f"candles database {source}, table {CANDLES_TABLE}")
        columns = _table_columns(con, CANDLES_TABLE)
        if not columns:
            con.close()
            raise InputError(f"{src.where}: table not found")
    try:
        _check_columns(columns, src.where, _CANDLE_REQUIRED, {})
    except InputError:
        con.close()
        raise
    return src


def check_candles_source(source: str, *, interval: str | None = None) -> None:
    """Raise `InputError` unless the candle source is readable, has the columns, and (when given)
    holds candles of `interval` — a typo'd interval would otherwise silently exclude every alert."""
    src = _open_candles(source)
    try:
        if interval is not None:
            interval_ms(interval)
            found = src.con.execute(
                f"SELECT 1 FROM {src.from_sql} WHERE interval = $interval LIMIT 1", {**src.params, "interval": interval}
            ).fetchall()
            if not found:
                present = src.con.execute(
                    f"SELECT DISTINCT interval FROM {src.from_sql} ORDER BY 1 LIMIT 10", src.params
                ).fetchall()
                listed = ", ".join(str(r[0]) for r in present) or "none"
                raise InputError(f"{src.where}: no candles with interval '{interval}' (intervals present: {listed})")
    finally:
        src.con.close()


@dataclass(frozen=True)
class CandlesInput:
    candles: Candles
    errors: list[ErrorRecord] = field(default_factory=list)


@numba.njit(cache=True, nogil=True)
def _scatter_batch(k, ts, op, hi, lo, cl, vol, cursor, ends, o_ts, o_op, o_hi, o_lo, o_cl, o_vol):
    """Put each row of one fetched batch at the next free slot of its mint's group.

    Group sizes are known before the fetch, so every value is written once, straight into its
    final place: no growing arrays, no second pass to group. False if a group overflows (the
    source changed between the count and the fetch).
    """
    for i in range(k.shape[0]):
        g = k[i]
        p = cursor[g]
        if p >= ends[g]:
            return False
        o_ts[p] = ts[i]
        o_op[p] = op[i]
        o_hi[p] = hi[i]
        o_lo[p] = lo[i]
        o_cl[p] = cl[i]
        o_vol[p] = vol[i]
        cursor[g] = p + 1
    return True


@numba.njit(cache=True, nogil=True)
def _sort_groups(offsets, ts, op, hi, lo, cl, vol):
    """Sort each mint's rows by ts where they arrived out of order (rare: most sources are ordered)."""
    for g in range(offsets.shape[0] - 1):
        a = offsets[g]
        b = offsets[g + 1]
        ordered = True
        for i in range(a + 1, b):
            if ts[i] < ts[i - 1]:
                ordered = False
                break
        if ordered:
            continue
        order = np.argsort(ts[a:b], kind="mergesort") + a
        for col in (op, hi, lo, cl, vol):
            col[a:b] = col[order]
        ts[a:b] = ts[order]


@numba.njit(cache=True, nogil=True)
def _is_valid(o, h, l, c):
    # Together these imply every price is finite and > 0 (NaN fails every comparison).
    return l > 0.0 and h < np.inf and h >= o and h >= c and l <= o and l <= c


@numba.njit(cache=True, nogil=True)
def _better(i, j, op, hi, lo, cl, vol):
    """Whether row i beats row j among duplicates: highest volume, then a fixed order of prices so
    the winner never depends on the order rows arrived in."""
    vi = vol[i] if vol[i] == vol[i] else -np.inf
    vj = vol[j] if vol[j] == vol[j] else -np.inf
    if vi != vj:
        return vi > vj
    if op[i] != op[j]:
        return op[i] > op[j]
    if hi[i] != hi[j]:
        return hi[i] > hi[j]
    if lo[i] != lo[j]:
        return lo[i] > lo[j]
    return cl[i] > cl[j]


@numba.njit(cache=True, nogil=True)
def _same_row(i, j, op, hi, lo, cl, vol):
    return (
        op[i] == op[j]
        and hi[i] == hi[j]
        and lo[i] == lo[j]
        and cl[i] == cl[j]
        and (vol[i] == vol[j] or (vol[i] != vol[i] and vol[j] != vol[j]))
    )


@numba.njit(cache=True, nogil=True)
def _clean_groups(offsets, ts, op, hi, lo, cl, vol, new_offsets, bad, dup, conflicting):
    """Drop invalid rows, collapse equal-ts rows to the best valid one, compact in place.

    Per mint `g`: `bad[g]` dropped invalid rows, `dup[g]` dropped valid duplicates, of which
    `conflicting[g]` differed from the kept row. Returns the number of rows kept.
    """
    w = 0
    new_offsets[0] = 0
    for g in range(offsets.shape[0] - 1):
        a = offsets[g]
        b = offsets[g + 1]
        i = a
        while i < b:
            t = ts[i]
            j = i + 1
            while j < b and ts[j] == t:
                j += 1
            best = -1
            for r in range(i, j):
                if not _is_valid(op[r], hi[r], lo[r], cl[r]):
                    bad[g] += 1
                elif best < 0:
                    best = r
                else:
                    dup[g] += 1
                    if _better(r, best, op, hi, lo, cl, vol):
                        best = r
            if best >= 0:
                if j - i > 1:
                    for r in range(i, j):
                        if (
                            r != best
                            and _is_valid(op[r], hi[r], lo[r], cl[r])
                            and not _same_row(r, best, op, hi, lo, cl, vol)
                        ):
                            conflicting[g] += 1
                ts[w] = t
                op[w] = op[best]
                hi[w] = hi[best]
                lo[w] = lo[best]
                cl[w] = cl[best]
                w += 1
            i = j
        new_offsets[g + 1] = w
    return w


def read_candles(source: str, *, mints: Sequence[str], interval: str, start_ms: int, end_ms: int) -> CandlesInput:
    """Validated candles of `mints` with `start_ms <= ts_ms < end_ms`, one contiguous array per column.

    Bad candles are dropped and duplicates collapsed (DESIGN §2), each counted once per mint and
    reason. Mints without candles get an empty range. One cheap `count(*) GROUP BY mint` first
    sizes each mint's group, so the fetch writes every value once into its final grouped place
    (peak memory: the candles plus one Arrow batch).
    """
    interval_ms(interval)
    wanted = sorted({m for m in mints if m is not None})
    src = _open_candles(source)
    src.con.register(
        "wanted_mints", pa.table({"mint": pa.array(wanted, pa.string()), "k": pa.array(range(len(wanted)), pa.int32())})
    )
    rows_sql = f"""
        FROM {src.from_sql} AS c JOIN wanted_mints AS w ON c.mint = w.mint
        WHERE c.interval = $interval AND c.ts_ms >= $start_ms AND c.ts_ms < $end_ms
    """
    params = {**src.params, "interval": interval, "start_ms": int(start_ms), "end_ms": int(end_ms)}
    n_mints = len(wanted)
    try:
        counts = np.zeros(n_mints, dtype=np.int64)
        per_mint = src.con.sql(f"SELECT w.k, count(*) {rows_sql} GROUP BY w.k", params=params).fetchnumpy()
        counts[per_mint["k"]] = per_mint["count_star()"]
        offsets = np.zeros(n_mints + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        n = int(offsets[-1])
        ts = np.empty(n, dtype=np.int64)
        op, hi, lo, cl, vol = (np.empty(n, dtype=np.float64) for _ in range(5))
        cursor = offsets[:-1].copy()
        reader = src.con.sql(
            f"""SELECT w.k, CAST(c.ts_ms AS BIGINT), CAST(c.open AS DOUBLE), CAST(c.high AS DOUBLE),
                       CAST(c.low AS DOUBLE), CAST(c.close AS DOUBLE), CAST(c.volume AS DOUBLE) {rows_sql}""",
            params=params,
        ).to_arrow_reader(_BATCH_ROWS)
        for batch in reader:
            # Null prices become NaN (then dropped as bad candles); ts and k are never null here.
            cols = [batch.column(i).to_numpy(zero_copy_only=False) for i in range(7)]
            if not _scatter_batch(*cols, cursor, offsets[1:], ts, op, hi, lo, cl, vol):
                raise InputError(f"{src.where}: the source changed while it was being read; retry")
    except duckdb.Error as exc:
        raise InputError(f"{src.where}: {_first_line(exc)}") from None
    finally:
        src.con.close()
    if not np.array_equal(cursor, offsets[1:]):
        raise InputError(f"{src.where}: the source changed while it was being read; retry")

    _sort_groups(offsets, ts, op, hi, lo, cl, vol)
    new_offsets = np.empty_like(offsets)
    bad = np.zeros(n_mints, dtype=np.int64)
    dup = np.zeros(n_mints, dtype=np.int64)
    conflicting = np.zeros(n_mints, dtype=np.int64)
    kept = _clean_groups(offsets, ts, op, hi, lo, cl, vol, new_offsets, bad, dup, conflicting)
    del vol

    candles = Candles(tuple(wanted), new_offsets, ts[:kept], op[:kept], hi[:kept], lo[:kept], cl[:kept])
    return CandlesInput(candles=candles, errors=_candle_errors(wanted, interval, bad, dup, conflicting))


def _candle_errors(
    mints: list[str], interval: str, bad: np.ndarray, dup: np.ndarray, conflicting: np.ndarray
) -> list[ErrorRecord]:
    errors = []
    for k in np.flatnonzero(bad):
        errors.append(
            ErrorRecord(
                level="warning",
                phase="truth",
                reason="bad_candle",
                message=f"{int(bad[k])} {interval} candle(s) dropped: non-finite or non-positive price, or high/low outside open/close",
                mint=mints[k],
                details={"count": int(bad[k])},
            )
        )
    for k in np.flatnonzero(dup):
        errors.append(
            ErrorRecord(
                level="warning",
                phase="truth",
                reason="duplicate_candle",
                message=f"{int(dup[k])} duplicate {interval} candle(s) collapsed ({int(conflicting[k])} conflicting: highest volume kept)",
                mint=mints[k],
                details={"count": int(dup[k]), "conflicting": int(conflicting[k])},
            )
        )
    return errors
