"""The first-passage kernel (`nb.passage`, docs/performance.md "First-passage sweeps"): hand-computed
exits of single fixed levels, and the same four outputs as the general engine (`nb.policy.simulate_range`),
byte for byte, on random windows.

`run_policies(parallel=True)` sends first-passage policies to `nb.passage`; `parallel=False` runs
every policy in `simulate_range`, the reference here.
"""

from __future__ import annotations

import numpy as np
import pytest

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.nb.policy import EXIT_REASONS, NO_TRADE, QUIET_BLOCK
from quantlab_pipeline.core.policy import compile_policies, first_passage_policies, run_policies
from quantlab_pipeline.core.policy_spec import parse_policy
from quantlab_pipeline.core.sweep_spec import DEFAULT_GRID, parse_sweep

DELTA = 300_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00Z


def candles_of(bars: list[tuple[float, float, float, float]]) -> Candles:
    """One mint's bars (open, high, low, close) at `T0 + k * DELTA`."""
    columns = np.asarray(bars, dtype=np.float64).reshape(-1, 4)
    return Candles(
        mints=("M",),
        offsets=np.array([0, len(bars)], dtype=np.int64),
        ts=T0 + DELTA * np.arange(len(bars), dtype=np.int64),
        open=np.ascontiguousarray(columns[:, 0]),
        high=np.ascontiguousarray(columns[:, 1]),
        low=np.ascontiguousarray(columns[:, 2]),
        close=np.ascontiguousarray(columns[:, 3]),
    )


def both_engines(candles, start, stop, p0, policies):
    """The exits of the dispatching (parallel) path and of the general engine alone, asserted equal byte for byte."""
    compiled = compile_policies(policies)
    args = (
        candles,
        np.asarray(start, dtype=np.int64),
        np.asarray(stop, dtype=np.int64),
        np.asarray(p0, dtype=np.float64),
        candles.ts[np.minimum(start, len(candles) - 1)].astype(np.int64),
        DELTA,
        compiled,
    )
    fast = run_policies(*args, parallel=True)
    general = run_policies(*args, parallel=False)
    for name, ours, theirs in zip(("exit_ts", "exit_px", "reason", "low"), fast, general, strict=True):
        assert ours.dtype == theirs.dtype
        assert ours.tobytes() == theirs.tobytes(), name
    return fast


def exits(bars, policies: list[dict]) -> list[tuple]:
    """(exit candle, exit_px, reason, lowest held) per policy over one window of every bar, p0 the first open."""
    parsed = [parse_policy(p) for p in policies]
    assert first_passage_policies(compile_policies(parsed)).all()
    out_ts, out_px, out_reason, out_low = both_engines(candles_of(bars), [0], [len(bars)], [bars[0][0]], parsed)
    return [
        ((int(out_ts[p, 0]) - T0) / DELTA, float(out_px[p, 0]), EXIT_REASONS[out_reason[p, 0]], float(out_low[p, 0]))
        for p in range(len(parsed))
    ]


def fixed(stop_bps, take_profit_bps=None) -> dict:
    policy = {"kind": "fixed_stop", "stop_loss_bps": stop_bps}
    return policy if take_profit_bps is None else {**policy, "take_profit_bps": take_profit_bps}


STOP_95 = 100 * (1 - 500 / 10_000)  # p0 = 100, the levels as the kernels compute them
TARGET_110 = 100 * (1 + 1000 / 10_000)


def test_gap_through_the_stop_fills_at_the_open_and_its_low_is_not_held():
    bars = [(100, 101, 99, 100), (90, 92, 85, 88), (88, 89, 80, 81)]
    assert exits(bars, [fixed(500)]) == [(1, 90.0, "stop_loss", 90.0)]


def test_stop_inside_a_candle_fills_at_the_level_and_holds_its_low():
    bars = [(100, 101, 99, 100), (99, 99.5, 96, 97), (97, 98, 94, 95)]
    assert exits(bars, [fixed(500)]) == [(2, STOP_95, "stop_loss", 94.0)]


