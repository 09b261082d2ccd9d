"""Input readers and validation (docs/inputs.md "Inputs"): alerts, candles, and their one-line errors."""

from __future__ import annotations

import hashlib
import weakref
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quantlab_pipeline.core.errors import InputError, SpecError
from quantlab_pipeline.core.inputs import ALERT_COLUMNS, clean_candles
from quantlab_pipeline.sources.alerts import check_alerts_source, read_alerts
from quantlab_pipeline.sources.candles import check_candles_source, kept_candle_buffers, read_candles

JAN = 1_704_067_200_000  # 2024-01-01T00:00Z
FEB = 1_706_745_600_000  # 2024-02-01T00:00Z
MAR = 1_709_251_200_000  # 2024-03-01T00:00Z
DAY = 86_400_000
STEP = 300_000  # 5m


def make_db(path: Path, *statements: str) -> Path:
    con = duckdb.connect(str(path))
    for sql in statements:
        con.execute(sql)
    con.close()
    return path


def alerts_db(
    tmp_path: Path, rows: list[tuple], columns: str = "call_id, mint, caller_name, chain, alert_ts_ms"
) -> Path:
    """An `alerts` table with the given columns (all VARCHAR but alert_ts_ms BIGINT)."""
    path = tmp_path / "alerts.duckdb"
    names = [c.strip() for c in columns.split(",")]
    ddl = ", ".join(f"{n} {'BIGINT' if n == 'alert_ts_ms' else 'VARCHAR'}" for n in names)
    con = duckdb.connect(str(path))
    con.execute(f"CREATE TABLE alerts ({ddl})")
    if rows:
        con.executemany(f"INSERT INTO alerts VALUES ({', '.join('?' * len(names))})", rows)
    con.close()
    return path


def derived_id(mint: str, ts: int, caller: str) -> str:
    # The documented rule: 'auto-' + the first 32 hex digits of sha256("mint\x1fts\x1fcaller").
    return "auto-" + hashlib.sha256(f"{mint}\x1f{ts}\x1f{caller}".encode()).hexdigest()[:32]


def jan(**kw):
    return read_alerts(kw.pop("path"), "alerts", start_ms=JAN, end_ms=FEB, **kw)


# -- alerts: source errors --------------------------------------------------------------------


def test_missing_alerts_file_names_the_file(tmp_path):
    path = tmp_path / "nope.duckdb"
    with pytest.raises(InputError) as exc:
        check_alerts_source(str(path))
    assert str(path) in str(exc.value) and "not found" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_not_a_database_names_the_file(tmp_path):
    path = tmp_path / "junk.duckdb"
    path.write_text("this is not a database\n")
    with pytest.raises(InputError) as exc:
        check_alerts_source(str(path))
    msg = str(exc.value)
    assert msg.startswith(f"alerts database {path}: not a readable DuckDB database")
    assert "\n" not in msg


def test_missing_table_names_file_and_table(tmp_path):
    path = make_db(tmp_path / "a.duckdb", "CREATE TABLE other (x INT)")
    with pytest.raises(InputError) as exc:
        check_alerts_source(str(path), "calls")
    assert str(exc.value) == f"alerts database {path}, table calls: table not found"


@pytest.mark.parametrize("missing", ["mint", "alert_ts_ms"])
def test_missing_required_column_names_it(tmp_path, missing):
    columns = "call_id, mint, alert_ts_ms".replace(f", {missing}", "")
    path = alerts_db(tmp_path, [], columns)
    with pytest.raises(InputError) as exc:
        check_alerts_source(str(path))
    assert str(exc.value).startswith(f"alerts database {path}, table alerts: missing required column '{missing}'")


@pytest.mark.parametrize(
    ("ddl", "column", "actual"),
    [
        ("mint VARCHAR, alert_ts_ms VARCHAR", "alert_ts_ms", "VARCHAR"),
        ("mint VARCHAR, alert_ts_ms DOUBLE", "alert_ts_ms", "DOUBLE"),
        ("mint INTEGER, alert_ts_ms BIGINT", "mint", "INTEGER"),
        ("mint VARCHAR, alert_ts_ms BIGINT, caller_name INTEGER", "caller_name", "INTEGER"),
        ("mint VARCHAR, alert_ts_ms BIGINT, chain BOOLEAN", "chain", "BOOLEAN"),
        ("mint VARCHAR, alert_ts_ms BIGINT, call_id BIGINT", "call_id", "BIGINT"),
    ],
)
def test_mistyped_column_names_it_and_its_type(tmp_path, ddl, column, actual):
    path = make_db(tmp_path / "a.duckdb", f"CREATE TABLE alerts ({ddl})")
    with pytest.raises(InputError) as exc:
        check_alerts_source(str(path))
    assert str(exc.value).startswith(f"alerts database {path}, table alerts: column '{column}' is {actual}, expected")


