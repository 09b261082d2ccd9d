"""The compiled kernels equal a plain per-candle Python reading of the "Policies" of docs/inputs.md on random paths.

The reference below is written from the design text, not from the kernel: it runs every leaf of a
combo in lockstep, candle by candle, and at each step of the §6 order (time stop at the open,
stop-type exits, profit exits, state update) lets the first exit found end the trade — the
highest stop level, the lowest completing profit level, ties to the first listed leaf. Prices sit
on an integer grid with p0 mostly 100, so levels and prices coincide often and the tie rules are
exercised.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantlab_pipeline.core.nb.policy import QUIET_BLOCK
from quantlab_pipeline.core.policy import simulate_policies, simulate_trades
from quantlab_pipeline.core.policy_spec import parse_policy, policy_to_dict
from quantlab_pipeline.core.spec import Execution
from quantlab_pipeline_tests.builders import candles_from_rows

DELTA = 300_000
T0 = 1_700_000_000_000
EXECUTION = Execution(fee_bps=30, slippage_bps=10)
TOL = 1e-9  # a ladder remainder this small is a closed position


# -- the reference -----------------------------------------------------------------------------


def flatten(node: dict) -> list[dict]:
    return [leaf for sub in node["policies"] for leaf in flatten(sub)] if node["kind"] == "combo" else [node]


def reference_trade(policy: dict, bars: list[tuple], p0: float, entry_ts: int) -> tuple:
    """(exit_ts, exit_px, reason, lowest price held) for one trade over window `bars` (ts, o, h, l, c)."""
    leaves = flatten(policy)
    states = []
    for leaf in leaves:
        levels = []
        if leaf["kind"] in ("fixed_stop", "time_stop") and "take_profit_bps" in leaf:
            levels = [(p0 * (1 + leaf["take_profit_bps"] / 10_000), 1.0)]
        if leaf["kind"] == "ladder":
            levels = [(p0 * lv["multiple"], lv["fraction"]) for lv in leaf["levels"]]
        activation = p0 * (1 + leaf["activation_bps"] / 10_000) if leaf["kind"] == "trailing_stop" else math.inf
        states.append(
            {
                "levels": levels,
                "next": 0,
                "fills": [],
                "peak": p0,
                "armed": p0 >= activation,
                "activation": activation,
                "lowest": p0,
            }
        )

    def remaining(s):
        return 1.0 - sum(f for f, _ in s["fills"])

    def finish(s, ts, px, reason, lowest):
        fills = s["fills"] + ([(remaining(s), px)] if remaining(s) > TOL else [])
        total = sum(f for f, _ in fills)
        return ts, sum(f * p for f, p in fills) / total, reason, lowest

    for ts, o, h, l, _c in bars:
        # 1. time stop at the open
        for leaf, s in zip(leaves, states):
            if leaf["kind"] == "time_stop" and ts >= entry_ts + parse_policy(leaf).max_hold_ms:
                return finish(s, ts, o, "time_stop", min(s["lowest"], o))
        # 2. stop-type exits: per leaf the highest triggered level; across leaves the highest, first listed
        fired = None
        for j, (leaf, s) in enumerate(zip(leaves, states)):
            stops = []
            if leaf["kind"] in ("fixed_stop", "time_stop", "ladder") and "stop_loss_bps" in leaf:
                stops.append((p0 * (1 - leaf["stop_loss_bps"] / 10_000), "stop_loss"))
            if leaf["kind"] == "trailing_stop":
                if "hard_stop_bps" in leaf:
                    stops.append((p0 * (1 - leaf["hard_stop_bps"] / 10_000), "hard_stop"))
                if s["armed"]:
                    stops.append((s["peak"] * (1 - leaf["trail_bps"] / 10_000), "trailing_stop"))
            triggered = [(level, reason) for level, reason in stops if l <= level]
            if triggered:
                top = max(level for level, _ in triggered)
                reason = next(r for level, r in triggered if level == top)  # hard_stop listed before the trail
                if fired is None or top > fired[0]:
                    fired = (top, j, reason)
        if fired:
            level, j, reason = fired
            s = states[j]
            if o <= level:
                return finish(s, ts, o, reason, min(s["lowest"], o))
            return finish(s, ts, level, reason, min(s["lowest"], l))
        # 3. profit exits: levels ascending, several per candle; a leaf exits when its position is gone
        completed = None
        for j, (_leaf, s) in enumerate(zip(leaves, states)):
            while s["next"] < len(s["levels"]) and h >= s["levels"][s["next"]][0] and remaining(s) > TOL:
                level, fraction = s["levels"][s["next"]]
                s["fills"].append((min(fraction, remaining(s)), max(o, level)))
                s["last_level"] = level
                s["next"] += 1
                if remaining(s) <= TOL and (completed is None or level < completed[0]):
                    completed = (level, j)
        if completed:
            level, j = completed
            s = states[j]
            reason = "ladder_complete" if leaves[j]["kind"] == "ladder" else "take_profit"
            return finish(s, ts, None, reason, s["lowest"] if o >= level else min(s["lowest"], l))
        # 4. state for the next candle
        for s in states:
            s["lowest"] = min(s["lowest"], l)
            s["peak"] = max(s["peak"], h)
            s["armed"] = s["armed"] or s["peak"] >= s["activation"]
    ts, o, h, l, c = bars[-1]
    return finish(states[0], ts + DELTA, c, "end_of_data", min(states[0]["lowest"], c))


# -- random inputs -----------------------------------------------------------------------------

bps = st.sampled_from([500, 1000, 2000, 3000, 5000, 9000])
profit_bps = st.sampled_from([500, 1000, 2000, 5000, 10000])
optional = st.one_of(st.none(), bps)


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


fixed = st.builds(
    lambda s, t: _drop_none({"kind": "fixed_stop", "stop_loss_bps": s, "take_profit_bps": t}),
    bps,
    st.one_of(st.none(), profit_bps),
)
trailing = st.builds(
    lambda a, t, h: _drop_none({"kind": "trailing_stop", "activation_bps": a, "trail_bps": t, "hard_stop_bps": h}),
    st.sampled_from([0, 500, 1000, 2000, 5000]),
    st.sampled_from([500, 1000, 2000, 5000]),
    optional,
)
time_stop = st.builds(
    lambda m, t, s: _drop_none({"kind": "time_stop", "max_hold": m, "take_profit_bps": t, "stop_loss_bps": s}),
    st.sampled_from([DELTA, 2 * DELTA, 3 * DELTA, 7 * DELTA, 600_001]),
    st.one_of(st.none(), profit_bps),
    optional,
)
ladder = st.builds(
    lambda ms, fs, s: _drop_none(
        {"kind": "ladder", "levels": [{"multiple": m, "fraction": f} for m, f in zip(ms, fs)], "stop_loss_bps": s}
    ),
    st.lists(st.sampled_from([1.05, 1.1, 1.2, 1.5, 2, 3]), min_size=1, max_size=3, unique=True),
    st.lists(st.sampled_from([0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 1.0]), min_size=3, max_size=3),
    optional,
).filter(lambda p: sum(lv["fraction"] for lv in p["levels"]) <= 1 + 1e-9)
policies = st.recursive(
    st.one_of(fixed, trailing, time_stop, ladder),
    lambda sub: st.lists(sub, min_size=1, max_size=3).map(lambda ps: {"kind": "combo", "policies": ps}),
    max_leaves=5,
)


@st.composite
def bar_series(draw):
    """Candles on an integer grid: (ts, open, high, low, close), first open = p0, with gaps."""
    n = draw(st.integers(1, 25))
    price = draw(st.sampled_from([100, 100, 100, 137]))
    bars, ts = [], T0
    for i in range(n):
        o = price if i == 0 else draw(st.integers(max(1, price - 25), price + 25))
        c = draw(st.integers(max(1, o - 25), o + 25))
        h = max(o, c) + draw(st.integers(0, 40))
        lo = max(1, min(o, c) - draw(st.integers(0, 40)))
        bars.append((ts, float(o), float(h), float(lo), float(c)))
        ts += DELTA * draw(st.sampled_from([1, 1, 1, 2]))
        price = c
    return bars


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(policies, min_size=1, max_size=3),
    series=st.lists(bar_series(), min_size=1, max_size=4),
    alert_offset=st.integers(0, DELTA - 1),
    horizon_candles=st.integers(1, 30),
)
def test_kernels_match_the_reference(specs, series, alert_offset, horizon_candles):
    check_against_reference(specs, series, alert_offset, horizon_candles)


@st.composite
def long_bar_series(draw):
    """Hundreds of candles of a walk that moves a few percent at a time: most blocks of the
    kernel's `QUIET_BLOCK` candles change nothing, so they are skipped whole; a drawn few jump."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(QUIET_BLOCK, 400))
    p0 = draw(st.sampled_from([1000, 1000, 1370]))
    move = draw(st.sampled_from([2, 8, 30]))
    bars, ts, price = [], T0, p0
    for i in range(n):
        o = price if i == 0 else max(1, price + int(rng.integers(-move, move + 1)))
        jump = 10 * move if rng.random() < 0.01 else move
        c = max(1, o + int(rng.integers(-jump, jump + 1)))
        h = max(o, c) + int(rng.integers(0, move + 1))
        lo = max(1, min(o, c) - int(rng.integers(0, move + 1)))
        bars.append((ts, float(o), float(h), float(lo), float(c)))
        ts += DELTA * (2 if rng.random() < 0.05 else 1)
        price = c
    return bars


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    specs=st.lists(policies, min_size=1, max_size=3),
    series=st.lists(long_bar_series(), min_size=1, max_size=3),
    alert_offset=st.integers(0, DELTA - 1),
    horizon_candles=st.integers(QUIET_BLOCK, 500),
)
def test_kernels_match_the_reference_on_long_quiet_windows(specs, series, alert_offset, horizon_candles):
    check_against_reference(specs, series, alert_offset, horizon_candles)


