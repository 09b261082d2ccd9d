"""The peer figure: vectorbt 1.2's OHLC stop generator and this project on the same windows.

Every path of the month becomes one column for vectorbt: its window (entry at the open of the
first candle at or after the alert, up to alert + horizon) laid out from row 0, padded with NaN to
the longest window, an entry signal at row 0, `wait=0` and `is_open_safe=True` (the entry candle's
high and low count, as they do here). Both vectorbt engines (Rust and Numba) and this project run
on one thread. vectorbt's time is its generator call alone (arrays laid out beforehand, column by
column — the order of a pandas DataFrame's `.values`, and the faster one for both engines: a
column is one window, read front to back); this project's is the public `simulate_policies` from
the paths frame to the trades frame (each path's mint looked up and window bounded in the candle
set, kernel, trade columns and frame), and its kernel alone beside it. Both sides are timed warm
and called in a loop, so each call starts with caches the previous call's pass over the candles
has filled with candles, not with its own tables.

Times are CPU seconds of the process (`kernels.cpu_timed`; Polars' pool threads count for this
side): on a shared machine another job's load then cannot land on one side of a ratio only.

vectorbt reports the stop *level* of the exit candle; a fill is that level unless the candle opened
through it (`min(open, level)` for a stop, `max(open, level)` for a target) — the rule vectorbt's
own `Portfolio.from_signals` applies and docs/inputs.md "Policies" states. Without an exit the trade ends
at the last close (`exit_ts` = last candle + Δ). Exits are compared exactly, candle and fill.
"""

from __future__ import annotations

import json
import time

import numba
import numpy as np
import polars as pl
from kernels import cpu_timed
from measure import summarize

from quantlab_pipeline.core.policy import compile_policies, run_policies, simulate_policies
from quantlab_pipeline.core.policy_spec import parse_policy
from quantlab_pipeline.core.spec import Execution

ENGINES = ("rust", "numba")
# Each comparable kind: this project's policy and the same exit rule in vectorbt's arguments.
PEER_POLICIES: dict[str, tuple[dict, dict]] = {
    "fixed stop 5%": ({"kind": "fixed_stop", "stop_loss_bps": 500}, {"sl_stop": 0.05}),
    "fixed stop 5% + target 100%": (
        {"kind": "fixed_stop", "stop_loss_bps": 500, "take_profit_bps": 10000},
        {"sl_stop": 0.05, "tp_stop": 1.0},
    ),
    "trailing stop 15%": (
        {"kind": "trailing_stop", "activation_bps": 0, "trail_bps": 1500},
        {"sl_stop": 0.15, "sl_trail": True},
    ),
    "trailing stop 30%": (
        {"kind": "trailing_stop", "activation_bps": 0, "trail_bps": 3000},
        {"sl_stop": 0.30, "sl_trail": True},
    ),
    "stop 10% + target 50%": (
        {"kind": "fixed_stop", "stop_loss_bps": 1000, "take_profit_bps": 5000},
        {"sl_stop": 0.10, "tp_stop": 0.5},
    ),
    "stop 20% + target 200%": (
        {"kind": "fixed_stop", "stop_loss_bps": 2000, "take_profit_bps": 20000},
        {"sl_stop": 0.20, "tp_stop": 2.0},
    ),
    "stop 50% + target 500%": (
        {"kind": "fixed_stop", "stop_loss_bps": 5000, "take_profit_bps": 50000},
        {"sl_stop": 0.50, "tp_stop": 5.0},
    ),
}
# Kinds vectorbt 1.2's generator cannot express, and why (it has one `sl_stop`, trailing or not).
NOT_EXPRESSIBLE = {
    "trailing stop with activation": "no activation threshold: `sl_trail` trails from the entry",
    "trailing stop with hard stop": "one `sl_stop`: a trail and a fixed floor cannot be combined",
    "time_stop, ladder, combo": "no time exit, partial exits or alternative rules",
}


def _vectorbt():
    """vectorbt's engine-neutral generator, or None when the `bench` extra is not installed."""
    try:
        from vectorbt.signals.dispatch import generate_ohlc_stop_ex
        from vectorbt.signals.enums import StopType
    except ImportError:
        return None
    return generate_ohlc_stop_ex, StopType


def _layout(candles, start: np.ndarray, stop: np.ndarray) -> dict[str, np.ndarray]:
    """Windows as columns (row 0 = entry candle, column-major), NaN past each window's end."""
    length = int((stop - start).max())
    rows = np.arange(length, dtype=np.int64)[:, None]
    idx = start[None, :] + rows
    valid = idx < stop[None, :]
    idx = np.where(valid, idx, 0)
    out = {}
    for name, col in (("open", candles.open), ("high", candles.high), ("low", candles.low), ("close", candles.close)):
        out[name] = np.asfortranarray(np.where(valid, col[idx], np.nan))
    entries = np.zeros((length, start.shape[0]), dtype=np.bool_, order="F")
    entries[0] = True
    out["entries"] = entries
    return out


def _vbt_call(generate, arrays: dict, kwargs: dict, engine: str, out: tuple[np.ndarray, np.ndarray]):
    stop_price, stop_type = out
    return generate(
        arrays["entries"],
        arrays["open"],
        arrays["high"],
        arrays["low"],
        arrays["close"],
        stop_price,
        stop_type,
        np.asarray(kwargs.get("sl_stop", np.nan), dtype=np.float64),
        np.asarray(kwargs.get("sl_trail", False), dtype=np.bool_),
        np.asarray(kwargs.get("tp_stop", np.nan), dtype=np.float64),
        np.asarray(False),
        True,  # is_open_safe: the entry is the open, so the entry candle's high and low count
        0,  # wait: an exit may happen in the entry candle, as here
        True,
        False,
        True,
        True,
        engine=engine,
    )