def test_any_integer_timestamp_type_and_a_view_are_accepted(tmp_path):
    path = make_db(
        tmp_path / "a.duckdb",
        "CREATE TABLE raw (mint VARCHAR, alert_ts_ms HUGEINT)",
        f"INSERT INTO raw VALUES ('M', {JAN + 5})",
        "CREATE VIEW alerts AS SELECT * FROM raw",
    )
    check_alerts_source(str(path))
    assert jan(path=str(path)).frame.get_column("alert_ts_ms").to_list() == [JAN + 5]


def test_table_name_must_be_a_plain_identifier(tmp_path):
    path = alerts_db(tmp_path, [])
    with pytest.raises(SpecError, match="alerts_table"):
        check_alerts_source(str(path), "alerts; DROP TABLE alerts")


# -- alerts: rows -----------------------------------------------------------------------------


def test_partition_columns_order_defaults_and_created_at(tmp_path):
    path = alerts_db(
        tmp_path,
        [
            ("c2", "M2", None, None, JAN + 4 * DAY + 45_296_789),  # 2024-01-05T12:34:56.789Z
            ("c1", "M1", "bob", "base", JAN),  # start of the month: included
            ("c0", "M0", "bob", "solana", FEB),  # end is exclusive: February
            ("c9", "M9", "bob", "solana", JAN - 1),  # December
        ],
    )
    read = jan(path=str(path))
    assert tuple(read.frame.columns) == ALERT_COLUMNS
    assert read.frame.rows() == [
        ("c1", "M1", "bob", "base", JAN, "2024-01-01T00:00:00.000Z"),
        ("c2", "M2", "unknown", "solana", JAN + 4 * DAY + 45_296_789, "2024-01-05T12:34:56.789Z"),
    ]
    assert read.source_rows == 2 and read.errors == []


def test_sorted_by_alert_ts_then_call_id(tmp_path):
    path = alerts_db(
        tmp_path, [("b", "M", None, None, JAN + 10), ("a", "N", None, None, JAN + 10), ("z", "O", None, None, JAN + 5)]
    )
    assert jan(path=str(path)).frame.get_column("call_id").to_list() == ["z", "a", "b"]


def test_optional_columns_absent_take_defaults_and_derived_ids(tmp_path):
    path = alerts_db(tmp_path, [("M1", JAN + 7)], "mint, alert_ts_ms")
    (row,) = jan(path=str(path)).frame.rows(named=True)
    assert (row["caller_name"], row["chain"]) == ("unknown", "solana")
    assert row["call_id"] == derived_id("M1", JAN + 7, "unknown")


def test_null_mint_and_null_ts_rows_are_skipped_and_reported(tmp_path):
    path = alerts_db(
        tmp_path,
        [
            ("ok", "M", "bob", None, JAN + 1),
            ("no-mint", None, "bob", None, JAN + 2),
            ("no-ts", "M", "bob", None, None),
            (None, None, "bob", None, None),
        ],
    )
    read = jan(path=str(path))
    assert read.frame.get_column("call_id").to_list() == ["ok"]
    # Rows without a timestamp belong to no month: not reported by default.
    assert read.source_rows == 2
    assert [(e.reason, e.call_id, e.mint) for e in read.errors] == [("null_field", "no-mint", None)]
    err = read.errors[0]
    assert (err.level, err.phase, err.details) == ("warning", "inputs", {"null_fields": ["mint"]})

    first = jan(path=str(path), include_null_ts=True)
    assert first.source_rows == 4  # 1 kept + 3 skipped
    assert [(e.reason, e.call_id, e.mint, e.details["null_fields"]) for e in first.errors] == [
        ("null_field", "no-mint", None, ["mint"]),
        ("null_field", "no-ts", "M", ["alert_ts_ms"]),
        ("null_field", None, None, ["mint", "alert_ts_ms"]),
    ]


