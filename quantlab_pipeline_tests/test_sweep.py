"""Sweep specs and the frontier (README "A first backtest", Optimization) on a tiny hand-computed case."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.frontier import FRONTIER_SCHEMA, run_sweep, simulated_policies
from quantlab_pipeline.core.policy import simulate_trades
from quantlab_pipeline.core.policy_spec import parse_policy, policy_id_of, policy_json
from quantlab_pipeline.core.spec import Execution
from quantlab_pipeline.core.summary import summarize_trades
from quantlab_pipeline.core.sweep_spec import MAX_POLICIES, Constraints, benchmark_policy, parse_sweep

DELTA = 300_000
NO_COSTS = Execution(fee_bps=0, slippage_bps=0)

# p0 = 100 everywhere; three 5-minute candles each, horizon 3 candles.
BARS = {
    "a1": [(100, 120, 95, 110), (110, 130, 105, 125), (125, 140, 120, 135)],
    "a2": [(100, 105, 85, 88), (88, 90, 40, 45), (45, 50, 44, 48)],
    "b1": [(100, 110, 92, 100), (100, 102, 80, 85), (85, 90, 84, 88)],
    "b2": [(100, 150, 98, 140), (130, 160, 125, 150), (150, 155, 145, 152)],
}
CALLERS = {"a1": "alice", "a2": "alice", "b1": "bob", "b2": "bob"}
P1 = {"kind": "fixed_stop", "stop_loss_bps": 1000}  # stop 90
P2 = {"kind": "fixed_stop", "stop_loss_bps": 5000}  # stop 50
P3 = {"kind": "time_stop", "max_hold": "5m"}  # the open of the second candle


def fixture_data():
    rows = [(m, i * DELTA, *bar) for m, bars in BARS.items() for i, bar in enumerate(bars)]
    candles = Candles.from_frame(
        pl.DataFrame(rows, schema=["mint", "ts_ms", "open", "high", "low", "close"], orient="row")
    )
    paths = pl.DataFrame(
        {
            "call_id": list(BARS),
            "caller_name": [CALLERS[m] for m in BARS],
            "mint": list(BARS),
            "alert_ts_ms": [0] * 4,
            "p0": [100.0] * 4,
            "entry_ts_ms": [0] * 4,
            "peak_multiple": [max(b[1] for b in bars) / 100 for bars in BARS.values()],
        }
    )
    return paths, candles


def frontier(sweep_spec) -> pl.DataFrame:
    paths, candles = fixture_data()
    frame = run_sweep(
        [(paths, candles)],
        parse_sweep(sweep_spec),
        run_id="run",
        interval_ms=DELTA,
        horizon_ms=3 * DELTA,
        execution=NO_COSTS,
    )
    assert frame.schema == FRONTIER_SCHEMA
    return frame


def rows_by_policy(frame: pl.DataFrame, caller=None) -> dict[str, dict]:
    group = frame.filter(pl.col("caller_name").is_null() if caller is None else pl.col("caller_name") == caller)
    return {row["policy_id"]: row for row in group.iter_rows(named=True)}


ID1, ID2, ID3 = (policy_id_of(parse_policy(p)) for p in (P1, P2, P3))

# Trades (return bps, MAE bps) per path, by hand:
#   P1 (stop 90):  a1 eod 135 (+3500, -500)  a2 stop in c0 at 90 (-1000, -1500)
#                  b1 stop in c1 at 90 (-1000, -2000)  b2 eod 152 (+5200, -200)
#   P2 (stop 50):  a1 +3500, -500  a2 stop in c1 at 50 (-5000, lows 85, 40: -6000)
#                  b1 eod 88 (-1200, -2000)  b2 +5200, -200
#   P3 (time 5m):  exit at c1's open: a1 110 (+1000, -500)  a2 88 (-1200, -1500)
#                  b1 100 (0, -800)  b2 130 (+3000, -200)


def test_frontier_all_callers_hand_computed():
    rows = rows_by_policy(frontier([P1, P2, P3]))
    p1, p2, p3 = rows[ID1], rows[ID2], rows[ID3]
    # medians of 4: P1 sorted -1000, -1000, 3500, 5200 -> 1250; P2 -5000, -1200, 3500, 5200 -> 1150;
    # P3 -1200, 0, 1000, 3000 -> 500
    assert [p["median_return_bps"] for p in (p1, p2, p3)] == pytest.approx([1250, 1150, 500])
    assert [p["avg_return_bps"] for p in (p1, p2, p3)] == pytest.approx([1675, 625, 700])  # 6700/4, 2500/4, 2800/4
    assert [p["stop_out_rate"] for p in (p1, p2, p3)] == pytest.approx([0.5, 0.25, 0.0])
    # 5th percentile, linear at position 0.05·3 = 0.15: P1 MAE sorted -2000, -1500, … -> -2000 + 0.15·500;
    # P2 -6000, -2000, … -> -6000 + 0.15·4000; P3 -1500, -800, … -> -1500 + 0.15·700
    assert [p["p95_mae_bps"] for p in (p1, p2, p3)] == pytest.approx([-1925, -5400, -1395])
    # P3 tail capture: a1 0.1/0.4, a2 -0.12/0.05, b1 0/0.1, b2 0.3/0.6 -> mean
    assert p3["avg_tail_capture"] == pytest.approx((0.25 - 2.4 + 0 + 0.5) / 4)
    assert [p["trades_count"] for p in (p1, p2, p3)] == [4, 4, 4]
    # constraints: P1 stop-outs 0.5 > 0.3; P2 p95 MAE -5400 < -3000; P3 passes all
    assert [p["meets_constraints"] for p in (p1, p2, p3)] == [False, False, True]
    # P2 (1150, -5400) is dominated by P1 (1250, -1925); P3 has the best MAE
    assert [p["pareto"] for p in (p1, p2, p3)] == [True, False, True]
    # feasible first (P3), then objective = median: P1 1250 > P2 1150
    assert [p["rank"] for p in (p1, p2, p3)] == [2, 3, 1]
    assert [p["objective_score"] for p in (p1, p2, p3)] == pytest.approx([1250, 1150, 500])
    assert p1["policy_params"] == policy_json(parse_policy(P1)) == '{"kind":"fixed_stop","stop_loss_bps":1000}'
    assert p1["run_id"] == "run"


def test_frontier_per_caller_hand_computed():
    frame = frontier({"templates": [P1, P2, P3], "per_caller": True})
    assert frame.get_column("caller_name").to_list() == [None] * 3 + ["alice"] * 3 + ["bob"] * 3
    assert frame.get_column("rank").to_list() == [1, 2, 3] * 3
    alice, bob = rows_by_policy(frame, "alice"), rows_by_policy(frame, "bob")
    # alice = a1, a2. P1 returns 3500, -1000 -> median 1250, MAE -500, -1500 -> -1500 + 0.05·1000;
    # P2 3500, -5000 -> -750, MAE -6000 + 0.05·5500; P3 1000, -1200 -> -100, MAE -1450
    assert [alice[i]["median_return_bps"] for i in (ID1, ID2, ID3)] == pytest.approx([1250, -750, -100])
    assert [alice[i]["p95_mae_bps"] for i in (ID1, ID2, ID3)] == pytest.approx([-1450, -5725, -1450])
    # P1 dominates P3 (same MAE, higher median) and P2
    assert [alice[i]["pareto"] for i in (ID1, ID2, ID3)] == [True, False, False]
    assert [alice[i]["meets_constraints"] for i in (ID1, ID2, ID3)] == [False, False, True]  # stop-outs 0.5, 0.5, 0
    assert [alice[i]["rank"] for i in (ID1, ID2, ID3)] == [2, 3, 1]
    # bob = b1, b2. P1 -1000, 5200 -> 2100, MAE -2000 + 0.05·1800 = -1910, stop-outs 0.5;
    # P2 -1200, 5200 -> 2000, -1910, 0; P3 0, 3000 -> 1500, -800 + 0.05·600 = -770, 0
    assert [bob[i]["median_return_bps"] for i in (ID1, ID2, ID3)] == pytest.approx([2100, 2000, 1500])
    assert [bob[i]["p95_mae_bps"] for i in (ID1, ID2, ID3)] == pytest.approx([-1910, -1910, -770])
    assert [bob[i]["pareto"] for i in (ID1, ID2, ID3)] == [True, False, True]
    assert [bob[i]["meets_constraints"] for i in (ID1, ID2, ID3)] == [False, True, True]
    assert [bob[i]["rank"] for i in (ID1, ID2, ID3)] == [3, 1, 2]
    assert all(row["trades_count"] == 2 for row in (*alice.values(), *bob.values()))


def test_rank_ties_go_to_the_smaller_policy_id():
    # for bob neither stop (50, 30) is reached: identical trades, identical scores
    p4 = {"kind": "fixed_stop", "stop_loss_bps": 7000}
    bob = rows_by_policy(frontier({"templates": [P2, p4], "per_caller": True}), "bob")
    id4 = policy_id_of(parse_policy(p4))
    assert bob[ID2]["objective_score"] == bob[id4]["objective_score"]
    first, second = sorted([ID2, id4])
    assert (bob[first]["rank"], bob[second]["rank"]) == (1, 2)
    assert bob[first]["pareto"] and bob[second]["pareto"]  # equal points do not dominate each other


def test_constraints_can_be_disabled_and_objective_changed():
    loose = {"max_stop_out_rate": None, "min_p95_mae_bps": None, "max_avg_time_exposed": None}
    rows = rows_by_policy(frontier({"templates": [P1, P2, P3], "constraints": loose}))
    assert [rows[i]["meets_constraints"] for i in (ID1, ID2, ID3)] == [True, True, True]
    assert [rows[i]["rank"] for i in (ID1, ID2, ID3)] == [1, 2, 3]  # medians 1250 > 1150 > 500
    rows = rows_by_policy(frontier({"templates": [P1, P2, P3], "constraints": loose, "objective": "p95_mae_bps"}))
    assert [rows[i]["rank"] for i in (ID1, ID2, ID3)] == [2, 3, 1]  # -1925, -5400, -1395
    # average time exposed: P1 (3Δ + 0 + Δ + 3Δ)/4 = 1.75Δ = 525,000 ms; a 500,000 ms cap drops it
    rows = rows_by_policy(frontier({"templates": [P1, P3], "constraints": {**loose, "max_avg_time_exposed": 500_000}}))
    assert (rows[ID1]["meets_constraints"], rows[ID3]["meets_constraints"]) == (False, True)  # P3: Δ each


def test_no_paths_lists_every_policy_without_trades():
    paths, candles = fixture_data()
    frame = run_sweep(
        [(paths.clear(), candles)],
        parse_sweep([P1, P2, P3]),
        run_id="run",
        interval_ms=DELTA,
        horizon_ms=DELTA,
        execution=NO_COSTS,
    )
    assert frame.height == 3
    assert frame.get_column("trades_count").to_list() == [0, 0, 0]
    assert frame.get_column("meets_constraints").to_list() == [False] * 3
    assert frame.get_column("pareto").to_list() == [False] * 3
    assert frame.get_column("median_return_bps").null_count() == 3
    assert frame.get_column("policy_id").to_list() == sorted([ID1, ID2, ID3])  # rank ties by policy_id
    assert frame.get_column("rank").to_list() == [1, 2, 3]


def test_sweep_kernel_agrees_with_simulate_trades_and_summary():
    # random walks over 40 paths, every default-grid policy: frontier metrics == summary of trades
    rng = np.random.default_rng(7)
    n, m = 40, 60
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.04, (n, m)), axis=1))
    opens = np.concatenate([np.full((n, 1), 100.0), close[:, :-1]], axis=1)
    high = np.maximum(opens, close) * (1 + rng.uniform(0, 0.03, (n, m)))
    low = np.minimum(opens, close) * (1 - rng.uniform(0, 0.03, (n, m)))
    mints = [f"m{i}" for i in range(n)]
    interval = 3_600_000  # 1h candles so the grid's hours-long holds matter
    candles = Candles(
        tuple(mints),
        np.arange(n + 1, dtype=np.int64) * m,
        np.tile(np.arange(m, dtype=np.int64) * interval, n),
        opens.ravel(),
        high.ravel(),
        low.ravel(),
        close.ravel(),
    )
    paths = pl.DataFrame(
        {
            "call_id": mints,
            "caller_name": ["x"] * n,
            "mint": mints,
            "alert_ts_ms": [0] * n,
            "p0": [100.0] * n,
            "entry_ts_ms": [0] * n,
            "peak_multiple": high.max(axis=1) / 100,
        }
    )
    sweep = parse_sweep(None)
    execution = Execution()
    frame = run_sweep(
        [(paths, candles)], sweep, run_id="run", interval_ms=interval, horizon_ms=m * interval, execution=execution
    )
    for policy in sweep.policies[::7]:
        pid = policy_id_of(policy)
        trades = simulate_trades(
            paths,
            candles,
            policy,
            run_id="run",
            policy_id=pid,
            interval_ms=interval,
            horizon_ms=m * interval,
            execution=execution,
        )
        expected = summarize_trades(
            trades, run_id="run", month="2024-01", policy_id=pid, calls_processed=n, calls_excluded=0
        )
        got = frame.filter(pl.col("policy_id") == pid).row(0, named=True)
        for name in ("trades_count", "avg_return_bps", "median_return_bps", "stop_out_rate", "avg_tail_capture"):
            assert got[name] == pytest.approx(expected.item(0, name)), (pid, name)
        assert got["p95_mae_bps"] == pytest.approx(
            trades.get_column("max_adverse_excursion_bps").quantile(0.05, "linear")
        )


# -- parsing -----------------------------------------------------------------------------------


def test_default_grid_covers_the_five_kinds():
    sweep = parse_sweep(None)
    assert 80 <= len(sweep.policies) <= 120
    assert {type(p).__name__ for p in sweep.policies} == {"FixedStop", "TrailingStop", "TimeStop", "Ladder", "Combo"}
    assert len({policy_id_of(p) for p in sweep.policies}) == len(sweep.policies)
    assert (sweep.per_caller, sweep.objective, sweep.constraints) == (False, "median_return_bps", Constraints())
    assert sweep.constraints == Constraints(0.3, -3000, 48 * 3_600_000)


def test_cscv_blocks_and_benchmark_default_to_eight_and_holding_to_the_horizon():
    sweep = parse_sweep(None)
    assert (sweep.cscv_blocks, sweep.benchmark) == (8, None)
    assert policy_json(benchmark_policy(sweep, 5 * 86_400_000)) == '{"kind":"time_stop","max_hold":"5d"}'
    given = parse_sweep({"cscv_blocks": 16, "benchmark": {"stop_loss_bps": 500.0, "kind": "fixed_stop"}})
    assert given.cscv_blocks == 16
    assert policy_json(benchmark_policy(given, 5 * 86_400_000)) == policy_json(
        parse_policy(P1 | {"stop_loss_bps": 500})
    )


def test_the_benchmark_is_simulated_with_the_grid_but_is_a_row_only_when_the_grid_holds_it():
    sweep = parse_sweep([P1, P2])
    hold = benchmark_policy(sweep, 3 * DELTA)
    assert simulated_policies(sweep, hold) == (*sweep.policies, hold)
    assert simulated_policies(sweep, parse_policy(P2)) == sweep.policies  # already in the grid: once
    assert simulated_policies(sweep, None) == sweep.policies
    paths, candles = fixture_data()
    common = dict(run_id="run", interval_ms=DELTA, horizon_ms=3 * DELTA, execution=NO_COSTS)
    plain = run_sweep([(paths, candles)], sweep, **common)
    assert run_sweep([(paths, candles)], sweep, benchmark=hold, **common).equals(plain)
    assert run_sweep([(paths, candles)], sweep, benchmark=parse_policy(P2), **common).equals(plain)


def test_template_lists_expand_to_their_cartesian_product():
    sweep = parse_sweep([{"kind": "fixed_stop", "stop_loss_bps": [500, 1000], "take_profit_bps": [5000, None]}])
    assert [policy_json(p) for p in sweep.policies] == [
        '{"kind":"fixed_stop","stop_loss_bps":500,"take_profit_bps":5000}',
        '{"kind":"fixed_stop","stop_loss_bps":500}',
        '{"kind":"fixed_stop","stop_loss_bps":1000,"take_profit_bps":5000}',
        '{"kind":"fixed_stop","stop_loss_bps":1000}',
    ]


def test_nested_templates_expand_inside_combos_and_ladder_levels():
    template = {
        "kind": "combo",
        "policies": [
            {"kind": "ladder", "levels": [{"multiple": [2, 3], "fraction": 0.5}], "stop_loss_bps": [1000, 2000]},
            {"kind": "time_stop", "max_hold": ["1h", "2h", "3h"]},
        ],
    }
    assert len(parse_sweep({"templates": [template]}).policies) == 2 * 2 * 3


def test_duplicate_grid_points_are_kept_once():
    sweep = parse_sweep(
        [{"kind": "time_stop", "max_hold": ["1h", "60m", 3_600_000]}, {"kind": "time_stop", "max_hold": "1h"}]
    )
    assert len(sweep.policies) == 1


def test_dict_spec_options():
    sweep = parse_sweep({"per_caller": True, "constraints": {"max_stop_out_rate": 0.5}, "objective": "avg_return_bps"})
    assert len(sweep.policies) == len(parse_sweep(None).policies)  # no templates -> default grid
    assert sweep.per_caller and sweep.objective == "avg_return_bps"
    assert sweep.constraints == dataclasses.replace(Constraints(), max_stop_out_rate=0.5)
    assert (
        parse_sweep({"constraints": {"max_avg_time_exposed": "2d"}}).constraints.max_avg_time_exposed_ms
        == 2 * 86_400_000
    )


@pytest.mark.parametrize(
    "value, message",
    [
        ([{"kind": "fixed_stop", "stop_loss_bps": [500, 10000]}], "sweep[0].stop_loss_bps: must be < 10000"),
        (
            {"templates": [P1, {"kind": "trailing_stop", "activation_bps": 0, "trail_bps": [0]}]},
            "sweep.templates[1].trail_bps: must be > 0",
        ),
        (
            {"templates": [{"kind": "fixed_stop", "stop_loss_bps": []}]},
            "sweep.templates[0].stop_loss_bps: empty list of values",
        ),
        ({"templates": []}, "sweep.templates: expected a non-empty list"),
        ({"template": [P1]}, "sweep.template: unknown key"),
        ({"objective": "sharpe"}, "sweep.objective: unknown objective 'sharpe'"),
        ({"per_caller": "yes"}, "sweep.per_caller: expected true or false"),
        ({"constraints": {"max_stop_out_rate": 1.5}}, "sweep.constraints.max_stop_out_rate: must be between 0 and 1"),
        ({"constraints": {"min_p95_mae_bps": 10}}, "sweep.constraints.min_p95_mae_bps: must be <= 0"),
        (
            {"constraints": {"max_avg_time_exposed": "soon"}},
            "sweep.constraints.max_avg_time_exposed: expected a duration",
        ),
        ({"constraints": {"max_drawdown": 1}}, "sweep.constraints.max_drawdown: unknown constraint"),
        ({"cscv_blocks": 7}, "sweep.cscv_blocks: expected an even integer from 2 to 16, got 7"),
        ({"cscv_blocks": 0}, "sweep.cscv_blocks: expected an even integer from 2 to 16, got 0"),
        ({"cscv_blocks": 18}, "sweep.cscv_blocks: expected an even integer from 2 to 16, got 18"),
        ({"cscv_blocks": 8.0}, "sweep.cscv_blocks: expected an even integer from 2 to 16, got 8.0"),
        ({"cscv_blocks": "8"}, "sweep.cscv_blocks: expected an even integer from 2 to 16, got '8'"),
        ({"cscv_blocks": True}, "sweep.cscv_blocks: expected an even integer from 2 to 16, got True"),
        ({"benchmark": {"kind": "hold"}}, 'sweep.benchmark.kind: unknown kind "hold"'),
        ({"benchmark": {"kind": "fixed_stop"}}, "sweep.benchmark.stop_loss_bps: missing"),
        ("grid", "sweep: expected a list of policy templates or an object"),
        (
            [{"kind": "time_stop", "max_hold": list(range(1, 1002)), "stop_loss_bps": list(range(1, 1002))}],
            f"sweep[0]: expands to 1,002,001 policies, more than {MAX_POLICIES:,}",
        ),
    ],
)
def test_sweep_errors_name_the_field(value, message):
    with pytest.raises(SpecError) as info:
        parse_sweep(value)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_a_partition_streamed_in_segments_gives_the_same_frontier():
    # 40 random paths, 4 callers; split by mint into three segments with their own candle sets.
    rng = np.random.default_rng(11)
    n, m = 40, 30
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.05, (n, m)), axis=1))
    opens = np.concatenate([np.full((n, 1), 100.0), close[:, :-1]], axis=1)
    high = np.maximum(opens, close) * (1 + rng.uniform(0, 0.03, (n, m)))
    low = np.minimum(opens, close) * (1 - rng.uniform(0, 0.03, (n, m)))
    mints = [f"m{i:02d}" for i in range(n)]
    frame = pl.DataFrame(
        {
            "mint": np.repeat(mints, m),
            "ts_ms": np.tile(np.arange(m, dtype=np.int64) * DELTA, n),
            "open": opens.ravel(),
            "high": high.ravel(),
            "low": low.ravel(),
            "close": close.ravel(),
        }
    )
    paths = pl.DataFrame(
        {
            "call_id": mints,
            "caller_name": [f"c{i % 4}" for i in range(n)],
            "mint": mints,
            "alert_ts_ms": [0] * n,
            "p0": [100.0] * n,
            "entry_ts_ms": [0] * n,
            "peak_multiple": high.max(axis=1) / 100,
        }
    )
    sweep = parse_sweep(
        {
            "templates": [{"kind": "fixed_stop", "stop_loss_bps": [500, 1500], "take_profit_bps": [3000, None]}],
            "per_caller": True,
        }
    )
    common = dict(run_id="run", interval_ms=DELTA, horizon_ms=m * DELTA, execution=NO_COSTS)
    whole = run_sweep([(paths, Candles.from_frame(frame))], sweep, **common)
    parts = [paths.slice(0, 13), paths.slice(13, 14), paths.slice(27)]
    segments = [
        (p, Candles.from_frame(frame.filter(pl.col("mint").is_in(p.get_column("mint").implode())))) for p in parts
    ]
    streamed = run_sweep(segments, sweep, **common)
    assert streamed.equals(whole)
    assert whole.height == 4 * (1 + 4)
