"""The candle set's per-alert lookups: mint → row (`Candles.mint_index`) and `[start, stop)` windows
(`Candles.window_bounds`), checked against plain Python and `np.searchsorted` on random data."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from quantlab_pipeline.core.candles import Candles, _string_buffers
from quantlab_pipeline.core.nb.windows import BOUNDS_AHEAD, MINT_LOOKUP_AHEAD, build_mint_table, lookup_mints
from quantlab_pipeline_tests.builders import candles_from_rows

MINTS = ("So11111111111111111111111111111111111111112", "0xabc", "B", "é-unicode", "")


def candles_of(mints) -> Candles:
    return candles_from_rows((m, 1_000 * k, 1.0, 1.0, 1.0, 1.0) for k, m in enumerate(mints))


def test_mint_index_finds_each_mint_and_gives_minus_one_for_unknown_or_null():
    candles = candles_of(MINTS)
    row = {m: k for k, m in enumerate(candles.mints)}
    names = [*MINTS, "missing", None, "B", "So1111"]
    expected = [row[m] for m in MINTS] + [-1, -1, row["B"], -1]
    assert candles.mint_index(pl.Series(names, dtype=pl.String)).tolist() == expected
    assert candles.mint_index(["B", "missing", ""]).tolist() == [row["B"], -1, row[""]]
    assert candles.mint_index(pl.Series(names).cast(pl.Categorical)).tolist() == expected


def test_mint_index_of_sliced_and_chunked_series_and_of_no_candles():
    candles = candles_of(MINTS)
    sliced = pl.Series(["x", "B", "0xabc", "y"]).slice(1, 2)
    assert candles.mint_index(sliced).tolist() == [candles.mints.index("B"), candles.mints.index("0xabc")]
    chunked = pl.concat([pl.Series(["B", "x"]), pl.Series([None, "0xabc"])], rechunk=False)
    assert candles.mint_index(chunked).tolist() == [candles.mints.index("B"), -1, -1, candles.mints.index("0xabc")]
    assert Candles.empty().mint_index(["B", None]).tolist() == [-1, -1]
    assert candles.mint_index(pl.Series([], dtype=pl.String)).tolist() == []


def test_mint_lookup_is_exact_when_every_hash_collides():
    """Equal hashes only share a probe sequence: the bytes decide, so a collision never mismatches."""
    mints = pl.Series([f"mint-{k}" for k in range(3 * MINT_LOOKUP_AHEAD)])
    keys, rows = build_mint_table(np.zeros(mints.len(), dtype=np.uint64))
    names = pl.Series([f"mint-{k}" for k in range(3 * MINT_LOOKUP_AHEAD + 5)][::-1])
    out = np.empty(names.len(), dtype=np.int64)
    lookup_mints(
        keys, rows, *_string_buffers(mints), np.zeros(names.len(), dtype=np.uint64), *_string_buffers(names), out
    )
    assert out.tolist() == [-1] * 5 + list(range(3 * MINT_LOOKUP_AHEAD))[::-1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_window_bounds_equal_searchsorted_on_random_candles(seed):
    rng = np.random.default_rng(seed)
    n_mints = 40
    rows = []
    for k in range(n_mints):
        n = int(rng.integers(0, 60))  # some mints have no candle at all
        ts = np.sort(rng.choice(np.arange(0, 600_000, 1_000), size=n, replace=False))
        rows += [(f"m{k}", int(t), 1.0, 1.0, 1.0, 1.0) for t in ts]
    candles = candles_from_rows(rows)
    alerts = 4 * BOUNDS_AHEAD  # long enough for the prefetch pipeline to run ahead
    names = [f"m{k}" for k in rng.integers(0, n_mints + 5, alerts)]  # m40..m44 are unknown
    lo = rng.integers(-10_000, 610_000, alerts)
    hi = lo + rng.integers(-5_000, 300_000, alerts)  # some empty or reversed windows
    start, stop = candles.window_bounds(pl.Series(names), lo, hi)
    for i, name in enumerate(names):
        if name not in candles.mints:
            assert (start[i], stop[i]) == (0, 0)
            continue
        k = candles.mints.index(name)
        a, b = candles.offsets[k], candles.offsets[k + 1]
        first = a + np.searchsorted(candles.ts[a:b], lo[i], side="left")
        end = max(first, a + np.searchsorted(candles.ts[a:b], hi[i], side="left"))
        assert (start[i], stop[i]) == (first, end), (name, lo[i], hi[i])