def test_duplicate_call_id_keeps_the_earliest_across_the_whole_table(tmp_path):
    path = alerts_db(
        tmp_path,
        [
            ("dup", "M", "bob", None, FEB + 3 * DAY),  # a repost in February
            ("dup", "M", "bob", None, JAN + 5 * DAY),  # the original, in January
            ("solo", "N", "bob", None, FEB + DAY),
        ],
    )
    read_jan = jan(path=str(path))
    assert read_jan.frame.get_column("call_id").to_list() == ["dup"]
    assert read_jan.frame.get_column("alert_ts_ms").to_list() == [JAN + 5 * DAY]
    assert read_jan.errors == []

    read_feb = read_alerts(str(path), "alerts", start_ms=FEB, end_ms=MAR)
    assert read_feb.frame.get_column("call_id").to_list() == ["solo"]
    assert read_feb.source_rows == 2
    (err,) = read_feb.errors
    assert (err.reason, err.call_id, err.mint, err.level, err.phase) == (
        "duplicate_call",
        "dup",
        "M",
        "warning",
        "inputs",
    )
    assert err.details == {"kept_alert_ts_ms": JAN + 5 * DAY, "alert_ts_ms": FEB + 3 * DAY}


def test_duplicate_with_equal_timestamps_is_decided_by_content_not_row_order(tmp_path):
    rows = [("dup", "M", "zed", None, JAN + 9), ("dup", "M", "amy", None, JAN + 9)]
    for order in (rows, rows[::-1]):
        sub = tmp_path / ("a" if order is rows else "b")
        sub.mkdir()
        read = jan(path=str(alerts_db(sub, order)))
        # Ties on alert_ts_ms go to the smallest (mint, caller_name, chain): 'amy'.
        assert read.frame.get_column("caller_name").to_list() == ["amy"]
        assert [(e.reason, e.call_id) for e in read.errors] == [("duplicate_call", "dup")]


def test_a_null_row_does_not_win_over_a_valid_row_of_the_same_id(tmp_path):
    path = alerts_db(tmp_path, [("x", None, "bob", None, JAN + 1), ("x", "M", "bob", None, JAN + 2)])
    read = jan(path=str(path))
    assert read.frame.get_column("alert_ts_ms").to_list() == [JAN + 2]
    assert [e.reason for e in read.errors] == ["null_field"]


def test_derived_call_id_is_stable_across_months_row_order_and_reads(tmp_path):
    rows = [
        (None, "M1", "bob", None, JAN + 3 * DAY),
        (None, "M2", None, None, FEB + 1),
        ("given", "M3", "bob", None, JAN + 4),
    ]
    expected_m1 = derived_id("M1", JAN + 3 * DAY, "bob")
    expected_m2 = derived_id("M2", FEB + 1, "unknown")  # the defaulted caller is part of the id
    for name, order in (("a", rows), ("b", rows[::-1])):
        sub = tmp_path / name
        sub.mkdir()
        path = str(alerts_db(sub, order))
        assert jan(path=path).frame.get_column("call_id").to_list() == ["given", expected_m1]
        feb = read_alerts(path, "alerts", start_ms=FEB, end_ms=MAR)
        assert feb.frame.get_column("call_id").to_list() == [expected_m2]
        whole = read_alerts(path, "alerts", start_ms=JAN, end_ms=MAR)
        assert set(whole.frame.get_column("call_id")) == {"given", expected_m1, expected_m2}


def test_identical_rows_without_call_id_are_one_call(tmp_path):
    path = alerts_db(tmp_path, [(None, "M", "bob", None, JAN + 1), (None, "M", "bob", None, JAN + 1)])
    read = jan(path=str(path))
    assert read.frame.height == 1 and read.source_rows == 2
    assert [(e.reason, e.call_id) for e in read.errors] == [("duplicate_call", derived_id("M", JAN + 1, "bob"))]


def test_caller_and_chain_filters(tmp_path):
    path = alerts_db(
        tmp_path,
        [
            ("a", "M", "alice", "solana", JAN + 1),
            ("b", "M", "bob", "base", JAN + 2),
            ("c", "M", None, None, JAN + 3),  # unknown / solana
            ("d", "M", "alice", "base", JAN + 4),
        ],
    )
    ids = lambda **kw: jan(path=str(path), **kw).frame.get_column("call_id").to_list()  # noqa: E731
    assert ids(callers=["alice"]) == ["a", "d"]
    assert ids(callers=["unknown"]) == ["c"]
    assert ids(chains=["solana"]) == ["a", "c"]
    assert ids(callers=["alice", "bob"], chains=["base"]) == ["b", "d"]
    assert ids(callers=["nobody"]) == []
    assert jan(path=str(path), callers=["bob"]).source_rows == 1


