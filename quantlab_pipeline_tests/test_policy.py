"""The simulation rules of the "Policies" of docs/inputs.md, one hand-computed case each.

Every case uses p0 = 100 (the entry candle's open), 5-minute candles (Δ = 300,000 ms) starting at
T0, no costs unless the case is about costs. Candles are (open, high, low, close).
"""

from __future__ import annotations

import polars as pl
import pytest

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.policy import TRADES_SCHEMA, simulate_trades
from quantlab_pipeline.core.policy_spec import parse_policy
from quantlab_pipeline.core.spec import Execution
from quantlab_pipeline_tests.builders import candles_from_bars

DELTA = 300_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00Z
NO_COSTS = Execution(fee_bps=0, slippage_bps=0)


def make_candles(
    bars: dict[str, list[tuple[float, float, float, float]]], ts: dict[str, list[int]] | None = None
) -> Candles:
    return candles_from_bars(bars, t0=T0, step_ms=DELTA, ts=ts)


def one_path(bars, *, alert_ts=T0, entry_ts=T0, peak=None, mint="M", call_id="c1") -> pl.DataFrame:
    """A truth-layer row for `bars` (p0 = first open, peak = max high / p0 unless given)."""
    p0 = bars[0][0]
    return pl.DataFrame(
        {
            "call_id": [call_id],
            "caller_name": ["alice"],
            "mint": [mint],
            "alert_ts_ms": [alert_ts],
            "p0": [p0],
            "entry_ts_ms": [entry_ts],
            "peak_multiple": [max(b[1] for b in bars) / p0 if peak is None else peak],
        },
        schema_overrides={"peak_multiple": pl.Float64},
    )


def trade(policy, bars, *, horizon_candles=None, execution=NO_COSTS, ts=None, **path_kw) -> dict:
    """Simulate one path over `bars`; the horizon covers every bar unless given."""
    horizon = (horizon_candles or len(bars)) * DELTA
    frame = simulate_trades(
        one_path(bars, **path_kw),
        make_candles({"M": bars}, {"M": ts} if ts else None),
        parse_policy(policy),
        run_id="run",
        policy_id="pol",
        interval_ms=DELTA,
        horizon_ms=horizon,
        execution=execution,
    )
    assert frame.height == 1
    return frame.row(0, named=True)


def test_stop_beats_target_in_the_same_candle():
    # stop 90, target 150; candle 1 has low 85 <= 90 and high 160 >= 150: the stop wins,
    # fill min(open 105, 90) = 90; MAE over lows 95, 85 = (85/100 - 1)·1e4 = -1500
    t = trade(
        {"kind": "fixed_stop", "stop_loss_bps": 1000, "take_profit_bps": 5000},
        [(100, 110, 95, 105), (105, 160, 85, 120)],
    )
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("stop_loss", pytest.approx(90), T0 + DELTA)
    assert t["realized_return_bps"] == pytest.approx(-1000)  # (90/100 - 1)·1e4
    assert t["stop_out"] is True
    assert t["max_adverse_excursion_bps"] == pytest.approx(-1500)
    assert t["time_exposed_ms"] == DELTA
    assert t["tail_capture"] == pytest.approx(-0.1 / 0.6)  # (0.9 - 1)/(1.6 - 1)


def test_gap_down_through_the_stop_fills_at_open_and_mae_skips_that_low():
    # stop 90; candle 1 opens at 80 (below 90) -> fill 80; the position left at the open, so the
    # low 70 is not held: L = min(95, fill 80) = 80 -> MAE -2000
    t = trade({"kind": "fixed_stop", "stop_loss_bps": 1000}, [(100, 105, 95, 98), (80, 85, 70, 75)])
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("stop_loss", 80, T0 + DELTA)
    assert t["realized_return_bps"] == pytest.approx(-2000)
    assert t["max_adverse_excursion_bps"] == pytest.approx(-2000)


def test_gap_up_through_the_target_fills_at_open():
    # target 150; candle 1 opens at 170 -> fill max(170, 150) = 170; the position left at the
    # open, so that candle's low 90 is not held: L = 95 -> MAE -500; return 7000;
    # tail (1.7 - 1)/(1.8 - 1) = 0.875
    t = trade(
        {"kind": "fixed_stop", "stop_loss_bps": 5000, "take_profit_bps": 5000},
        [(100, 110, 95, 105), (170, 180, 90, 175)],
    )
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("take_profit", 170, T0 + DELTA)
    assert t["realized_return_bps"] == pytest.approx(7000)
    assert t["stop_out"] is False
    assert t["max_adverse_excursion_bps"] == pytest.approx(-500)
    assert t["tail_capture"] == pytest.approx(0.875)


