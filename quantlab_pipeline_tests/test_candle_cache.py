"""The candle cache (docs/inputs.md "Inputs"): a repeated read is a hit equal to a fresh read; a changed
source misses; a bad entry falls back to the source and is removed; the size cap evicts least
recently used entries; a cap of 0 disables it; racing writers of one key leave one entry."""

from __future__ import annotations

import json
import mmap
import os
import shutil
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from quantlab_pipeline.core.errors import InputError
from quantlab_pipeline.sources import candle_cache
from quantlab_pipeline.sources.candles import read_candles
from quantlab_pipeline_tests.test_inputs import FEB, JAN, bar, candles_db, parquet_rows

ALL = 2**62  # every candle of the sample database
COLUMNS = ("offsets", "ts", "open", "high", "low", "close", "volume")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """This test's own cache; the entries directory `read_candles` uses."""
    monkeypatch.setenv("QUANTLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("QUANTLAB_CANDLE_CACHE_GB", raising=False)
    return candle_cache.cache_dir()


def entries(root: Path, expect: int | None = None, timeout_s: float = 30.0) -> list[Path]:
    """The cache's entries once its detached writers are done (no temporary directory left)."""
    deadline = time.monotonic() + timeout_s
    while True:
        names = list(root.iterdir()) if root.exists() else []
        done = [p for p in names if not p.name.startswith(".")]
        if len(done) == len(names) and (expect is None or len(done) == expect):
            return sorted(done)
        if time.monotonic() > deadline:
            pytest.fail(f"cache writers not done after {timeout_s} s: {sorted(p.name for p in names)}")
        time.sleep(0.02)


def mints_of(db: Path) -> list[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT DISTINCT mint FROM ohlcv_candles").fetchall()]
    finally:
        con.close()


def read(source, mints, start=JAN, end=FEB):
    return read_candles(str(source), mints=list(mints), interval="5m", start_ms=start, end_ms=end)


def fresh(source, mints, monkeypatch, start=JAN, end=FEB):
    with monkeypatch.context() as m:
        m.setenv("QUANTLAB_CANDLE_CACHE_GB", "0")
        return read(source, mints, start, end)


def assert_same(a, b) -> None:
    assert a.candles.mints == b.candles.mints
    for name in COLUMNS:
        x, y = getattr(a.candles, name), getattr(b.candles, name)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), name
    assert a.errors == b.errors


def is_mapped(read) -> bool:
    base = read.candles.ts.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


def test_a_hit_equals_a_fresh_read_and_is_mapped_read_only(sample_db, cache, monkeypatch):
    mints = mints_of(sample_db)
    first = read(sample_db, mints, 0, ALL)
    assert not is_mapped(first) and not first.candles.ts.flags.writeable
    assert len(entries(cache, expect=1)) == 1
    hit = read(sample_db, reversed(mints), 0, ALL)  # the mints' order is no part of the key
    assert is_mapped(hit) and all(not getattr(hit.candles, c).flags.writeable for c in COLUMNS)
    expected = fresh(sample_db, mints, monkeypatch, 0, ALL)
    assert expected.errors, "the sample month has bad and duplicate candles to report"
    assert len(expected.candles) > 1000
    assert_same(hit, expected)
    assert_same(first, expected)
    with pytest.raises(ValueError, match="read-only"):
        hit.candles.close[0] = 1.0


def test_a_different_query_is_its_own_entry(tmp_path, cache):
    db = candles_db(tmp_path, [bar("A", 0), bar("A", 1, 2.0, 2.0, 2.0, 2.0), bar("B", 0)])
    read(db, ["A", "B"])
    entries(cache, expect=1)
    assert len(read(db, ["A"]).candles) == 2
    assert len(read(db, ["A", "B"], end=JAN + 300_000).candles) == 2
    assert len(entries(cache, expect=3)) == 3


def test_a_changed_duckdb_source_misses(tmp_path, cache, monkeypatch):
    db = candles_db(tmp_path, [bar("A", 0), bar("A", 1, 2.0, 2.0, 2.0, 2.0)])
    read(db, ["A"])
    entries(cache, expect=1)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO ohlcv_candles VALUES ('A', 'solana', '5m', ?, 3, 3, 3, 3, 1)", [JAN + 2 * 300_000])
    con.close()
    appended = read(db, ["A"])
    assert not is_mapped(appended)
    assert appended.candles.close.tolist() == [1.0, 2.0, 3.0]
    # Rewritten whole (a new file renamed over the old one), same rows count as before the append.
    other = tmp_path / "other"
    other.mkdir()
    shutil.move(candles_db(other, [bar("A", 0, 5.0, 5.0, 5.0, 5.0)]), db)
    assert read(db, ["A"]).candles.close.tolist() == [5.0]
    assert len(entries(cache, expect=3)) == 3
    assert_same(read(db, ["A"]), fresh(db, ["A"], monkeypatch))


def test_a_changed_parquet_source_misses(tmp_path, cache):
    root = tmp_path / "candles"
    root.mkdir()
    pq.write_table(parquet_rows([bar("A", 0)]), root / "jan-1.parquet")
    assert read(root, ["A"]).candles.ts.tolist() == [JAN]
    entries(cache, expect=1)
    assert is_mapped(read(root, ["A"]))
    pq.write_table(parquet_rows([bar("A", 1)]), root / "jan-2.parquet")  # a new file in the directory
    assert read(root, ["A"]).candles.ts.tolist() == [JAN, JAN + 300_000]


@pytest.mark.parametrize("damage", ["truncated column", "missing column", "garbage meta", "other key"])
def test_a_bad_entry_falls_back_to_the_source_and_is_replaced(sample_db, cache, monkeypatch, damage):
    mints = mints_of(sample_db)
    read(sample_db, mints, 0, ALL)
    (entry,) = entries(cache, expect=1)
    if damage == "truncated column":
        with open(entry / "high", "r+b") as fh:
            fh.truncate(os.path.getsize(entry / "high") - 8)
    elif damage == "missing column":
        (entry / "volume").unlink()
    elif damage == "garbage meta":
        (entry / "meta.json").write_bytes(b'{"key": ')
    else:  # a hash collision: an entry of another read under this name
        meta = json.loads((entry / "meta.json").read_bytes())
        meta["key"]["end_ms"] -= 1
        (entry / "meta.json").write_text(json.dumps(meta))
    again = read(sample_db, mints, 0, ALL)
    assert not is_mapped(again) and again.errors
    assert_same(again, fresh(sample_db, mints, monkeypatch, 0, ALL))
    assert entries(cache, expect=1) == [entry]  # the bad entry was removed, the read cached again
    hit = read(sample_db, mints, 0, ALL)
    assert is_mapped(hit)
    assert_same(hit, again)


def test_the_cap_evicts_the_least_recently_used(tmp_path, cache, monkeypatch):
    db = candles_db(tmp_path, [bar("A", i) for i in range(2000)])
    span = 500 * 300_000

    def part(k: int):
        return read(db, ["A"], start=JAN + k * span, end=JAN + (k + 1) * span)

    part(0)
    (first,) = entries(cache, expect=1)
    size = sum(f.stat().st_size for f in first.iterdir())
    monkeypatch.setenv("QUANTLAB_CANDLE_CACHE_GB", str(2.5 * size / 1e9))  # room for two entries
    part(1)
    entries(cache, expect=2)
    time.sleep(0.05)
    assert is_mapped(part(0))  # a hit: entry 0 is now the most recently used
    part(2)
    time.sleep(0.05)
    kept = entries(cache, expect=2)
    assert first in kept
    assert is_mapped(part(2)) and is_mapped(part(0)) and not is_mapped(part(1))


def test_a_cap_of_zero_disables_the_cache(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("QUANTLAB_CANDLE_CACHE_GB", "0")
    db = candles_db(tmp_path, [bar("A", 0)])
    read(db, ["A"])
    assert not is_mapped(read(db, ["A"]))
    assert not cache.exists()


def test_a_bad_cap_names_the_variable(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("QUANTLAB_CANDLE_CACHE_GB", "lots")
    with pytest.raises(InputError, match="QUANTLAB_CANDLE_CACHE_GB='lots'"):
        read(candles_db(tmp_path, [bar("A", 0)]), ["A"])


def test_racing_writers_of_one_key_leave_one_entry(sample_db, cache, monkeypatch):
    mints = mints_of(sample_db)
    done = read(sample_db, mints, 0, ALL)
    (entry,) = entries(cache, expect=1)
    key = json.loads((entry / "meta.json").read_bytes())["key"]
    shutil.rmtree(entry)
    for _ in range(3):  # three detached writers of the same entry at once
        candle_cache.store(cache, key, done, candle_cache.cap_bytes())
    assert entries(cache, expect=1) == [entry]
    hit = read(sample_db, mints, 0, ALL)
    assert is_mapped(hit)
    assert_same(hit, fresh(sample_db, mints, monkeypatch, 0, ALL))