def test_filters_apply_to_skipped_rows_too(tmp_path):
    path = alerts_db(tmp_path, [("a", None, "alice", None, JAN + 1), ("b", None, "bob", None, JAN + 2)])
    read = jan(path=str(path), callers=["bob"])
    assert read.source_rows == 1
    assert [e.call_id for e in read.errors] == ["b"]


def test_empty_partition_has_the_columns(tmp_path):
    read = jan(path=str(alerts_db(tmp_path, [])))
    assert read.frame.height == 0 and tuple(read.frame.columns) == ALERT_COLUMNS and read.source_rows == 0


# -- candles ----------------------------------------------------------------------------------

CANDLE_DDL = (
    "CREATE TABLE ohlcv_candles (mint VARCHAR, chain VARCHAR, interval VARCHAR, ts_ms BIGINT, "
    "open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE)"
)


def candles_db(tmp_path: Path, rows: list[tuple]) -> Path:
    """rows: (mint, interval, ts_ms, open, high, low, close, volume)."""
    path = tmp_path / "candles.duckdb"
    con = duckdb.connect(str(path))
    con.execute(CANDLE_DDL)
    con.executemany("INSERT INTO ohlcv_candles VALUES (?, 'solana', ?, ?, ?, ?, ?, ?, ?)", rows)
    con.close()
    return path


def bar(mint, i, o=1.0, h=1.0, lo=1.0, c=1.0, v=10.0, interval="5m"):
    return (mint, interval, JAN + i * STEP, o, h, lo, c, v)


def series(candles, mint) -> list[tuple]:
    k = candles.mints.index(mint)
    a, b = candles.offsets[k], candles.offsets[k + 1]
    return list(
        zip(
            candles.ts[a:b].tolist(),
            candles.open[a:b].tolist(),
            candles.high[a:b].tolist(),
            candles.low[a:b].tolist(),
            candles.close[a:b].tolist(),
        )
    )


def read(source, mints=("A", "B"), start=JAN, end=FEB, interval="5m"):
    return read_candles(str(source), mints=list(mints), interval=interval, start_ms=start, end_ms=end)


def test_pushdown_returns_only_requested_mints_interval_and_range(tmp_path):
    path = candles_db(
        tmp_path,
        [
            bar("A", 0, 1.0, 1.0, 1.0, 1.0),  # ts = start: kept
            bar("A", 1, 2.0, 2.0, 2.0, 2.0),
            bar("A", 1, 9.0, 9.0, 9.0, 9.0, interval="1m"),  # another interval
            bar("Z", 1, 9.0, 9.0, 9.0, 9.0),  # another mint
            bar("A", -1, 9.0, 9.0, 9.0, 9.0),  # before start
            bar("A", 4, 9.0, 9.0, 9.0, 9.0),  # ts = end: excluded
        ],
    )
    out = read(path, mints=["A", "A", "NONE"], end=JAN + 4 * STEP)
    c = out.candles
    assert set(c.mints) == {"A", "NONE"}
    assert series(c, "A") == [(JAN, 1.0, 1.0, 1.0, 1.0), (JAN + STEP, 2.0, 2.0, 2.0, 2.0)]
    assert series(c, "NONE") == []  # no candles: an empty range
    assert len(c) == 2 and out.errors == []
    nothing = read(path, mints=[])
    assert (nothing.candles.mints, len(nothing.candles), nothing.candles.offsets.tolist()) == ((), 0, [0])


def test_out_of_order_rows_are_grouped_and_sorted(tmp_path):
    path = candles_db(
        tmp_path,
        [
            bar("B", 2, 3.0, 3.0, 3.0, 3.0),
            bar("A", 1),
            bar("B", 0, 2.0, 2.0, 2.0, 2.0),
            bar("A", 0),
            bar("B", 1, 5.0, 5.0, 5.0, 5.0),
        ],
    )
    c = read(path).candles
    assert [t for t, *_ in series(c, "B")] == [JAN, JAN + STEP, JAN + 2 * STEP]
    assert [o for _, o, *_ in series(c, "B")] == [2.0, 5.0, 3.0]
    assert [t for t, *_ in series(c, "A")] == [JAN, JAN + STEP]
    assert c.offsets.tolist()[0] == 0 and c.offsets.tolist()[-1] == 5


