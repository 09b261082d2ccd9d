"""The candle source: DuckDB table `ohlcv_candles`, or a Parquet file, directory or glob (docs/inputs.md
"Inputs").

Candles are the big input (docs/performance.md "Performance": 20,000 alerts × 1,440 candles, 28.8 M rows a
month), so `read_candles` pushes mints, interval and time range into the DuckDB query, selects a
small integer mint index instead of the mint string, and streams Arrow batches straight into
their final grouped place (`core.nb.candles.scatter_batch`); `core.inputs.clean_candles` then
sorts, validates and de-duplicates them. A repeated read maps the cleaned arrays from the candle
cache instead (`sources.candle_cache`).
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from quantlab_pipeline.core.durations import interval_ms
from quantlab_pipeline.core.errors import InputError, first_line
from quantlab_pipeline.core.inputs import CandlesInput, clean_candles
from quantlab_pipeline.core.nb.candles import scatter_batch
from quantlab_pipeline.sources import candle_cache
from quantlab_pipeline.sources.duckdb import (
    ColumnRules,
    DuckDBConfig,
    check_columns,
    connect_read_only,
    is_integer,
    is_number,
    is_varchar,
    table_columns,
)

CANDLES_TABLE = "ohlcv_candles"

_REQUIRED: ColumnRules = {
    "mint": ("VARCHAR", is_varchar),
    "interval": ("VARCHAR", is_varchar),
    "ts_ms": ("an integer type", is_integer),
    **{name: ("DOUBLE", is_number) for name in ("open", "high", "low", "close", "volume")},
}
_BATCH_ROWS = 1 << 17
# DuckDB keeps every block it scanned cached up to its memory limit (default: 80 % of RAM). The
# candle scan streams, so a small cache costs no time and keeps that second copy out of memory.
_DUCKDB_CONFIG: DuckDBConfig = {"memory_limit": "128MB"}
_COLUMN_DTYPES = (np.int64, np.float64, np.float64, np.float64, np.float64, np.float64)  # ts, OHLCV


class CandleBuffers:
    """The candle columns of one read, kept for the next read in the same process.

    A month's candles are ~1.6 GB (docs/performance.md "A year in one command"): written into
    fresh memory, every page is faulted in and zeroed by the kernel, and unmapped again when the
    month is done — a second or more of a month's CPU. A process that runs month after month (the
    month runner: a `--parallel` run worker, or the command itself with `--parallel 1`) writes each
    month into the memory the month before used instead. A buffer is reused only when nothing
    references it any more (the month before's candles, and every view of them, are gone);
    otherwise, or when the read is larger, the read gets new memory as it would without."""

    def __init__(self) -> None:
        self._kept: list[np.ndarray] = []

    def columns(self, n: int) -> list[np.ndarray]:
        """ts, open, high, low, close, volume: `n` rows each, uninitialized."""
        free = all(count == _UNREFERENCED for count in _refcounts(self._kept))
        if not self._kept or not free or self._kept[0].shape[0] < n:
            self._kept = []  # dropped before the new ones are allocated: peak memory as without
            self._kept = [np.empty(n + n // 8, dtype=dtype) for dtype in _COLUMN_DTYPES]  # room to grow
        return [buffer[:n] for buffer in self._kept]


def _refcounts(arrays: list[np.ndarray]) -> list[int]:
    return [sys.getrefcount(array) for array in arrays]


# What `_refcounts` gives for an array held by its list alone, measured the same way (the count
# includes the references of the list, the loop and the call, which differ between interpreters).
_UNREFERENCED = _refcounts([np.empty(0)])[0]
_kept_buffers: CandleBuffers | None = None


@contextmanager
def kept_candle_buffers() -> Iterator[None]:
    """Reads in this block write into `CandleBuffers` kept from one read to the next."""
    global _kept_buffers
    previous, _kept_buffers = _kept_buffers, CandleBuffers()
    try:
        yield
    finally:
        _kept_buffers = previous


def _new_columns(n: int) -> list[np.ndarray]:
    if _kept_buffers is not None:
        return _kept_buffers.columns(n)
    return [np.empty(n, dtype=dtype) for dtype in _COLUMN_DTYPES]


@dataclass(frozen=True)
class _Source:
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


def _parquet_pattern(source: str) -> str | None:
    """The glob of a Parquet source's files; None for a DuckDB database."""
    path = Path(source)
    is_glob = any(ch in source for ch in "*?[")
    if not is_glob and not path.exists():
        raise InputError(f"candles source {source}: no such file or directory")
    if is_glob or path.is_dir() or _is_parquet_file(path):
        return str(path / "**" / "*.parquet") if path.is_dir() else source
    return None


def _open(source: str) -> _Source:
    """DuckDB database with table `ohlcv_candles`, or Parquet file / directory / glob."""
    pattern = _parquet_pattern(source)
    if pattern is not None:
        if not glob.glob(pattern, recursive=True):
            raise InputError(f"candles source {source}: no Parquet files found")
        con = duckdb.connect(config=_DUCKDB_CONFIG)
        from_sql = "read_parquet($files, hive_partitioning = true, hive_types_autocast = false, union_by_name = true)"
        src = _Source(con, from_sql, {"files": pattern}, f"candles source {source}")
        try:
            rows = con.execute(f"DESCRIBE SELECT * FROM {from_sql}", src.params).fetchall()
        except duckdb.Error as exc:
            con.close()
            raise InputError(f"candles source {source}: unreadable Parquet ({first_line(exc)})") from None
        columns = {name.lower(): dtype for name, dtype, *_ in rows}
    else:
        con = connect_read_only(source, "candles database", _DUCKDB_CONFIG)
        src = _Source(con, CANDLES_TABLE, {}, f"candles database {source}, table {CANDLES_TABLE}")
        columns = table_columns(con, CANDLES_TABLE)
        if not columns:
            con.close()
            raise InputError(f"{src.where}: table not found")
    try:
        check_columns(columns, src.where, _REQUIRED, {})
    except InputError:
        con.close()
        raise
    return src


def check_candles_source(source: str, *, interval: str | None = None) -> None:
    """Raise `InputError` unless the candle source is readable, has the columns, and (when given)
    holds candles of `interval` — a typo'd interval would otherwise silently exclude every alert."""
    src = _open(source)
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


def read_candles(source: str, *, mints: Sequence[str], interval: str, start_ms: int, end_ms: int) -> CandlesInput:
    """Validated candles of `mints` with `start_ms <= ts_ms < end_ms`, one contiguous read-only
    array per column.

    A read seen before comes from the candle cache (`sources.candle_cache`, docs/inputs.md "Inputs"); a
    new one is read from the source and cached. The arrays are read-only either way, so a writer
    downstream fails on every run, not only on cached ones.
    """
    interval_ms(interval)
    wanted = sorted({m for m in mints if m is not None})
    cap = candle_cache.cap_bytes()
    key = _cache_key(source, wanted, interval, start_ms, end_ms) if cap else None
    root = candle_cache.cache_dir()
    if key is not None and (cached := candle_cache.load(root, key)) is not None:
        return cached
    read = _read_source(source, wanted, interval=interval, start_ms=start_ms, end_ms=end_ms)
    c = read.candles
    for column in (c.offsets, c.ts, c.open, c.high, c.low, c.close, c.volume):
        if column is not None:
            column.flags.writeable = False
    # Cached only if the source did not change while it was read: the entry must match its key.
    if key is not None and key == _cache_key(source, wanted, interval, start_ms, end_ms):
        candle_cache.store(root, key, read, cap)
    return read


def _cache_key(source: str, wanted: list[str], interval: str, start_ms: int, end_ms: int) -> dict | None:
    """The cache key of a read: the source's files (a DuckDB database and its `.wal`, or every
    matched Parquet file) with their stat identity, and the query. None if a file is missing."""
    pattern = _parquet_pattern(source)
    if pattern is None:
        identity = candle_cache.source_identity([source], [f"{source}.wal"])
    else:
        identity = candle_cache.source_identity(sorted(glob.glob(pattern, recursive=True)))
    if not identity:
        return None
    return candle_cache.make_key(identity, wanted, interval, start_ms, end_ms)


def _read_source(source: str, wanted: list[str], *, interval: str, start_ms: int, end_ms: int) -> CandlesInput:
    """Read and clean from the source. Mints without candles get an empty range. One cheap
    `count(*) GROUP BY mint` first sizes each mint's group, so the fetch writes every value once
    into its final grouped place (peak memory: the candles plus one Arrow batch). The count groups
    every mint of the range without the join to the wanted ones (~40 % less time than with it);
    the wanted are picked from its result."""
    src = _open(source)
    wanted_mints = pa.array(wanted, pa.string())
    src.con.register("wanted_mints", pa.table({"mint": wanted_mints, "k": pa.array(range(len(wanted)), pa.int32())}))
    range_sql = "c.interval = $interval AND c.ts_ms >= $start_ms AND c.ts_ms < $end_ms"
    rows_sql = f"FROM {src.from_sql} AS c JOIN wanted_mints AS w ON c.mint = w.mint WHERE {range_sql}"
    params = {**src.params, "interval": interval, "start_ms": int(start_ms), "end_ms": int(end_ms)}
    try:
        counts = np.zeros(len(wanted), dtype=np.int64)
        per_mint = src.con.sql(
            f"SELECT c.mint, count(*) AS n FROM {src.from_sql} AS c WHERE {range_sql} GROUP BY c.mint", params=params
        ).to_arrow_table()
        k = pc.index_in(per_mint.column("mint"), value_set=wanted_mints)
        kept = pc.is_valid(k)
        counts[pc.filter(k, kept).to_numpy()] = pc.filter(per_mint.column("n"), kept).to_numpy()
        offsets = np.zeros(len(wanted) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        ts, op, hi, lo, cl, vol = _new_columns(int(offsets[-1]))
        cursor = offsets[:-1].copy()
        reader = src.con.sql(
            f"""SELECT w.k, CAST(c.ts_ms AS BIGINT), CAST(c.open AS DOUBLE), CAST(c.high AS DOUBLE),
                       CAST(c.low AS DOUBLE), CAST(c.close AS DOUBLE), CAST(c.volume AS DOUBLE) {rows_sql}""",
            params=params,
        ).to_arrow_reader(_BATCH_ROWS)
        for batch in reader:
            # Null prices become NaN (then dropped as bad candles); ts and k are never null here.
            k, b_ts, b_op, b_hi, b_lo, b_cl, b_vol = (batch.column(i).to_numpy(zero_copy_only=False) for i in range(7))
            if not scatter_batch(k, b_ts, b_op, b_hi, b_lo, b_cl, b_vol, cursor, offsets[1:], ts, op, hi, lo, cl, vol):
                raise InputError(f"{src.where}: the source changed while it was being read; retry")
    except duckdb.Error as exc:
        raise InputError(f"{src.where}: {first_line(exc)}") from None
    finally:
        src.con.close()
    if not np.array_equal(cursor, offsets[1:]):
        raise InputError(f"{src.where}: the source changed while it was being read; retry")
    return clean_candles(wanted, offsets, ts, op, hi, lo, cl, vol, interval=interval)
