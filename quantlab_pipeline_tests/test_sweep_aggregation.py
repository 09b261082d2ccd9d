"""The sweep's compiled aggregation (docs/performance.md, "Aggregation in the kernel") gives the
numbers Polars gives for the same trades, bit for bit, and the daily sums and counts per
(policy, UTC day) of the same returns."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from quantlab_pipeline.core import frontier as frontier_module
from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.confidence import DAY_MS, INTERVAL_SCHEMA, return_intervals
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.frontier import (
    _STAT_NAMES,
    BEST_ROWS,
    check_sweep_memory,
    simulated_policies,
    sweep_month,
    sweep_peak_bytes,
)
from quantlab_pipeline.core.inputs import DEFAULT_CALLER
from quantlab_pipeline.core.nb.policy import NO_TRADE
from quantlab_pipeline.core.nb.sweep import QUANTILE_SAMPLE, aggregate_policies, linear_quantile
from quantlab_pipeline.core.policy import (
    IS_STOP_OUT,
    ExitBuffers,
    compile_policies,
    run_policies,
    simulate_policies,
    simulate_trades,
)
from quantlab_pipeline.core.policy_spec import policy_id_of
from quantlab_pipeline.core.spec import Execution
from quantlab_pipeline.core.summary import metric_exprs
from quantlab_pipeline.core.sweep_spec import hold_to_horizon, parse_sweep

DELTA = 300_000
N_CANDLES = 40


def random_month(n_paths: int, seed: int) -> tuple[pl.DataFrame, Candles]:
    """Random walks of `N_CANDLES` candles per mint, entries spread over four UTC days, callers
    with a null one, and peaks of which some are null or not above 1 (no tail capture)."""
    rng = np.random.default_rng(seed)
    mints = [f"m{i:03d}" for i in range(n_paths)]
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.08, (n_paths, N_CANDLES)), axis=1))
    open_ = np.concatenate([np.full((n_paths, 1), 100.0), close[:, :-1]], axis=1)
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.05, close.shape)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.05, close.shape)))
    alert_ts = (rng.integers(0, 4, n_paths) * DAY_MS + rng.integers(0, 200, n_paths) * DELTA).astype(np.int64)
    ts = alert_ts[:, None] + np.arange(N_CANDLES)[None, :] * DELTA
    candles = Candles.from_frame(
        pl.DataFrame(
            {
                "mint": np.repeat(mints, N_CANDLES),
                "ts_ms": ts.reshape(-1),
                "open": open_.reshape(-1),
                "high": high.reshape(-1),
                "low": low.reshape(-1),
                "close": close.reshape(-1),
            }
        )
    )
    peak = high.max(axis=1) / 100.0
    peak[::7] = 0.9  # never above entry: no tail capture
    callers = [None if i % 5 == 0 else f"c{i % 3}" for i in range(n_paths)]
    paths = pl.DataFrame(
        {
            "call_id": mints,
            "caller_name": callers,
            "mint": mints,
            "alert_ts_ms": alert_ts,
            "p0": [100.0] * n_paths,
            "entry_ts_ms": alert_ts,
            "peak_multiple": [None if i % 11 == 0 else float(p) for i, p in enumerate(peak)],
        },
        schema_overrides={"caller_name": pl.String, "peak_multiple": pl.Float64},
    )
    return paths, candles


GRID = {
    "templates": [
        {"kind": "fixed_stop", "stop_loss_bps": [300, 1000, 3000], "take_profit_bps": [500, 2000, None]},
        {"kind": "trailing_stop", "activation_bps": [0, 1000], "trail_bps": [500, 2000], "hard_stop_bps": [None, 2000]},
        {"kind": "time_stop", "max_hold": ["15m", "1h"], "stop_loss_bps": [None, 1500]},
    ],
    "per_caller": True,
}
COMMON = dict(run_id="run", interval_ms=DELTA, horizon_ms=N_CANDLES * DELTA, execution=Execution())


def polars_stats(paths: pl.DataFrame, candles: Candles, policies) -> pl.DataFrame:
    """The metrics as Polars aggregates the per-trade frame: all callers (`caller_name` null) and per caller."""
    outcomes = simulate_policies(
        paths, candles, policies, interval_ms=DELTA, horizon_ms=N_CANDLES * DELTA, execution=Execution()
    )
    caller = paths.get_column("caller_name").fill_null(DEFAULT_CALLER).gather(outcomes.get_column("path_index"))
    outcomes = outcomes.with_columns(caller.alias("caller_name"))
    ids = pl.DataFrame({"policy_index": range(len(policies)), "policy_id": [policy_id_of(p) for p in policies]})
    every = outcomes.group_by("policy_index").agg(metric_exprs(*_STAT_NAMES))
    every = every.with_columns(pl.lit(None, dtype=pl.String).alias("caller_name"))
    by_caller = outcomes.group_by("policy_index", "caller_name").agg(metric_exprs(*_STAT_NAMES))
    return (
        pl.concat([every, by_caller], how="diagonal")
        .join(ids, on="policy_index")
        .select("policy_id", "caller_name", *_STAT_NAMES)
    )


def test_compiled_metrics_equal_polars_bit_for_bit():
    paths, candles = random_month(400, seed=7)
    sweep = parse_sweep(GRID)
    frontier = sweep_month([(paths, candles)], sweep, intervals=False, **COMMON).frontier
    expected = polars_stats(paths, candles, sweep.policies)
    got = frontier.select("policy_id", "caller_name", *_STAT_NAMES[:-1])
    joined = got.join(expected, on=["policy_id", "caller_name"], how="full", nulls_equal=True, suffix="_polars")
    assert joined.height == frontier.height == len(sweep.policies) * 5  # all callers + c0, c1, c2, default
    assert joined.get_column("trades_count").null_count() == 0
    for name in _STAT_NAMES[:-1]:
        mine = joined.get_column(name).to_numpy()
        theirs = joined.get_column(f"{name}_polars").to_numpy()
        # bit for bit: equal values, nulls at the same rows (no trade / no tail capture)
        assert np.array_equal(mine, theirs, equal_nan=True), name
    assert joined.get_column("avg_tail_capture").null_count() == 0  # every group has a peak above 1
    assert (joined.get_column("trades_count") > 0).all()


def test_daily_sums_and_counts_per_policy_and_day():
    paths, candles = random_month(120, seed=3)
    sweep = parse_sweep({"templates": [{"kind": "fixed_stop", "stop_loss_bps": [500, 2000]}]})
    benchmark = hold_to_horizon(N_CANDLES * DELTA)
    results = sweep_month([(paths, candles)], sweep, benchmark=benchmark, **COMMON)
    simulated = simulated_policies(sweep, benchmark)
    assert results.policy_ids == tuple(policy_id_of(p) for p in simulated) and len(simulated) == 3
    trades = simulate_policies(
        paths, candles, simulated, interval_ms=DELTA, horizon_ms=N_CANDLES * DELTA, execution=Execution()
    )
    expected = (
        trades.group_by("policy_index", (pl.col("entry_ts_ms") // DAY_MS).alias("day"))
        .agg(pl.len().alias("n"), pl.col("realized_return_bps").sum().alias("s"))
        .sort("policy_index", "day")
    )
    days = results.daily.day_numbers
    assert days.tolist() == sorted((paths.get_column("entry_ts_ms") // DAY_MS).unique().to_list())
    rows, cols = np.nonzero(results.daily.counts)
    assert rows.tolist() == expected.get_column("policy_index").to_list()
    assert days[cols].tolist() == expected.get_column("day").to_list()
    assert results.daily.counts[rows, cols].tolist() == expected.get_column("n").to_list()
    np.testing.assert_allclose(results.daily.sums[rows, cols], expected.get_column("s").to_numpy(), rtol=1e-12)
    assert results.daily.counts.sum() == trades.height


def test_streamed_segments_give_the_same_results():
    paths, candles = random_month(90, seed=11)
    sweep = parse_sweep(GRID)
    whole = sweep_month([(paths, candles)], sweep, **COMMON)
    parts = [paths.slice(0, 31), paths.slice(31, 2), paths.slice(33)]
    segments = [(p, candles) for p in parts]  # the whole candle set serves every part
    streamed = sweep_month(segments, sweep, **COMMON)
    assert streamed.frontier.equals(whole.frontier)
    assert np.array_equal(streamed.daily.counts, whole.daily.counts)
    assert np.array_equal(streamed.daily.sums, whole.daily.sums)


def test_chunks_reuse_their_exits_memory_and_give_the_same_results(monkeypatch):
    """Chunks of 4 policies (the last one short) write into the first chunk's arrays, paths
    without candles included, and give the frontier and daily sums of one chunk."""
    paths, candles = random_month(60, seed=13)
    paths = paths.with_columns(
        pl.when(pl.int_range(pl.len()) % 9 == 0).then(pl.lit("no candles")).otherwise("mint").alias("mint")
    )
    sweep = parse_sweep(GRID)
    whole = sweep_month([(paths, candles)], sweep, **COMMON)
    taken = []
    original = ExitBuffers.take
    monkeypatch.setattr(ExitBuffers, "take", lambda self, shape: taken.append(original(self, shape)) or taken[-1])
    monkeypatch.setattr(frontier_module, "POLICY_CHUNK", 4)
    chunked = sweep_month([(paths, candles)], sweep, **COMMON)
    assert len(sweep.policies) % 4 and len(taken) == -(-len(sweep.policies) // 4)
    assert all(np.shares_memory(out[0], taken[0][0]) for out in taken)  # one allocation for every chunk
    assert chunked.frontier.equals(whole.frontier)
    assert np.array_equal(chunked.daily.sums, whole.daily.sums)
    assert np.array_equal(chunked.daily.counts, whole.daily.counts)


def test_exit_buffers_clear_what_the_kernel_leaves_untouched():
    """Written over by a kernel call, the arrays still hold the last call's exits; the paths whose
    windows have no candle must read "no trade" again."""
    paths, candles = random_month(30, seed=17)
    policies = parse_sweep(GRID).policies
    entry_ts = paths.get_column("entry_ts_ms").to_numpy()
    p0 = paths.get_column("p0").to_numpy()
    start, stop = candles.window_bounds(paths.get_column("mint"), entry_ts, entry_ts + N_CANDLES * DELTA)
    stop[::4] = start[::4]  # windows without a candle
    compiled = compile_policies(policies[:6])
    fresh = run_policies(candles, start, stop, p0, entry_ts, DELTA, compiled, parallel=True)
    buffers = ExitBuffers()
    for array in buffers.take((8, paths.height)):
        array.fill(7)  # what a bigger call before wrote
    reused = run_policies(candles, start, stop, p0, entry_ts, DELTA, compiled, parallel=True, buffers=buffers)
    assert all(np.shares_memory(a, b) for a, b in zip(reused, buffers.take((8, paths.height)), strict=True))
    assert (reused[2][:, ::4] == NO_TRADE).all()
    for a, b in zip(reused, fresh, strict=True):
        assert a.shape == b.shape == (6, paths.height) and np.array_equal(a, b)
    regrown = buffers.take((9, paths.height))
    assert not any(np.shares_memory(a, b) for a, b in zip(regrown, reused, strict=True))
    assert (regrown[2] == NO_TRADE).all()


def quantile(values: np.ndarray, n: int, q: float) -> float:
    """`linear_quantile` on a copy, with the scratch space it needs."""
    return linear_quantile(values[:n].copy(), n, q, np.empty(n))


def test_linear_quantile_by_hand():
    # sorted: 1, 2, 4, 8 → median at 1.5: 2 + 0.5 × (4 - 2) = 3; 5 % at 3 × 0.05: 1 + 0.15 × (2 - 1)
    assert quantile(np.array([8.0, 1.0, 4.0, 2.0]), 4, 0.5) == 3.0
    assert quantile(np.array([8.0, 1.0, 4.0, 2.0]), 4, 0.05) == 1.0 + (3 * 0.05) * 1.0
    assert quantile(np.array([5.0, -1.0, 9.0, 99.0]), 3, 0.5) == 5.0  # odd count: the middle one


def sorted_quantile(values: np.ndarray, q: float) -> float:
    """The linear quantile from a full sort: the order statistics `linear_quantile` selects."""
    ordered = np.sort(values)
    position = (len(values) - 1) * q
    i, j = int(np.floor(position)), int(np.ceil(position))
    return ordered[i] if i == j else (position - i) * (ordered[j] - ordered[i]) + ordered[i]


def bracket_cases() -> dict[str, np.ndarray]:
    """Arrays long enough for the sampled bracket (≥ 4 × `QUANTILE_SAMPLE`), including ones where
    the evenly spaced sample misses the wanted order statistics, so every value is selected among."""
    rng = np.random.default_rng(11)
    n = 19_188
    misleading = rng.normal(size=n)
    misleading[:: n // QUANTILE_SAMPLE] = 1e9  # the sample sees only the largest values
    return {
        "normal": rng.normal(size=n),
        "ties": rng.choice([-500.0, -500.0, 0.0, 120.5, 1000.0], size=n),  # stop-outs at one return
        "one value": np.full(n, -275.0),
        "ascending": np.sort(rng.normal(size=n)),
        "descending": np.sort(rng.normal(size=n))[::-1].copy(),
        "sample misleads": misleading,
        "the smallest size": rng.normal(size=4 * QUANTILE_SAMPLE),
        "one below it": rng.normal(size=4 * QUANTILE_SAMPLE - 1),
    }


@pytest.mark.parametrize("q", [0.0, 0.05, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("case", list(bracket_cases()))
def test_linear_quantile_selects_within_the_sampled_bracket_or_among_all(case, q):
    values = bracket_cases()[case]
    assert quantile(values, len(values), q) == sorted_quantile(values, q)


def test_linear_quantile_reads_only_the_first_n_values():
    values = np.concatenate([np.random.default_rng(3).normal(size=5_000), np.full(3_000, -1e9)])
    assert quantile(values, 5_000, 0.05) == sorted_quantile(values[:5_000], 0.05)


def test_a_grid_is_limited_by_the_memory_it_needs():
    # one chunk's exits: 128 policies × 20,000 entries × 50 B = 128,000,000 B; 10,000 policies × 4,096 B
    assert sweep_peak_bytes(10_000, 20_000) == 128_000_000 + 40_960_000
    assert sweep_peak_bytes(3, 10, n_groups=2, n_days=5) == 3 * 10 * 50 + 3 * (2 * 4096 + 5 * 16)
    check_sweep_memory(10_000, 20_000, 168_960_000, where="--sweep")  # exactly enough
    check_sweep_memory(10**6, 20_000, None, where="--sweep")  # memory unknown: never refused
    with pytest.raises(SpecError) as info:
        check_sweep_memory(10_000, 20_000, 2**27, where="--sweep")
    assert str(info.value) == (
        "--sweep: 10,000 policies over 20,000 entries need 0.2 GiB of memory, 0.1 GiB available; "
        "narrow the parameter lists or the months"
    )


def test_a_grid_of_10000_policies_parses():
    grid = [
        {
            "kind": "time_stop",
            "max_hold": [f"{h}h" for h in range(1, 101)],
            "stop_loss_bps": list(range(10, 1010, 10)),
        }
    ]
    assert len(parse_sweep(grid).policies) == 10_000


def test_the_best_rows_get_the_intervals_of_their_trades():
    """Rows of rank ≤ BEST_ROWS: the bootstrap intervals of their trades' returns in the month's
    order (all callers' or the row's caller's), as a policy run of that policy gives them; null below."""
    paths, candles = random_month(150, seed=5)
    sweep = parse_sweep(GRID)
    frontier = sweep_month([(paths, candles)], sweep, **COMMON).frontier
    by_id = {policy_id_of(p): p for p in sweep.policies}
    order = paths.select("call_id", "alert_ts_ms", pl.col("caller_name").fill_null(DEFAULT_CALLER))
    names = list(INTERVAL_SCHEMA.names())
    checked = 0
    for row in frontier.iter_rows(named=True):
        if row["rank"] > BEST_ROWS:
            assert all(row[n] is None for n in names)
            continue
        trades = (
            simulate_trades(
                paths,
                candles,
                by_id[row["policy_id"]],
                run_id="r",
                policy_id="p",
                interval_ms=DELTA,
                horizon_ms=N_CANDLES * DELTA,
                execution=Execution(),
            )
            .join(order, on="call_id")
            .sort("alert_ts_ms", "call_id")
        )
        if row["caller_name"] is not None:
            trades = trades.filter(pl.col("caller_name") == row["caller_name"])
        expected = return_intervals([trades.get_column("realized_return_bps").to_numpy()]).row(0, named=True)
        assert [row[n] for n in names] == [expected[n] for n in names]
        checked += 1
    assert checked == BEST_ROWS * 5  # every group has more than BEST_ROWS policies


def test_daily_sums_by_hand():
    """Two policies over four paths on three days (p0 100, no costs): policy 0 trades paths 0 and 2,
    policy 1 paths 1 and 3; a day index per path. Returns: exit 101 → 100 bps, 98 → -200, 103 → 300, 100.5 → 50."""
    no = NO_TRADE
    out_px = np.array([[101.0, 0.0, 98.0, 0.0], [0.0, 103.0, 0.0, 100.5]])
    out_reason = np.array([[0, no, 0, no], [no, 2, no, 2]], dtype=np.int8)
    out_ts, out_low = np.full((2, 4), 10, dtype=np.int64), np.full((2, 4), 100.0)
    every = np.arange(4, dtype=np.int64)
    _, sums, counts = aggregate_policies(
        out_ts,
        out_px,
        out_reason,
        out_low,
        np.zeros(4, dtype=np.int64),
        np.full(4, 100.0),
        np.full(4, np.nan),
        0.0,
        IS_STOP_OUT,
        every,
        np.array([0, 4], dtype=np.int64),
        np.array([0, 0, 1, 2], dtype=np.int64),
        3,
    )
    assert counts.tolist() == [[1, 1, 0], [1, 0, 1]]
    assert np.allclose(sums, [[100.0, -200.0, 0.0], [300.0, 0.0, 50.0]], rtol=1e-12, atol=1e-9)