@pytest.mark.parametrize(
    "bad",
    [
        (0.0, 1.0, 0.5, 1.0),  # open 0
        (1.0, 1.0, -0.5, 1.0),  # negative low
        (1.0, float("nan"), 1.0, 1.0),  # NaN high
        (1.0, 1.0, 1.0, float("inf")),  # inf close (high < close too)
        (1.0, 1.5, 0.9, float("nan")),  # NaN close
        (1.0, 1.5, 1.0, 2.0),  # high < close
        (2.0, 1.9, 1.0, 1.0),  # high < open
        (1.0, 2.0, 1.1, 1.5),  # low > open
        (1.5, 2.0, 1.2, 1.1),  # low > close
        (float("inf"), float("inf"), 1.0, 1.0),  # infinite open and high
    ],
)
def test_each_kind_of_bad_candle_is_dropped_and_counted(tmp_path, bad):
    path = candles_db(tmp_path, [bar("A", 0), bar("A", 1, *bad), bar("A", 2)])
    out = read(path)
    assert [t for t, *_ in series(out.candles, "A")] == [JAN, JAN + 2 * STEP]
    (err,) = out.errors
    assert (err.reason, err.mint, err.phase, err.level, err.details) == (
        "bad_candle",
        "A",
        "truth",
        "warning",
        {"count": 1},
    )


def test_null_prices_are_bad_candles(tmp_path):
    path = candles_db(tmp_path, [bar("A", 0), ("A", "5m", JAN + STEP, None, 1.0, 1.0, 1.0, 1.0)])
    out = read(path)
    assert len(out.candles) == 1
    assert [(e.reason, e.details["count"]) for e in out.errors] == [("bad_candle", 1)]


def test_valid_edge_candle_is_kept(tmp_path):
    # high == max(open, close) and low == min(open, close) are valid.
    path = candles_db(tmp_path, [bar("A", 0, 1.0, 2.0, 1.0, 2.0), bar("A", 1, 2.0, 2.0, 0.5, 0.5)])
    out = read(path)
    assert len(out.candles) == 2 and out.errors == []


def test_duplicates_collapse_identical_and_keep_highest_volume_when_conflicting(tmp_path):
    path = candles_db(
        tmp_path,
        [
            bar("A", 0, 1.0, 1.0, 1.0, 1.0, v=5.0),
            bar("A", 0, 1.0, 1.0, 1.0, 1.0, v=5.0),  # identical
            bar("A", 0, 1.0, 1.0, 1.0, 1.0, v=5.0),  # identical
            bar("A", 1, 1.0, 2.0, 1.0, 2.0, v=7.0),
            bar("A", 1, 1.0, 3.0, 1.0, 3.0, v=9.0),  # conflicting, highest volume: kept
            bar("A", 1, 1.0, 4.0, 1.0, 4.0, v=8.0),  # conflicting
            bar("B", 0, 1.0, 1.0, 1.0, 1.0, v=1.0),
        ],
    )
    out = read(path)
    assert series(out.candles, "A") == [(JAN, 1.0, 1.0, 1.0, 1.0), (JAN + STEP, 1.0, 3.0, 1.0, 3.0)]
    (err,) = out.errors
    # A: 2 identical copies + 2 conflicting rows dropped = 4, of which 2 conflicting.
    assert (err.reason, err.mint, err.phase, err.level) == ("duplicate_candle", "A", "truth", "warning")
    assert err.details == {"count": 4, "conflicting": 2}


def test_duplicate_winner_does_not_depend_on_arrival_order(tmp_path):
    # Equal volume: the tie goes to the higher open, whatever order the rows arrive in.
    rows = [bar("A", 0, 1.0, 2.0, 1.0, 1.0, v=5.0), bar("A", 0, 1.5, 2.0, 1.0, 1.0, v=5.0)]
    for name, order in (("a", rows), ("b", rows[::-1])):
        sub = tmp_path / name
        sub.mkdir()
        assert series(read(candles_db(sub, order)).candles, "A") == [(JAN, 1.5, 2.0, 1.0, 1.0)]


def test_bad_row_among_duplicates_is_bad_not_duplicate(tmp_path):
    # At ts 0: one bad (high < close) and one valid row: 1 bad, no duplicate. At ts 1: two bad.
    path = candles_db(
        tmp_path,
        [bar("A", 0, 1.0, 1.0, 1.0, 2.0, v=99.0), bar("A", 0, v=1.0), bar("A", 1, 0.0), bar("A", 1, -1.0)],
    )
    out = read(path)
    assert series(out.candles, "A") == [(JAN, 1.0, 1.0, 1.0, 1.0)]
    assert [(e.reason, e.details) for e in out.errors] == [("bad_candle", {"count": 3})]


