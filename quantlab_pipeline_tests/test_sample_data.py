"""Sample data: deterministic for a seed, shaped like the reference month, and messy on purpose."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner

from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.sample_data import generate_sample_tables
from quantlab_pipeline.core.spec import TruthParams
from quantlab_pipeline.core.truth import compute_paths
from quantlab_pipeline.sources.alerts import read_alerts
from quantlab_pipeline.sources.candles import read_candles
from quantlab_pipeline.sources.sample_db import generate_sample_data

MONTHS = ["2024-01", "2024-02"]
JAN, FEB, MAR = 1_704_067_200_000, 1_706_745_600_000, 1_709_251_200_000
STEP = 300_000
HORIZON = 5 * 86_400_000


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "alerts.duckdb"
    generate_sample_data(path, months=MONTHS, alerts_per_month=200, seed=5)
    return path


def q(path: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def all_rows(path: Path) -> tuple[list, list]:
    return (
        q(path, "SELECT * FROM alerts ORDER BY ALL"),
        q(path, "SELECT * FROM ohlcv_candles ORDER BY ALL"),
    )


def test_same_seed_same_tables_other_seed_other_tables(tmp_path):
    a = generate_sample_data(tmp_path / "a.duckdb", months=["2024-03"], alerts_per_month=40, seed=1)
    b = generate_sample_data(tmp_path / "b.duckdb", months=["2024-03"], alerts_per_month=40, seed=1)
    c = generate_sample_data(tmp_path / "c.duckdb", months=["2024-03"], alerts_per_month=40, seed=2)
    assert all_rows(a.path) == all_rows(b.path)
    assert all_rows(a.path) != all_rows(c.path)
    assert (a.alert_rows, a.candle_rows) == (len(all_rows(a.path)[0]), len(all_rows(a.path)[1]))


def test_schema(db):
    assert q(
        db,
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'alerts' ORDER BY ordinal_position",
    ) == [
        ("call_id", "VARCHAR"),
        ("mint", "VARCHAR"),
        ("caller_name", "VARCHAR"),
        ("chain", "VARCHAR"),
        ("alert_ts_ms", "BIGINT"),
    ]
    assert [
        r[0]
        for r in q(
            db,
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'ohlcv_candles' ORDER BY ordinal_position",
        )
    ] == [
        "mint",
        "chain",
        "interval",
        "ts_ms",
        "open",
        "high",
        "low",
        "close",
        "volume",
    ]
    assert q(db, "SELECT DISTINCT interval FROM ohlcv_candles") == [("5m",)]


def test_alerts_per_month_and_months(db):
    per_month = dict(
        q(
            db,
            "SELECT strftime(epoch_ms(alert_ts_ms), '%Y-%m') AS m, count(*) FROM alerts WHERE alert_ts_ms IS NOT NULL GROUP BY m",
        )
    )
    # 200 rows are generated per month; re-calls and reposts may drift a few into the next month.
    assert per_month["2024-01"] >= 190 and per_month["2024-02"] >= 190
    assert sum(per_month.values()) == 2 * 200


def test_each_called_token_has_five_days_of_candles_from_the_first_boundary(db):
    # A token called once gets 1,440 five-minute slots from the first boundary >= the alert; a few
    # slots are empty on purpose (late first candles, holes, single missing candles). Candles before
    # the alert are its history (next test).
    rows = q(
        db,
        """
        WITH once AS (SELECT mint, min(alert_ts_ms) AS ts FROM alerts WHERE mint IS NOT NULL
                      GROUP BY mint HAVING count(DISTINCT alert_ts_ms) = 1)
        SELECT o.ts, min(c.ts_ms), max(c.ts_ms), count(DISTINCT c.ts_ms)
        FROM once o JOIN ohlcv_candles c ON c.mint = o.mint AND c.ts_ms >= o.ts GROUP BY o.mint, o.ts
        """,
    )
    exact = 0
    for alert_ts, first, last, n in rows:
        boundary = -(-alert_ts // STEP) * STEP
        assert boundary <= first and last <= boundary + 1439 * STEP and n <= 1440
        exact += first == boundary and last == boundary + 1439 * STEP
    assert exact > 0.9 * len(rows)
    assert sum(n for *_, n in rows) > 0.98 * 1440 * len(rows)


def test_most_tokens_have_a_day_of_history_before_their_first_call_and_some_none(db):
    rows = q(
        db,
        """
        WITH first AS (SELECT mint, min(alert_ts_ms) AS ts FROM alerts WHERE mint IS NOT NULL GROUP BY mint)
        SELECT f.ts, min(c.ts_ms) FILTER (WHERE c.ts_ms < f.ts), max(c.ts_ms) FILTER (WHERE c.ts_ms < f.ts)
        FROM first f JOIN ohlcv_candles c USING (mint) GROUP BY f.mint, f.ts
        """,
    )
    with_history = [(ts, lo, hi) for ts, lo, hi in rows if lo is not None]
    # 85 % of tokens go back 26-48 h, ending at the last interval boundary before the call
    assert 0.75 * len(rows) < len(with_history) < 0.95 * len(rows)
    assert all(26 * 3_600_000 - 2 * STEP <= ts - lo <= 48 * 3_600_000 + STEP for ts, lo, _ in with_history)
    assert sum(ts - hi <= STEP for ts, _, hi in with_history) > 0.95 * len(with_history)


def test_messy_alert_rows_exist(db):
    assert q(db, "SELECT count(*) FROM alerts WHERE mint IS NULL")[0][0] == 2 * len(MONTHS)
    assert q(db, "SELECT count(*) FROM alerts WHERE alert_ts_ms IS NULL")[0][0] == 1
    assert q(db, "SELECT count(*) FROM alerts WHERE call_id IS NULL")[0][0] > 0
    assert q(db, "SELECT count(*) FROM alerts WHERE caller_name IS NULL")[0][0] > 0
    assert q(db, "SELECT count(*) FROM alerts WHERE chain IS NULL")[0][0] > 0
    repeated = q(
        db,
        "SELECT call_id, min(alert_ts_ms), max(alert_ts_ms) FROM alerts WHERE call_id IS NOT NULL GROUP BY call_id HAVING count(*) > 1",
    )
    assert any(lo == hi for _, lo, hi in repeated)  # the same row twice
    assert any(lo < FEB <= hi for _, lo, hi in repeated)  # a repost in the next month


def test_callers_of_different_skill_and_recalled_tokens(db):
    callers = q(db, "SELECT count(DISTINCT caller_name) FROM alerts")[0][0]
    assert callers == 7
    recalls = q(
        db,
        """SELECT a.mint FROM alerts a JOIN alerts b ON a.mint = b.mint
           WHERE b.alert_ts_ms > a.alert_ts_ms AND a.caller_name <> b.caller_name AND a.call_id <> b.call_id""",
    )
    assert recalls
    # Candles of a re-called token cover both windows: through the later call's boundary + 5 days.
    mint = recalls[0][0]
    last_call = q(db, "SELECT max(alert_ts_ms) FROM alerts WHERE mint = ?", [mint])[0][0]
    last_candle = q(db, "SELECT max(ts_ms) FROM ohlcv_candles WHERE mint = ?", [mint])[0][0]
    assert last_candle >= -(-last_call // STEP) * STEP + 1439 * STEP - 60 * STEP  # allowing a final gap


def test_messy_candles_exist(db):
    no_candles = q(
        db,
        "SELECT count(DISTINCT mint) FROM alerts WHERE mint IS NOT NULL AND mint NOT IN (SELECT DISTINCT mint FROM ohlcv_candles)",
    )[0][0]
    assert no_candles > 0
    bad = q(
        db,
        "SELECT count(*) FROM ohlcv_candles WHERE NOT (low > 0 AND high < 'inf'::DOUBLE AND high >= open AND high >= close AND low <= open AND low <= close) OR close IS NULL OR isnan(close)",
    )[0][0]
    assert bad > 0
    dup_groups = q(
        db,
        "SELECT count(DISTINCT (open, high, low, close, volume)) FROM ohlcv_candles GROUP BY mint, interval, ts_ms HAVING count(*) > 1",
    )
    assert any(n == 1 for (n,) in dup_groups)  # identical copies
    assert any(n > 1 for (n,) in dup_groups)  # conflicting copies
    gaps = q(
        db,
        "SELECT count(*) FROM (SELECT ts_ms - lag(ts_ms) OVER (PARTITION BY mint ORDER BY ts_ms) AS d FROM ohlcv_candles) WHERE d > 4 * ?",
        [STEP],
    )[0][0]
    assert gaps > 0


def test_the_pipeline_sees_every_kind_of_problem(db):
    reasons = set()
    for lo, hi, first in ((JAN, FEB, True), (FEB, MAR, False)):
        alerts = read_alerts(str(db), "alerts", start_ms=lo, end_ms=hi, include_null_ts=first)
        reasons |= {e.reason for e in alerts.errors}
        candles = read_candles(
            str(db), mints=alerts.frame["mint"].to_list(), interval="5m", start_ms=lo, end_ms=hi + HORIZON
        )
        reasons |= {e.reason for e in candles.errors}
        truth = compute_paths(
            alerts.frame, candles.candles, run_id="r", interval="5m", horizon_ms=HORIZON, params=TruthParams()
        )
        reasons |= {e.reason for e in truth.errors}
        assert truth.paths.height > 0.9 * alerts.frame.height
        entries = truth.paths.select((truth.paths["entry_ts_ms"] - truth.paths["alert_ts_ms"]) // STEP).to_series()
        assert entries.max() >= 1  # some entries are delayed by a missing first candle
    assert reasons == {"null_field", "duplicate_call", "no_entry", "bad_candle", "duplicate_candle"}


def test_paths_look_like_memecoins(db):
    alerts = read_alerts(str(db), "alerts", start_ms=JAN, end_ms=MAR)
    candles = read_candles(
        str(db), mints=alerts.frame["mint"].to_list(), interval="5m", start_ms=JAN, end_ms=MAR + HORIZON
    )
    paths = compute_paths(
        alerts.frame, candles.candles, run_id="r", interval="5m", horizon_ms=HORIZON, params=TruthParams()
    ).paths
    assert paths["peak_multiple"].max() >= 10  # runners
    assert paths["dd_bps"].min() <= -9000  # rugs to near zero
    assert 0.05 < paths["hit_2x"].mean() < 0.6
    by_caller = paths.group_by("caller_name").agg(pl.col("hit_2x").mean())
    rates = dict(by_caller.iter_rows())
    assert rates["alpha_sniper"] > rates["rug_radar"]  # skill differs


def test_replaces_the_file_atomically_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "data" / "alerts.duckdb"
    generate_sample_data(out, months=["2024-01"], alerts_per_month=20, seed=1)
    first = q(out, "SELECT count(*) FROM alerts")[0][0]
    generate_sample_data(out, months=["2024-01", "2024-02"], alerts_per_month=20, seed=1)
    assert q(out, "SELECT count(*) FROM alerts")[0][0] == 2 * first - 1  # one null-ts row in both
    assert sorted(p.name for p in out.parent.iterdir()) == ["alerts.duckdb"]


def table_digest(path: Path, table: str) -> tuple[int, str]:
    """Row count and SHA-256 of a table's rows in storage order: every column's nulls and values,
    bit for bit (floats by their bytes, strings joined)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.sql(f"SELECT * FROM {table} ORDER BY rowid").to_arrow_table()
    finally:
        con.close()
    digest = hashlib.sha256()
    for name in rows.column_names:
        column = rows.column(name).combine_chunks()
        digest.update(name.encode())
        digest.update(column.is_null().to_numpy(zero_copy_only=False).tobytes())
        if pa.types.is_string(column.type):
            digest.update("\n".join(column.fill_null("").to_pylist()).encode())
        else:
            digest.update(column.fill_null(0).to_numpy().tobytes())
    return rows.num_rows, digest.hexdigest()