def test_stop_and_target_in_the_same_candle_exit_at_the_stop():
    bars = [(100, 101, 99, 100), (100, 120, 90, 110)]
    assert exits(bars, [fixed(500, 1000)]) == [(1, STOP_95, "stop_loss", 90.0)]


def test_target_inside_a_candle_fills_at_the_level_and_holds_its_low():
    bars = [(100, 101, 99, 100), (102, 112, 98, 111), (111, 111, 50, 60)]
    assert exits(bars, [fixed(500, 1000)]) == [(1, TARGET_110, "take_profit", 98.0)]


def test_gap_up_through_the_target_fills_at_the_open_without_its_low():
    bars = [(100, 101, 99, 100), (115, 118, 97, 116)]
    assert exits(bars, [fixed(500, 1000)]) == [(1, 115.0, "take_profit", 99.0)]


def test_neither_level_crossed_exits_at_the_last_close_at_ts_plus_interval():
    bars = [(100, 101, 99, 100), (100, 104, 97, 103), (103, 105, 96, 96.5)]
    assert exits(bars, [fixed(500, 1000)]) == [(3, 96.5, "end_of_data", 96.0)]


def test_a_one_level_ladder_selling_everything_is_a_target_with_its_own_reason():
    bars = [(100, 101, 99, 100), (102, 112, 98, 111)]
    ladder = {"kind": "ladder", "levels": [{"multiple": 1.1, "fraction": 1}], "stop_loss_bps": 500}
    assert exits(bars, [ladder]) == [(1, max(102, 100 * 1.1), "ladder_complete", 98.0)]


def test_equal_levels_across_policies_share_their_first_passage():
    bars = [(100, 101, 99, 100), (100, 109, 96, 108), (108, 125, 100, 120), (120, 121, 94, 95)]
    policies = [fixed(500, 1000), fixed(500, 2000), fixed(500), fixed(500, 1000), fixed(600, 1000), fixed(500, 3000)]
    assert exits(bars, policies) == [
        (2, TARGET_110, "take_profit", 96.0),
        (2, 100 * (1 + 2000 / 10_000), "take_profit", 96.0),
        (3, STOP_95, "stop_loss", 94.0),
        (2, TARGET_110, "take_profit", 96.0),
        (2, TARGET_110, "take_profit", 96.0),
        (3, STOP_95, "stop_loss", 94.0),
    ]


def test_an_empty_window_is_left_untouched():
    candles = candles_of([(100, 101, 99, 100), (100, 104, 97, 103)])
    out_ts, out_px, out_reason, out_low = both_engines(
        candles, [0, 1], [2, 1], [100.0, np.nan], [parse_policy(fixed(500, 1000))]
    )
    assert (out_reason[0, 1], out_ts[0, 1], out_px[0, 1], out_low[0, 1]) == (NO_TRADE, 0, 0.0, 0.0)
    assert EXIT_REASONS[out_reason[0, 0]] == "end_of_data"


def test_which_policies_take_the_first_passage():
    policies = [
        fixed(500, 1000),
        fixed(500),
        {"kind": "ladder", "levels": [{"multiple": 2, "fraction": 1}]},
        {"kind": "ladder", "levels": [{"multiple": 2, "fraction": 1 - 1e-12}], "stop_loss_bps": 100},
        {"kind": "combo", "policies": [fixed(300, 500)]},
        {"kind": "ladder", "levels": [{"multiple": 2, "fraction": 0.5}]},  # a remainder rides on
        {"kind": "ladder", "levels": [{"multiple": 2, "fraction": 0.5}, {"multiple": 3, "fraction": 0.5}]},
        {"kind": "trailing_stop", "activation_bps": 0, "trail_bps": 1000},
        {"kind": "time_stop", "max_hold": "1h", "stop_loss_bps": 500},
        {"kind": "combo", "policies": [fixed(300), fixed(500, 1000)]},
    ]
    mask = first_passage_policies(compile_policies([parse_policy(p) for p in policies]))
    assert mask.tolist() == [True] * 5 + [False] * 5