def test_errors_are_counted_per_mint(tmp_path):
    path = candles_db(
        tmp_path,
        [bar("A", 0, 0.0), bar("A", 1, 0.0), bar("A", 2), bar("A", 2), bar("B", 0), bar("B", 1, -2.0)],
    )
    out = read(path)
    got = sorted((e.mint, e.reason, e.details["count"]) for e in out.errors)
    assert got == [("A", "bad_candle", 2), ("A", "duplicate_candle", 1), ("B", "bad_candle", 1)]


def test_integer_and_float_price_columns_are_read_as_double(tmp_path):
    path = make_db(
        tmp_path / "c.duckdb",
        "CREATE TABLE ohlcv_candles (mint VARCHAR, interval VARCHAR, ts_ms INTEGER, open FLOAT, high DECIMAL(10,2), low INTEGER, close DOUBLE, volume BIGINT)",
        "INSERT INTO ohlcv_candles VALUES ('A', '5m', 0, 1.5, 2.25, 1, 2.0, 10)",
    )
    out = read(path, mints=["A"], start=0, end=1)
    assert series(out.candles, "A") == [(0, 1.5, 2.25, 1.0, 2.0)]


def test_the_candle_rules_run_on_arrays_alone():
    # No source at all: `clean_candles` sorts, validates and de-duplicates grouped raw rows.
    ts = np.array([2, 0, 1, 1, 5, 5], dtype=np.int64)  # A: rows 0-3, out of order; B: rows 4-5
    op = np.array([3.0, 1.0, 2.0, 2.0, 0.0, 4.0])  # B's first row is bad (open 0)
    cl = op.copy()
    cl[3] = 2.5  # conflicting duplicate of ts 1, with the higher volume
    vol = np.array([1.0, 1.0, 1.0, 9.0, 1.0, 1.0])
    hi, lo = np.maximum(op, cl), np.minimum(op, cl)
    out = clean_candles(["A", "B"], np.array([0, 4, 6]), ts, op, hi, lo, cl, vol, interval="5m")
    c = out.candles
    assert c.mints == ("A", "B") and c.offsets.tolist() == [0, 3, 4]
    assert c.ts.tolist() == [0, 1, 2, 5] and c.close.tolist() == [1.0, 2.5, 3.0, 4.0]
    assert [(e.reason, e.mint, e.details) for e in out.errors] == [
        ("bad_candle", "B", {"count": 1}),
        ("duplicate_candle", "A", {"count": 1, "conflicting": 1}),
    ]


# -- candles: Parquet sources -----------------------------------------------------------------


def parquet_rows(rows: list[tuple], with_keys: bool = True) -> pa.Table:
    cols = {
        "mint": [r[0] for r in rows],
        "interval": [r[1] for r in rows],
        "ts_ms": pa.array([r[2] for r in rows], pa.int64()),
        "open": [r[3] for r in rows],
        "high": [r[4] for r in rows],
        "low": [r[5] for r in rows],
        "close": [r[6] for r in rows],
        "volume": [r[7] for r in rows],
    }
    if not with_keys:
        del cols["mint"], cols["interval"]
    return pa.table(cols)


def test_parquet_directory_with_hive_partitioning(tmp_path):
    root = tmp_path / "candles"
    layout = {
        ("5m", "A"): [bar("A", 0, 1.0, 1.0, 1.0, 1.0), bar("A", 1, 2.0, 2.0, 2.0, 2.0)],
        ("5m", "B"): [bar("B", 0, 3.0, 3.0, 3.0, 3.0)],
        ("1m", "A"): [bar("A", 0, 9.0, 9.0, 9.0, 9.0, interval="1m")],
        ("5m", "123"): [bar("123", 0, 4.0, 4.0, 4.0, 4.0)],  # looks numeric: must stay a string
    }
    for (interval, mint), rows in layout.items():
        d = root / f"interval={interval}" / f"mint={mint}"
        d.mkdir(parents=True)
        pq.write_table(parquet_rows(rows, with_keys=False), d / "part-0.parquet")
    check_candles_source(str(root), interval="5m")
    out = read(root, mints=["A", "123"])
    assert series(out.candles, "A") == [(JAN, 1.0, 1.0, 1.0, 1.0), (JAN + STEP, 2.0, 2.0, 2.0, 2.0)]
    assert series(out.candles, "123") == [(JAN, 4.0, 4.0, 4.0, 4.0)]
    assert "B" not in out.candles.mints