# Computed from the files the generator wrote at commit ca3f028, before the writer bounded its
# memory: three months with a call id repeated across months, and two months of over a thousand
# tokens each (several blocks of tokens, an hourly interval to keep it small).
FROZEN = {
    (("2024-01", "2024-02", "2024-03"), 30, 11, "5m"): {
        "alerts": (91, "3254c0c8d830b4c157074f14afe29b7a766c505bbc8cb4302fe6d9f7b89e9f94"),
        "ohlcv_candles": (140_291, "cbcf57f3c8d60cc0e72e46409a00ef2bc2ab509d0306f5ca48d1b7cec80613c9"),
    },
    (("2024-01", "2024-02"), 1_100, 3, "1h"): {
        "alerts": (2_201, "e6e79236de0ae0444fed5a90af5c481e260d1be80310ec9aeb9091a8b14d69da"),
        "ohlcv_candles": (308_647, "abd5bcd72968e5519214ab0460494d67f099b1b2ff692e34d98877eafafcb4c2"),
    },
}


@pytest.mark.parametrize("args", list(FROZEN), ids=lambda a: f"{len(a[0])}months-{a[1]}-{a[3]}")
def test_same_rows_in_the_same_order_as_before_streaming(tmp_path, args):
    months, per_month, seed, interval = args
    out = tmp_path / "alerts.duckdb"
    generate_sample_data(out, months=list(months), alerts_per_month=per_month, seed=seed, interval=interval)
    assert {table: table_digest(out, table) for table in ("alerts", "ohlcv_candles")} == FROZEN[args]