def _vbt_exits(exits, stop_price, stop_type, stop_types, arrays, ts_window, last_row, interval_ms):
    """(exit_ts, fill) per column from vectorbt's outputs, with this project's fill rule."""
    cols = np.arange(exits.shape[1])
    hit = exits.any(axis=0)
    row = np.where(hit, exits.argmax(axis=0), last_row)
    level = stop_price[row, cols]
    opened = arrays["open"][row, cols]
    is_target = stop_type[row, cols] == stop_types.TakeProfit
    fill = np.where(is_target, np.maximum(opened, level), np.minimum(opened, level))
    fill = np.where(hit, fill, arrays["close"][last_row, cols])
    exit_ts = np.where(hit, ts_window[row, cols], ts_window[last_row, cols] + interval_ms)
    return exit_ts, fill


def windows(month, paths: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """The paths with a candle in their window `[entry, alert + horizon)`, the windows' candle rows
    `[start, stop)` in the month's candle set, and each window's last row counted from its start."""
    entry_ts = np.ascontiguousarray(paths.get_column("entry_ts_ms").to_numpy(), dtype=np.int64)
    hi_ts = paths.get_column("alert_ts_ms").to_numpy().astype(np.int64) + np.int64(month.horizon_ms)
    start, stop = month.candles.window_bounds(paths.get_column("mint"), entry_ts, hi_ts)
    keep = stop > start
    start, stop = start[keep], stop[keep]
    return paths.filter(pl.Series(keep)), start, stop, stop - start - 1


def peer(month, paths: pl.DataFrame, repeat: int) -> dict:
    """Per comparable kind: times of vectorbt's two engines and of this project, their ratio, and
    the exits that differ. `{"skipped": reason}` without the `bench` extra."""
    found = _vectorbt()
    if found is None:
        return {"skipped": "vectorbt is not installed (pip install -e '.[bench]'; make bench does)"}
    generate, stop_types = found
    candles = month.candles
    paths, start, stop, last_row = windows(month, paths)
    layout_started = time.process_time()
    arrays = _layout(candles, start, stop)
    layout_s = time.process_time() - layout_started
    rows = np.arange(arrays["open"].shape[0], dtype=np.int64)[:, None]
    ts_window = candles.ts[np.minimum(start[None, :] + rows, len(candles) - 1)]
    execution = Execution()
    numba.set_num_threads(1)
    kinds = {}
    try:
        for kind, (policy_dict, vbt_kwargs) in PEER_POLICIES.items():
            policy = parse_policy(json.dumps(policy_dict))

            def ours(policy=policy):
                return simulate_policies(
                    paths,
                    candles,
                    [policy],
                    interval_ms=month.interval_ms,
                    horizon_ms=month.horizon_ms,
                    execution=execution,
                    parallel=False,
                )

            frame = ours()
            ours_s = cpu_timed(ours, repeat)
            kernel_s = cpu_timed(_kernel_call(candles, paths, start, stop, policy, month.interval_ms), repeat)
            ours_ts = frame.get_column("exit_ts_ms").to_numpy()
            ours_px = frame.get_column("exit_px").to_numpy()
            ours_median = float(np.median(ours_s))
            figure: dict = {
                "policy": policy_dict,
                "vectorbt": vbt_kwargs,
                "trades": frame.height,
                "seconds": summarize(ours_s, "s"),
                "kernel_seconds": summarize(kernel_s, "s"),
                "engines": {},
            }
            for engine in ENGINES:
                out = (np.full(arrays["open"].shape, np.nan, order="F"), np.full(arrays["open"].shape, -1, order="F"))

                def call(engine=engine, out=out, kwargs=vbt_kwargs):
                    return _vbt_call(generate, arrays, kwargs, engine, out)

                exits = call()
                seconds = cpu_timed(call, repeat)
                vbt_ts, vbt_px = _vbt_exits(exits, *out, stop_types, arrays, ts_window, last_row, month.interval_ms)
                figure["engines"][engine] = {
                    "seconds": summarize(seconds, "s"),
                    "ratio": summarize([s / ours_median for s in seconds], "ratio"),
                    "differing_exits": int(((vbt_ts != ours_ts) | (vbt_px != ours_px)).sum()),
                    "differing_candles": int((vbt_ts != ours_ts).sum()),
                }
                del out, exits
            fastest = min(figure["engines"].values(), key=lambda e: e["seconds"]["median"])
            figure["ratio_to_fastest"] = fastest["seconds"]["median"] / ours_median
            kinds[kind] = figure
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return {
        "paths": paths.height,
        "window_candles": int((stop - start).sum()),
        "rows": int(arrays["open"].shape[0]),
        "layout_seconds": layout_s,
        "kinds": kinds,
        "not_expressible": NOT_EXPRESSIBLE,
    }


def _kernel_call(candles, paths: pl.DataFrame, start, stop, policy, interval_ms: int):
    """The serial policy kernel alone on prepared windows (what `simulate_policies` wraps)."""
    compiled = compile_policies([policy])
    entry_ts = np.ascontiguousarray(paths.get_column("entry_ts_ms").to_numpy(), dtype=np.int64)
    p0 = np.ascontiguousarray(paths.get_column("p0").to_numpy(), dtype=np.float64)

    def call():
        run_policies(candles, start, stop, p0, entry_ts, interval_ms, compiled, parallel=False)

    call()
    return call