def check_against_reference(specs, series, alert_offset, horizon_candles):
    horizon = horizon_candles * DELTA
    rows, paths = [], []
    for k, bars in enumerate(series):
        mint = f"m{k}"
        rows += [(mint, *bar) for bar in bars]
        window = [b for b in bars if T0 <= b[0] < T0 - alert_offset + horizon]
        p0 = bars[0][1]
        paths.append((f"c{k}", "x", mint, T0 - alert_offset, p0, T0, max(b[2] for b in window) / p0, window))
    candles = candles_from_rows(rows)
    frame = pl.DataFrame(
        [p[:7] for p in paths],
        schema=["call_id", "caller_name", "mint", "alert_ts_ms", "p0", "entry_ts_ms", "peak_multiple"],
        orient="row",
    )
    parsed = [parse_policy(s) for s in specs]
    many = simulate_policies(frame, candles, parsed, interval_ms=DELTA, horizon_ms=horizon, execution=EXECUTION)
    single = simulate_trades(
        frame, candles, parsed[0], run_id="r", policy_id="p", interval_ms=DELTA, horizon_ms=horizon, execution=EXECUTION
    )
    assert many.height == len(parsed) * len(paths) and single.height == len(paths)
    assert single.drop("run_id", "policy_id", "call_id").equals(
        many.filter(pl.col("policy_index") == 0).drop("policy_index", "path_index")
    )

    for row in many.iter_rows(named=True):
        policy = policy_to_dict(parsed[row["policy_index"]])
        call_id, _, _, _, p0, entry_ts, peak, window = paths[row["path_index"]]
        exit_ts, exit_px, reason, lowest = reference_trade(policy, window, p0, entry_ts)
        context = (policy, window, call_id)
        assert (row["exit_ts_ms"], row["exit_reason"]) == (exit_ts, reason), context
        assert row["exit_px"] == pytest.approx(exit_px, rel=1e-9), context
        assert row["max_adverse_excursion_bps"] == pytest.approx(min(0.0, lowest / p0 - 1) * 1e4, abs=1e-6), context
        assert row["realized_return_bps"] == pytest.approx((exit_px / p0 - 1) * 1e4 - 80, abs=1e-6)
        assert row["stop_out"] == (reason in ("stop_loss", "hard_stop", "trailing_stop"))
        assert row["time_exposed_ms"] == exit_ts - entry_ts
        assert row["entry_px"] == p0 and row["entry_ts_ms"] == entry_ts
        if peak > 1:
            assert row["tail_capture"] == pytest.approx((exit_px / p0 - 1) / (peak - 1), rel=1e-9, abs=1e-12)
        else:
            assert row["tail_capture"] is None