def test_target_inside_a_candle_fills_at_the_level_and_mae_includes_that_low():
    # target 150, candle 1 opens 120 < 150 and reaches 155: fill 150, low 90 held -> MAE -1000
    t = trade(
        {"kind": "fixed_stop", "stop_loss_bps": 5000, "take_profit_bps": 5000},
        [(100, 110, 95, 105), (120, 155, 90, 150)],
    )
    assert (t["exit_reason"], t["exit_px"]) == ("take_profit", pytest.approx(150))
    assert t["max_adverse_excursion_bps"] == pytest.approx(-1000)


BARS_TRAIL = [(100, 130, 98, 125), (120, 122, 60, 65)]


def test_highest_of_several_stops_fires_trailing():
    # candle 0 arms the trail (high 130 >= 110) and sets the peak 130; candle 1: trail
    # 130·0.8 = 104 and hard stop 70 both have low 60 below them; the higher, 104, fires:
    # fill min(open 120, 104) = 104; MAE lows 98, 60 -> -4000; return +400
    t = trade({"kind": "trailing_stop", "activation_bps": 1000, "trail_bps": 2000, "hard_stop_bps": 3000}, BARS_TRAIL)
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("trailing_stop", pytest.approx(104), T0 + DELTA)
    assert t["realized_return_bps"] == pytest.approx(400)
    assert t["max_adverse_excursion_bps"] == pytest.approx(-4000)
    assert t["stop_out"] is True


def test_highest_of_several_stops_fires_hard():
    # trail 130·0.5 = 65 is below the hard stop 70: the hard stop fires at 70
    t = trade({"kind": "trailing_stop", "activation_bps": 1000, "trail_bps": 5000, "hard_stop_bps": 3000}, BARS_TRAIL)
    assert (t["exit_reason"], t["exit_px"]) == ("hard_stop", pytest.approx(70))


def test_hard_stop_and_trail_at_the_same_level_report_hard_stop():
    # peak 140, trail 50 % -> 70.0; hard stop 30 % -> 70.0: the documented tie goes to hard_stop
    t = trade(
        {"kind": "trailing_stop", "activation_bps": 1000, "trail_bps": 5000, "hard_stop_bps": 3000},
        [(100, 140, 98, 125), (120, 122, 60, 65)],
    )
    assert (t["exit_reason"], t["exit_px"]) == ("hard_stop", pytest.approx(70))


def test_trailing_activation_takes_effect_in_the_next_candle():
    # activation 120, trail 10 %. Candle 1 reaches 130 (arms, peak 130) and dips to 100, below
    # 117 = 130·0.9, but the trail is not live yet. Candle 2: low 111 <= 117, open 112 < 117 ->
    # gap fill at the open 112 at T0+2Δ. MAE: lows 99, 100 held, fill 112 -> -100
    t = trade(
        {"kind": "trailing_stop", "activation_bps": 2000, "trail_bps": 1000},
        [(100, 105, 99, 104), (104, 130, 100, 110), (112, 115, 111, 113)],
    )
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("trailing_stop", 112, T0 + 2 * DELTA)
    assert t["realized_return_bps"] == pytest.approx(1200)
    assert t["max_adverse_excursion_bps"] == pytest.approx(-100)


def test_trailing_peak_updates_after_the_candle():
    # armed from the start (activation 0), trail 10 %. Candle 0 peaks at 150 but its low 95 is
    # only compared with p0·0.9 = 90 -> no exit. Candle 1: level 150·0.9 = 135, low 130 ->
    # fill at 135 (open 140 above it); MAE: lows 95, 130 -> -500
    t = trade(
        {"kind": "trailing_stop", "activation_bps": 0, "trail_bps": 1000},
        [(100, 150, 95, 140), (140, 145, 130, 132)],
    )
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("trailing_stop", pytest.approx(135), T0 + DELTA)
    assert t["max_adverse_excursion_bps"] == pytest.approx(-500)