def test_parquet_glob_and_single_file(tmp_path):
    pq.write_table(parquet_rows([bar("A", 0), bar("A", 1, 0.0)]), tmp_path / "jan.parquet")
    pq.write_table(parquet_rows([bar("A", 2, 2.0, 2.0, 2.0, 2.0)]), tmp_path / "feb.parquet")
    (tmp_path / "notes.txt").write_text("not candles")
    out = read(str(tmp_path / "*.parquet"), mints=["A"])
    assert [t for t, *_ in series(out.candles, "A")] == [JAN, JAN + 2 * STEP]
    assert [(e.reason, e.details["count"]) for e in out.errors] == [("bad_candle", 1)]
    single = read(tmp_path / "feb.parquet", mints=["A"])
    assert series(single.candles, "A") == [(JAN + 2 * STEP, 2.0, 2.0, 2.0, 2.0)]


def test_parquet_missing_and_mistyped_columns_name_them(tmp_path):
    pq.write_table(parquet_rows([bar("A", 0)]).drop_columns(["volume"]), tmp_path / "a.parquet")
    with pytest.raises(InputError) as exc:
        check_candles_source(str(tmp_path / "a.parquet"))
    assert str(exc.value) == f"candles source {tmp_path / 'a.parquet'}: missing required column 'volume' (DOUBLE)"
    t = parquet_rows([bar("A", 0)])
    t = t.set_column(t.schema.get_field_index("ts_ms"), "ts_ms", pa.array(["0"]))
    pq.write_table(t, tmp_path / "b.parquet")
    with pytest.raises(InputError, match=r"column 'ts_ms' is VARCHAR, expected an integer type"):
        check_candles_source(str(tmp_path / "b.parquet"))


def test_glob_matching_nothing_and_empty_directory(tmp_path):
    with pytest.raises(InputError, match="no Parquet files found"):
        check_candles_source(str(tmp_path / "*.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no Parquet files found"):
        check_candles_source(str(tmp_path / "empty"))


# -- candles: source errors -------------------------------------------------------------------


def test_candle_source_errors_name_file_table_and_column(tmp_path):
    missing = tmp_path / "missing.duckdb"
    with pytest.raises(InputError, match=f"^candles source {missing}: no such file or directory$"):
        check_candles_source(str(missing))

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InputError) as exc:
        check_candles_source(str(junk))
    assert str(exc.value).startswith(f"candles database {junk}: not a readable DuckDB database")

    no_table = make_db(tmp_path / "t.duckdb", "CREATE TABLE alerts (mint VARCHAR)")
    with pytest.raises(InputError) as exc:
        check_candles_source(str(no_table))
    assert str(exc.value) == f"candles database {no_table}, table ohlcv_candles: table not found"

    no_col = make_db(
        tmp_path / "c.duckdb", "CREATE TABLE ohlcv_candles (mint VARCHAR, interval VARCHAR, ts_ms BIGINT, open DOUBLE)"
    )
    with pytest.raises(InputError) as exc:
        check_candles_source(str(no_col))
    assert str(exc.value) == f"candles database {no_col}, table ohlcv_candles: missing required column 'high' (DOUBLE)"

    typed = make_db(
        tmp_path / "d.duckdb",
        "CREATE TABLE ohlcv_candles (mint VARCHAR, interval VARCHAR, ts_ms BIGINT, open VARCHAR, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE)",
    )
    with pytest.raises(InputError) as exc:
        read(typed)
    assert str(exc.value) == f"candles database {typed}, table ohlcv_candles: column 'open' is VARCHAR, expected DOUBLE"


def test_check_candles_source_requires_the_interval(tmp_path):
    path = candles_db(tmp_path, [bar("A", 0), bar("A", 0, interval="1m")])
    check_candles_source(str(path), interval="5m")
    with pytest.raises(InputError) as exc:
        check_candles_source(str(path), interval="15m")
    assert (
        str(exc.value)
        == f"candles database {path}, table ohlcv_candles: no candles with interval '15m' (intervals present: 1m, 5m)"
    )
    with pytest.raises(SpecError, match="interval"):
        check_candles_source(str(path), interval="five minutes")


