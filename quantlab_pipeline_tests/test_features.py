"""Features (docs/research.md "Features"): each one computed by hand on a small case, and no look-ahead —
changing any candle that had not closed by an alert, or any later call, leaves its features as
they were."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.features import FEATURES_SCHEMA, LOOKBACK_MS, compute_features

M5 = 300_000
HOUR = 3_600_000
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC, a Monday
ALERT = T0 + 30 * HOUR + 2 * 60_000  # Tuesday 06:02 UTC


def candles_frame(rows: list[tuple[str, int, float, float]]) -> pl.DataFrame:
    """(mint, ts, close, volume) → OHLCV rows; open/high/low bracket the close (unused by features)."""
    mint, ts, close, volume = zip(*rows)
    return pl.DataFrame(
        {"mint": mint, "ts_ms": ts, "open": close, "high": close, "low": close, "close": close, "volume": volume},
        schema={
            "mint": pl.String,
            "ts_ms": pl.Int64,
            "open": pl.Float64,
            "high": pl.Float64,
            "low": pl.Float64,
            "close": pl.Float64,
            "volume": pl.Float64,
        },
    )


def alerts_frame(rows: list[tuple[str, str, str | None, int]]) -> pl.DataFrame:
    call_id, mint, caller, ts = zip(*rows)
    return pl.DataFrame(
        {"call_id": call_id, "mint": mint, "caller_name": caller, "alert_ts_ms": ts},
        schema={"call_id": pl.String, "mint": pl.String, "caller_name": pl.String, "alert_ts_ms": pl.Int64},
    )


def paths_frame(rows: list[tuple[str, bool, float]]) -> pl.DataFrame:
    call_id, hit, peak = zip(*rows) if rows else ((), (), ())
    return pl.DataFrame(
        {"call_id": call_id, "hit_2x": hit, "peak_multiple": peak},
        schema={"call_id": pl.String, "hit_2x": pl.Boolean, "peak_multiple": pl.Float64},
    )


def features(alerts, paths, candles: pl.DataFrame, horizon_ms: int = 4 * HOUR) -> pl.DataFrame:
    return compute_features(
        alerts, paths, [(alerts, Candles.from_frame(candles))], run_id="r", interval_ms=M5, horizon_ms=horizon_ms
    )


def test_candle_features_by_hand():
    # Token A trades every 5 minutes from 26 h before the alert; close = 1 + k/100 at candle k, volume k.
    first = ALERT - 26 * HOUR - 2 * 60_000  # 04:00 the day before
    n = (ALERT - first) // M5 + 3  # a few candles after the alert too (never read)
    rows = [("A", first + k * M5, 1 + k / 100, float(k)) for k in range(n)]
    f = features(alerts_frame([("c", "A", "x", ALERT)]), paths_frame([]), candles_frame(rows)).row(0, named=True)

    # Closed by 06:02: the candle opened at 05:55 (closes 06:00); the 06:00 candle is still open.
    last = (ALERT - 2 * 60_000 - M5 - first) // M5  # index of the 05:55 candle
    close = lambda k: 1 + k / 100  # noqa: E731
    for name, window in (("15m", 15 * 60_000), ("1h", HOUR), ("4h", 4 * HOUR), ("24h", 24 * HOUR)):
        ref = last - window // M5  # the last candle closed by alert - window
        assert f[f"ret_{name}_bps"] == pytest.approx((close(last) / close(ref) - 1) * 1e4)
    for name, window in (("1h", HOUR), ("24h", 24 * HOUR)):
        ks = range(last - window // M5 + 1, last + 1)  # the candles closed after the reference
        assert f[f"rvol_{name}"] == pytest.approx(math.sqrt(sum(math.log(close(k) / close(k - 1)) ** 2 for k in ks)))
        assert f[f"volume_{name}"] == pytest.approx(sum(float(k) for k in ks))
    # The look-back is 25 h: the candles opened from 05:02 the day before (05:05 on) up to 05:55.
    in_lookback = [k for k in range(last + 1) if first + k * M5 >= ALERT - LOOKBACK_MS]
    assert f["candles_available"] == len(in_lookback)
    assert f["token_age_ms"] == ALERT - (first + in_lookback[0] * M5)  # capped at the look-back
    assert f["since_last_candle_ms"] == 2 * 60_000  # the 05:55 candle closed at 06:00
    assert (f["hour_utc"], f["weekday_utc"]) == (6, 2)  # Tuesday is 2 (Monday 1 … Sunday 7)


def test_short_history_is_null_never_a_guess():
    # Token B's first candle opened 2 h before the alert, with a 30-minute hole before the alert.
    first = ALERT - 2 * 60_000 - 2 * HOUR
    rows = [("B", first + k * M5, 2.0 + k, 10.0) for k in range(24) if not 18 <= k < 24]
    f = features(alerts_frame([("c", "B", "x", ALERT)]), paths_frame([]), candles_frame(rows)).row(0, named=True)
    last = 17  # opened 30 minutes before 06:00
    assert f["ret_15m_bps"] == pytest.approx(0.0)  # no trade in the last 15 min: the price did not move
    assert f["ret_1h_bps"] == pytest.approx(((2.0 + last) / (2.0 + 11) - 1) * 1e4)  # 04:55 closed by 05:02
    assert f["ret_4h_bps"] is None and f["ret_24h_bps"] is None
    assert f["rvol_24h"] is None and f["volume_24h"] is None
    assert f["volume_1h"] == pytest.approx(6 * 10.0)  # 05:00 .. 05:25
    assert f["candles_available"] == 18
    assert f["token_age_ms"] == 2 * HOUR + 2 * 60_000
    assert f["since_last_candle_ms"] == 30 * 60_000 + 2 * 60_000
    # A token with no candle at all before its alert: every candle feature null, the count 0.
    f = features(alerts_frame([("c", "Z", "x", ALERT)]), paths_frame([]), candles_frame(rows)).row(0, named=True)
    assert f["candles_available"] == 0
    assert all(f[c] is None for c in ("ret_15m_bps", "rvol_1h", "volume_1h", "token_age_ms", "since_last_candle_ms"))


def test_candles_without_volume_give_null_volume_only():
    rows = [("A", ALERT - 3 * HOUR + k * M5, 1.0 + k, 1.0) for k in range(36)]
    frame = candles_frame(rows).drop("volume")
    f = features(alerts_frame([("c", "A", "x", ALERT)]), paths_frame([]), frame).row(0, named=True)
    assert f["volume_1h"] is None and f["rvol_1h"] is not None


def test_caller_prior_record_by_hand():
    h = 4 * HOUR
    alerts = alerts_frame(
        [
            ("a1", "A", "x", T0),
            ("a2", "A", "x", T0 + HOUR),
            ("a3", "A", "x", T0 + 2 * HOUR),  # excluded by the truth layer: no outcome
            ("a4", "A", "x", T0 + 5 * HOUR),  # a1 (ended at 4h) counts, a2 (5h) too, a3 not yet
            ("a5", "A", "x", T0 + 5 * HOUR),  # same time as a4: not earlier
            ("a6", "A", "x", T0 + 20 * HOUR),
            ("b1", "A", "y", T0 + 20 * HOUR),
            ("n1", "A", None, T0),  # a null caller is 'unknown'
            ("n2", "A", "unknown", T0 + 9 * HOUR),
        ]
    )
    paths = paths_frame(
        [
            ("a1", True, 3.0),
            ("a2", False, 1.5),
            ("a4", True, 2.5),
            ("a5", False, 1.0),
            ("a6", False, 1.1),
            ("b1", True, 9.0),
            ("n1", True, 4.0),
            ("n2", False, 1.2),
        ]
    )
    candles = candles_frame([("A", T0, 1.0, 1.0)])
    got = {r["call_id"]: r for r in features(alerts, paths, candles, horizon_ms=h).iter_rows(named=True)}
    record = lambda c: tuple(  # noqa: E731
        got[c][k]
        for k in ("caller_prior_calls", "caller_prior_resolved", "caller_prior_hit_2x_rate", "caller_prior_median_peak")
    )
    assert record("a1") == (0, 0, None, None)
    assert record("a2") == (1, 0, None, None)
    assert record("a3") == (2, 0, None, None)
    assert record("a4") == (3, 2, 0.5, 2.25)  # a1 (3.0, hit) and a2 (1.5): median 2.25
    assert record("a5") == (3, 2, 0.5, 2.25)
    # a1..a5 ended by 20h; a3 has no outcome: peaks 3.0, 1.5, 2.5, 1.0 → median 2.0; hits 2 of 4
    assert record("a6") == (5, 4, 0.5, 2.0)
    assert record("b1") == (0, 0, None, None)
    assert record("n2") == (1, 1, 1.0, 4.0)


def test_schema_and_order_follow_the_alerts():
    alerts = alerts_frame([("z", "A", "x", ALERT), ("a", "A", "x", ALERT - HOUR)])
    frame = features(alerts, paths_frame([]), candles_frame([("A", T0, 1.0, 1.0)]))
    assert frame.schema == FEATURES_SCHEMA
    assert frame.get_column("call_id").to_list() == ["z", "a"]


# -- no look-ahead ------------------------------------------------------------------------------

N_CANDLES = 120


@st.composite
def scenario(draw):
    """A few mints with sparse 5-minute candles over 10 h and calls on them; one call is `target`."""
    n_mints = draw(st.integers(1, 3))
    rows = []
    for m in range(n_mints):
        present = draw(st.lists(st.booleans(), min_size=N_CANDLES, max_size=N_CANDLES))
        for k in range(N_CANDLES):
            if present[k]:
                close = draw(st.floats(0.5, 2.0))
                rows.append((f"m{m}", T0 + k * M5, close, draw(st.floats(0.0, 100.0))))
    if not rows:
        rows.append(("m0", T0, 1.0, 1.0))
    n_calls = draw(st.integers(2, 8))
    calls = [
        (
            f"c{i}",
            f"m{draw(st.integers(0, n_mints - 1))}",
            draw(st.sampled_from(["x", None])),
            T0 + draw(st.integers(0, N_CANDLES * M5 // 60_000)) * 60_000,
        )
        for i in range(n_calls)
    ]
    outcomes = [(c[0], draw(st.booleans()), draw(st.floats(0.1, 50.0))) for c in calls if draw(st.integers(0, 3))]
    return rows, calls, outcomes, draw(st.integers(0, n_calls - 1)), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_no_look_ahead(case):
    """Change every candle not closed by the target's alert, and every call not earlier than it (and
    the outcome of every call whose horizon had not ended): the target's features are unchanged."""
    rows, calls, outcomes, target, seed = case
    horizon = 2 * HOUR
    t = calls[target][3]
    before = features(alerts_frame(calls), paths_frame(outcomes), candles_frame(rows), horizon).row(target, named=True)

    rng = np.random.default_rng(seed)
    changed_rows = [
        (mint, ts, float(rng.uniform(0.1, 9.0)), float(rng.uniform(0, 1e6))) if ts + M5 > t else (mint, ts, c, v)
        for mint, ts, c, v in rows
    ]
    changed_rows += [(mint, ts + 60_000, 7.0, 7.0) for mint, ts, _, _ in rows if ts + M5 > t][:5]  # new candles
    later = {c[0] for i, c in enumerate(calls) if i != target and c[3] >= t}
    changed_calls = [
        (cid, mint if cid not in later else "m0", caller if cid not in later else "x", ts)
        for cid, mint, caller, ts in calls
    ]
    unended = {c[0] for c in calls if c[3] + horizon > t}
    changed_outcomes = [
        (cid, hit, peak) if cid not in unended or cid == calls[target][0] else (cid, not hit, peak * 3)
        for cid, hit, peak in outcomes
    ]
    after = features(
        alerts_frame(changed_calls), paths_frame(changed_outcomes), candles_frame(changed_rows), horizon
    ).row(target, named=True)
    assert after == before