def test_activation_zero_fires_in_the_entry_candle():
    # activation 0 arms at p0: level p0·(1 - 0.1) = 90; entry candle low 85 -> fill 90 at T0
    t = trade({"kind": "trailing_stop", "activation_bps": 0, "trail_bps": 1000}, [(100, 100, 85, 88), (88, 90, 80, 85)])
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("trailing_stop", pytest.approx(90), T0)
    assert t["time_exposed_ms"] == 0
    assert t["max_adverse_excursion_bps"] == pytest.approx(-1500)  # low 85


def test_two_ladder_levels_fill_in_one_candle():
    # levels 200 (½) and 300 (½); candle 1 (open 110) reaches 320: both fill at their levels,
    # exit_px = 0.5·200 + 0.5·300 = 250; last fill intrabar -> lows 95, 105 held -> MAE -500
    t = trade(
        {"kind": "ladder", "levels": [{"multiple": 3, "fraction": 0.5}, {"multiple": 2, "fraction": 0.5}]},
        [(100, 120, 95, 110), (110, 320, 105, 300)],
    )
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("ladder_complete", pytest.approx(250), T0 + DELTA)
    assert t["realized_return_bps"] == pytest.approx(15000)
    assert t["max_adverse_excursion_bps"] == pytest.approx(-500)
    assert t["stop_out"] is False


def test_ladder_stopped_out_after_a_partial_fill():
    # candle 0 fills ½ at 200; candle 1 (open 190) falls to 40 <= stop 50: the other ½ at 50.
    # exit_px = 0.5·200 + 0.5·50 = 125; MAE over lows 95, 40 -> -6000; return +2500
    t = trade(
        {
            "kind": "ladder",
            "levels": [{"multiple": 2, "fraction": 0.5}, {"multiple": 4, "fraction": 0.5}],
            "stop_loss_bps": 5000,
        },
        [(100, 210, 95, 200), (190, 195, 40, 45)],
    )
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("stop_loss", pytest.approx(125), T0 + DELTA)
    assert t["stop_out"] is True
    assert t["realized_return_bps"] == pytest.approx(2500)
    assert t["max_adverse_excursion_bps"] == pytest.approx(-6000)


def test_ladder_remainder_rides_to_end_of_data():
    # one level, 2x for ½; the other ½ leaves at the last close 195 at T0+2Δ:
    # exit_px = 0.5·200 + 0.5·195 = 197.5
    t = trade(
        {"kind": "ladder", "levels": [{"multiple": 2, "fraction": 0.5}]},
        [(100, 210, 95, 200), (200, 205, 190, 195)],
    )
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("end_of_data", pytest.approx(197.5), T0 + 2 * DELTA)


def test_ladder_stop_wins_over_a_level_in_the_same_candle():
    # candle 0 touches 210 (level 200) and 45 (stop 50): the stop takes the whole position at 50
    t = trade(
        {"kind": "ladder", "levels": [{"multiple": 2, "fraction": 0.5}], "stop_loss_bps": 5000},
        [(100, 210, 45, 60)],
    )
    assert (t["exit_reason"], t["exit_px"]) == ("stop_loss", pytest.approx(50))


def test_time_stop_exits_at_the_open():
    # max_hold 10m: first candle with ts >= T0 + 10m is candle 2, exit at its open 80.
    # The low 60 of candle 2 is not held: L = min(90, 95, fill 80) -> MAE -2000
    t = trade({"kind": "time_stop", "max_hold": "10m"}, [(100, 110, 90, 105), (105, 108, 95, 100), (80, 85, 60, 70)])
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("time_stop", 80, T0 + 2 * DELTA)
    assert t["max_adverse_excursion_bps"] == pytest.approx(-2000)
    assert t["time_exposed_ms"] == 2 * DELTA
    assert t["stop_out"] is False


def test_time_stop_uses_the_first_candle_after_a_gap():
    # candles at T0, T0+Δ, T0+3Δ; max_hold 10m -> the candle at T0+3Δ (open 90)
    bars = [(100, 110, 95, 105), (105, 108, 96, 100), (90, 95, 85, 92)]
    t = trade({"kind": "time_stop", "max_hold": 600_000}, bars, horizon_candles=4, ts=[T0, T0 + DELTA, T0 + 3 * DELTA])
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("time_stop", 90, T0 + 3 * DELTA)