def test_memory_is_flat_in_the_number_of_months():
    """The candles come a block of tokens at a time: three months peak no higher than one (the
    alerts and token arrays of all months are small), and no block holds a month's rows."""

    def generate(months: list[str]) -> tuple[int, int, int]:
        tracemalloc.start()
        try:
            tables = generate_sample_tables(months, alerts_per_month=2_200, seed=3, interval="1h")
            largest = total = 0
            for block in tables.candle_blocks:
                largest, total = max(largest, block.num_rows), total + block.num_rows
            return tracemalloc.get_traced_memory()[1], largest, total
        finally:
            tracemalloc.stop()

    generate(["2024-01"])  # the first run's one-off allocations (caches of NumPy and Arrow)
    one_peak, _, one_rows = generate(["2024-01"])
    three_peak, three_largest, three_rows = generate(["2024-01", "2024-02", "2024-03"])
    assert three_rows > 2.5 * one_rows
    assert three_largest < one_rows / 2
    assert three_peak < 1.2 * one_peak


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(SpecError, match="month"):
        generate_sample_data(tmp_path / "x.duckdb", months=["2024-13"], alerts_per_month=20, seed=1)
    with pytest.raises(SpecError, match="alerts_per_month"):
        generate_sample_data(tmp_path / "x.duckdb", months=["2024-01"], alerts_per_month=3, seed=1)
    assert not (tmp_path / "x.duckdb").exists()