# -- against the general engine ------------------------------------------------------------------


def random_candles(rng: np.random.Generator, n: int) -> Candles:
    """A random walk on a 0.5 grid around 100 (levels of whole bps land on and near its prices),
    with gaps between candles, flat stretches and spikes."""
    close = np.maximum(100.0 + 0.5 * np.cumsum(rng.integers(-3, 4, n)), 1.0)
    gap = rng.random(n) < 0.15
    open_ = np.r_[100.0, close[:-1]]
    open_ = np.where(gap, np.maximum(open_ + 0.5 * rng.integers(-12, 13, n), 0.5), open_)
    quiet = rng.random(n) < 0.3
    reach = np.where(quiet, 0.0, 0.5 * rng.integers(0, 8, (2, n)))
    high = np.maximum(open_, close) + reach[0]
    low = np.maximum(np.minimum(open_, close) - reach[1], 0.25)
    return candles_of(list(zip(open_, high, low, close, strict=True)))


def random_policies(rng: np.random.Generator) -> list:
    """A grid of first-passage policies: stops and targets on whole and odd bps, duplicates included."""
    stops = [*rng.choice([50, 100, 200, 250, 300, 500, 700, 1000, 2000], 4), 500, 500, 333.3]
    targets = [None, *rng.choice([50, 100, 150, 200, 300, 500, 1000, 3000], 4), 500, 777.7]
    policies: list = [parse_policy(fixed(float(s), None if t is None else float(t))) for s in stops for t in targets]
    policies.append(parse_policy({"kind": "ladder", "levels": [{"multiple": 1.05, "fraction": 1}]}))
    one = [{"multiple": 1.03, "fraction": 1 - 1e-12}]
    policies.append(parse_policy({"kind": "ladder", "levels": one, "stop_loss_bps": 300}))
    return [policies[i] for i in rng.permutation(len(policies))]


def random_windows(rng: np.random.Generator, candles: Candles, n_windows: int):
    """Windows of 0 to ~20 blocks at random rows; p0 the first open, or a price near it."""
    n = len(candles)
    start = rng.integers(0, n, n_windows)
    stop = np.minimum(n, start + rng.integers(0, 20 * QUIET_BLOCK, n_windows))
    p0 = candles.open[start] + np.where(rng.random(n_windows) < 0.3, 0.5 * rng.integers(-2, 3, n_windows), 0.0)
    return start, stop, np.maximum(p0, 0.5)


@pytest.mark.parametrize("seed", range(40))
def test_first_passage_equals_the_general_engine_on_random_windows(seed):
    rng = np.random.default_rng(seed)
    candles = random_candles(rng, 2_000)
    policies = random_policies(rng)
    assert first_passage_policies(compile_policies(policies)).all()
    start, stop, p0 = random_windows(rng, candles, 300)
    out_reason = both_engines(candles, start, stop, p0, policies)[2]
    reasons = {EXIT_REASONS[code] for code in np.unique(out_reason) if code != NO_TRADE}
    assert {"stop_loss", "take_profit", "end_of_data"} <= reasons  # every kind of exit was compared


@pytest.mark.parametrize("seed", range(5))
def test_a_mixed_grid_keeps_its_rows_and_equals_the_general_engine(seed):
    rng = np.random.default_rng(100 + seed)
    candles = random_candles(rng, 2_000)
    policies = list(parse_sweep(list(DEFAULT_GRID)).policies)
    policies = [policies[i] for i in rng.permutation(len(policies))]
    mask = first_passage_policies(compile_policies(policies))
    assert 0 < mask.sum() < len(policies)
    start, stop, p0 = random_windows(rng, candles, 200)
    both_engines(candles, start, stop, p0, policies)