def test_time_stop_before_its_stop_loss_in_the_same_candle():
    # deadline candle 1 opens at 95 and falls to 50 (below the stop 80): the time stop at the open wins
    t = trade({"kind": "time_stop", "max_hold": "5m", "stop_loss_bps": 2000}, [(100, 105, 98, 99), (95, 96, 50, 60)])
    assert (t["exit_reason"], t["exit_px"]) == ("time_stop", 95)


def test_combo_second_policy_exits_first():
    # fixed stop at 50 never fires; the time stop (5m) exits at candle 1's open 104
    t = trade(
        {
            "kind": "combo",
            "policies": [{"kind": "fixed_stop", "stop_loss_bps": 5000}, {"kind": "time_stop", "max_hold": "5m"}],
        },
        [(100, 110, 95, 105), (104, 108, 99, 107), (107, 109, 100, 108)],
    )
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("time_stop", 104, T0 + DELTA)


TIE_BARS = [(100, 150, 95, 140), (140, 210, 130, 200)]
TAKE_PROFIT_2X = {"kind": "fixed_stop", "stop_loss_bps": 9000, "take_profit_bps": 10000}
LADDER_2X = {"kind": "ladder", "levels": [{"multiple": 2, "fraction": 1}]}


def test_combo_tie_goes_to_the_first_listed():
    # both leaves exit the whole position at 200 in candle 1: identical exits, first listed wins
    first = trade({"kind": "combo", "policies": [TAKE_PROFIT_2X, LADDER_2X]}, TIE_BARS)
    second = trade({"kind": "combo", "policies": [LADDER_2X, TAKE_PROFIT_2X]}, TIE_BARS)
    assert (first["exit_reason"], first["exit_px"]) == ("take_profit", pytest.approx(200))
    assert (second["exit_reason"], second["exit_px"]) == ("ladder_complete", pytest.approx(200))


def test_combo_same_candle_follows_the_candle_order():
    # candle 1 hits leaf 0's target 150 and leaf 1's stop 90: the stop step comes first -> 90
    t = trade(
        {
            "kind": "combo",
            "policies": [
                {"kind": "fixed_stop", "stop_loss_bps": 9000, "take_profit_bps": 5000},
                {"kind": "fixed_stop", "stop_loss_bps": 1000},
            ],
        },
        [(100, 110, 95, 105), (105, 160, 85, 120)],
    )
    assert (t["exit_reason"], t["exit_px"]) == ("stop_loss", pytest.approx(90))
    # two stops in one candle across leaves: the higher (90, second listed) fired, not 70
    t = trade(
        {
            "kind": "combo",
            "policies": [{"kind": "fixed_stop", "stop_loss_bps": 3000}, {"kind": "fixed_stop", "stop_loss_bps": 1000}],
        },
        [(100, 110, 95, 105), (105, 106, 60, 65)],
    )
    assert t["exit_px"] == pytest.approx(90)


def test_nested_combo_flattens_depth_first():
    # leaves: fixed stop 50, time stop 15m (nested), trailing 20 % from p0 (level 80, peak never
    # rises above 100). Lows 95, 85, 82 stay above 80; candle 3 (T0+3Δ) is the time stop's:
    # exit at its open 85 before its low 75 could touch the trail.
    policy = {
        "kind": "combo",
        "policies": [
            {
                "kind": "combo",
                "policies": [{"kind": "fixed_stop", "stop_loss_bps": 5000}, {"kind": "time_stop", "max_hold": "15m"}],
            },
            {"kind": "trailing_stop", "activation_bps": 0, "trail_bps": 2000},
        ],
    }
    bars = [(100, 100, 95, 99), (99, 100, 85, 90), (90, 95, 82, 85), (85, 86, 75, 80)]
    t = trade(policy, bars)
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("time_stop", 85, T0 + 3 * DELTA)
    # candle 2 dipping to 79 instead: the outer trailing leaf fires at 80 in candle 2
    bars[2] = (90, 95, 79, 85)
    t = trade(policy, bars)
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("trailing_stop", pytest.approx(80), T0 + 2 * DELTA)