def test_read_leaves_the_source_readable_by_others(tmp_path):
    # Read-only connections, closed after every read (a failed check too): a writer can open the
    # file right after, and the next read sees what it wrote.
    path = candles_db(tmp_path, [bar("A", 0)])
    assert series(read(path).candles, "A") == [(JAN, 1.0, 1.0, 1.0, 1.0)]
    with pytest.raises(InputError, match="no candles with interval '15m'"):
        check_candles_source(str(path), interval="15m")
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO ohlcv_candles VALUES ('A', 'solana', '5m', ?, 2, 2, 2, 2, 1)", [JAN + STEP])
    con.close()
    assert series(read(path).candles, "A") == [(JAN, 1.0, 1.0, 1.0, 1.0), (JAN + STEP, 2.0, 2.0, 2.0, 2.0)]


def test_large_grouped_source_matches_a_reference_grouping(tmp_path):
    # Several Arrow batches (> 131,072 rows), rows arriving grouped, plus a late duplicate block
    # that forces the regrouping path: the result equals a plain sort of the valid rows.
    rng = np.random.default_rng(3)
    n_mints, per = 7, 40_000
    mint = np.repeat([f"m{i}" for i in range(n_mints)], per)
    ts = np.tile(JAN + np.arange(per, dtype=np.int64) * STEP, n_mints)
    px = rng.uniform(1.0, 2.0, mint.size)
    late = rng.choice(mint.size, 50, replace=False)
    table = pa.table(
        {
            "mint": np.concatenate([mint, mint[late]]),
            "interval": ["5m"] * (mint.size + late.size),
            "ts_ms": np.concatenate([ts, ts[late]]),
            "open": np.concatenate([px, px[late]]),
            "high": np.concatenate([px, px[late]]) * 1.1,
            "low": np.concatenate([px, px[late]]) * 0.9,
            "close": np.concatenate([px, px[late]]),
            "volume": np.concatenate([np.ones(mint.size), np.full(late.size, 2.0)]),
        }
    )
    pq.write_table(table, tmp_path / "big.parquet")
    out = read(tmp_path / "big.parquet", mints=[f"m{i}" for i in range(n_mints)], end=JAN + per * STEP)
    c = out.candles
    assert len(c) == mint.size
    for i in range(n_mints):
        k = c.mints.index(f"m{i}")
        a, b = c.offsets[k], c.offsets[k + 1]
        assert np.array_equal(c.ts[a:b], ts[i * per : (i + 1) * per])
        assert np.array_equal(c.open[a:b], px[i * per : (i + 1) * per])
    # Each late row repeats a candle's prices with volume 2 instead of 1: a conflicting duplicate
    # whose winner (the higher volume) has the same prices, so the series above is unchanged.
    assert sum(e.details["count"] for e in out.errors) == 50
    assert sum(e.details["conflicting"] for e in out.errors) == 50


def test_a_worker_reads_each_month_into_the_month_befores_memory_once_that_is_gone(tmp_path, monkeypatch):
    """`kept_candle_buffers` (a `--parallel` run worker): a read writes into the buffers of the read
    before it only when nothing holds that read's candles any more; the results are a plain read's."""
    monkeypatch.setenv("QUANTLAB_CANDLE_CACHE_GB", "0")  # every read from the source
    rows = [bar("A", i, 1.0 + i, 2.0 + i, 0.5 + i, 1.5 + i) for i in range(6)]
    rows += [bar("B", i, 10.0 + i, 11.0 + i, 9.0 + i, 10.5 + i) for i in range(3, -1, -1)]  # out of order
    path = candles_db(tmp_path, rows)
    plain = {mint: series(read(path).candles, mint) for mint in ("A", "B")}
    with kept_candle_buffers():
        first = read(path).candles
        second = read(path).candles  # the first is alive: new memory
        assert not np.shares_memory(first.ts, second.ts)
        assert {mint: series(first, mint) for mint in ("A", "B")} == plain  # not written over
        assert {mint: series(second, mint) for mint in ("A", "B")} == plain
        kept = weakref.ref(second.ts.base)  # does not hold it
        del first, second
        third = read(path, mints=["B"]).candles  # nothing holds the second: its memory
        assert third.ts.base is kept()
        assert series(third, "B") == plain["B"]
        assert not third.ts.flags.writeable
    outside = read(path).candles  # outside the block: new memory
    assert not np.shares_memory(outside.ts, third.ts)