# -- CLI ----------------------------------------------------------------------------------------


def test_cli_writes_and_summarizes(tmp_path):
    from quantlab_pipeline.cli.sample_data import sample_data

    out = tmp_path / "s.duckdb"
    result = CliRunner().invoke(
        sample_data, ["--out", str(out), "--months", "2024-01..2024-02", "--alerts-per-month", "20", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    alerts, candles = q(out, "SELECT count(*) FROM alerts")[0][0], q(out, "SELECT count(*) FROM ohlcv_candles")[0][0]
    assert alerts == 41  # 2 × 20 + the null-timestamp row
    assert "alerts" in result.output and f"{candles:,}" in result.output
    assert "2024-01..2024-02 (2)" in result.output and str(out) in result.output


def test_cli_single_month(tmp_path):
    from quantlab_pipeline.cli.sample_data import parse_month_range

    assert parse_month_range("2024-02") == ["2024-02"]
    assert parse_month_range("2023-11..2024-02") == ["2023-11", "2023-12", "2024-01", "2024-02"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--months", "2024-13"], "--months: expected YYYY-MM or YYYY-MM..YYYY-MM, got '2024-13'"),
        (["--months", "2024-03..2024-01"], "--months: the range ends (2024-01) before it starts (2024-03)"),
        (["--months", "january"], "--months"),
        (["--alerts-per-month", "x"], "--alerts-per-month: expected an integer, got 'x'"),
        (["--alerts-per-month", "5"], "--alerts-per-month: must be at least 10, got 5"),
        (["--seed", "-1"], "--seed: must be at least 0, got -1"),
    ],
)
def test_cli_bad_values_exit_2_with_one_line(tmp_path, args, fragment):
    from quantlab_pipeline.cli.sample_data import sample_data

    result = CliRunner().invoke(sample_data, ["--out", str(tmp_path / "x.duckdb"), *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0]
    assert not (tmp_path / "x.duckdb").exists()