def test_end_of_data_exits_at_the_last_close_at_ts_plus_interval():
    # horizon of 2 candles: the third candle (which would stop out) is outside the window;
    # exit at candle 1's close 108 at T0 + Δ + Δ; MAE over lows 95, 100 -> -500
    bars = [(100, 110, 95, 105), (105, 112, 100, 108), (108, 109, 10, 20)]
    t = trade({"kind": "fixed_stop", "stop_loss_bps": 5000}, bars, horizon_candles=2, peak=1.12)
    assert (t["exit_reason"], t["exit_px"], t["exit_ts_ms"]) == ("end_of_data", 108, T0 + 2 * DELTA)
    assert t["time_exposed_ms"] == 2 * DELTA
    assert t["max_adverse_excursion_bps"] == pytest.approx(-500)
    assert t["stop_out"] is False
    assert t["tail_capture"] == pytest.approx(0.08 / 0.12)


def test_window_ends_at_alert_plus_horizon_not_entry_plus_horizon():
    # alert 1 min before T0, entry at T0, horizon 10m: window is ts < T0 + 9m, so only candles 0, 1
    bars = [(100, 110, 95, 105), (105, 112, 100, 108), (108, 109, 10, 20)]
    t = trade({"kind": "fixed_stop", "stop_loss_bps": 5000}, bars, horizon_candles=2, alert_ts=T0 - 60_000)
    assert (t["exit_reason"], t["exit_ts_ms"]) == ("end_of_data", T0 + 2 * DELTA)


def test_fees_and_slippage_are_charged_on_both_sides():
    # end of data at 110: gross (110/100 - 1)·1e4 = 1000; costs 2·(30 + 10) = 80 -> 920
    t = trade(
        {"kind": "fixed_stop", "stop_loss_bps": 5000},
        [(100, 112, 99, 110)],
        execution=Execution(fee_bps=30, slippage_bps=10),
    )
    assert t["realized_return_bps"] == pytest.approx(920)
    assert t["entry_px"] == 100


def test_tail_capture_null_when_peak_not_above_one():
    bars = [(100, 100, 90, 95), (95, 99, 92, 96)]
    assert trade({"kind": "fixed_stop", "stop_loss_bps": 5000}, bars)["tail_capture"] is None  # peak 1.0
    assert trade({"kind": "fixed_stop", "stop_loss_bps": 5000}, bars, peak=0.99)["tail_capture"] is None


def test_zero_paths_give_an_empty_frame_with_the_schema():
    empty = one_path([(100, 100, 90, 95)]).clear()
    frame = simulate_trades(
        empty,
        Candles.empty(),
        parse_policy({"kind": "fixed_stop", "stop_loss_bps": 500}),
        run_id="run",
        policy_id="pol",
        interval_ms=DELTA,
        horizon_ms=DELTA,
        execution=NO_COSTS,
    )
    assert frame.height == 0
    assert frame.schema == TRADES_SCHEMA


def test_many_paths_keep_order_and_skip_a_path_without_candles():
    # A: stop 90 hit in candle 0 (low 85); B: end of data at 103; C: mint has no candles -> no trade
    candles = make_candles({"A": [(100, 101, 85, 88)], "B": [(50, 52, 49, 51), (51, 53, 50, 51.5)]})
    paths = pl.concat(
        [
            one_path([(100, 101, 85, 88)], mint="B", call_id="b", peak=1.06),
            one_path([(100, 101, 85, 88)], mint="A", call_id="a"),
            one_path([(100, 101, 85, 88)], mint="C", call_id="c"),
        ]
    ).with_columns(pl.Series("p0", [50.0, 100.0, 100.0]))
    frame = simulate_trades(
        paths,
        candles,
        parse_policy({"kind": "fixed_stop", "stop_loss_bps": 1000}),
        run_id="run",
        policy_id="pol",
        interval_ms=DELTA,
        horizon_ms=2 * DELTA,
        execution=NO_COSTS,
    )
    assert frame.get_column("call_id").to_list() == ["b", "a"]
    assert frame.get_column("exit_reason").to_list() == ["end_of_data", "stop_loss"]
    assert frame.get_column("exit_px").to_list() == pytest.approx([51.5, 90])
    assert frame.get_column("realized_return_bps").to_list() == pytest.approx([300, -1000])  # 51.5/50 = 1.03
    assert frame.columns == TRADES_SCHEMA.names()
    assert (frame.get_column("run_id").unique().to_list(), frame.get_column("policy_id").unique().to_list()) == (
        ["run"],
        ["pol"],
    )
