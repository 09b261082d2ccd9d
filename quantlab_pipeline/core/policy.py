"""The policy simulation (DESIGN §6): one trade per path, exits by the pessimistic per-candle rules.

Each trade enters at p0 at `entry_ts_ms` and sees the truth layer's window (`entry_ts_ms <= ts <
alert_ts_ms + horizon`). Within a candle, using levels known before it: time stop at the open,
then stop-type exits (`low <= level`, fill `min(open, level)`), then profit exits (`high >= level`,
fill `max(open, level)`, ladder levels ascending, several per candle), then the trailing peak and
activation update for the next candle. Nothing exits → `end_of_data` at the last close.

Choices the design leaves open, made here:

- **hard_stop vs trailing_stop at the same level**: reported as `hard_stop` (the trail must be
  strictly higher to be the one that fired).
- **"Left at the open"** (the exit candle's low is then not part of the adverse excursion): a
  time stop; a stop whose level is at or above the open (`open <= level`); a profit exit whose
  last filled level is at or below the open (`open >= level`).
- **Combo "earliest exit"**: sub-policies are alternative whole trades from the same entry (the
  winner's partial ladder fills are its own; a losing ladder's are discarded). Exits are ordered by
  candle, then by the §6 order inside a candle — time stop at the open, stop-type exits from the
  highest level down, profit exits from the lowest level up, the close — so a combo obeys the
  same rules as one policy holding all the levels (highest stop fires, stop beats profit). Exactly
  equal exits (same candle, step and level) go to the first listed leaf, depth-first.
- **Ladders**: `exit_px` is the average fill weighted by the fractions filled (the remainder of
  fractions summing below 1 rides to a stop or the end of data at that fill).
- A path with no candle in its window (only possible when `candles` lacks the truth layer's
  rows) has no trade.

The kernels loop over contiguous candle arrays with per-trade `[start, stop)` bounds; policies are
compiled to flat arrays (`compile_policies`), so no Python runs per candle or per trade.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import polars as pl

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.policy_spec import (
    BPS,
    FRACTION_TOLERANCE,
    FixedStop,
    Ladder,
    Policy,
    TimeStop,
    TrailingStop,
    leaves,
)
from quantlab_pipeline.core.spec import Execution

EXIT_REASONS: tuple[str, ...] = (
    "stop_loss",
    "take_profit",
    "time_stop",
    "hard_stop",
    "trailing_stop",
    "ladder_complete",
    "end_of_data",
)
STOP_OUT_REASONS: tuple[str, ...] = ("stop_loss", "hard_stop", "trailing_stop")
_STOP_LOSS, _TAKE_PROFIT, _TIME_STOP, _HARD_STOP, _TRAILING_STOP, _LADDER_COMPLETE, _END_OF_DATA = range(7)
_NO_TRADE = -1

# Steps inside one candle, in the §6 order; used to order the exits of a combo's leaves.
_STEP_OPEN, _STEP_STOP, _STEP_PROFIT, _STEP_CLOSE = 0, 1, 2, 3
_NEVER = np.iinfo(np.int64).max

TRADES_SCHEMA = pl.Schema(
    {
        "run_id": pl.String,
        "policy_id": pl.String,
        "call_id": pl.String,
        "entry_ts_ms": pl.Int64,
        "entry_px": pl.Float64,
        "exit_ts_ms": pl.Int64,
        "exit_px": pl.Float64,
        "exit_reason": pl.String,
        "realized_return_bps": pl.Float64,
        "stop_out": pl.Boolean,
        "max_adverse_excursion_bps": pl.Float64,
        "time_exposed_ms": pl.Int64,
        "tail_capture": pl.Float64,
    }
)


# -- policies as flat arrays -------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledPolicies:
    """Policies as arrays the kernels read: policy `p` is leaves `leaf_offsets[p]:leaf_offsets[p+1]`.

    `leaf_prices[l]` = (stop multiple of p0 or 0 = none, trail activation multiple or inf = none,
    trail keep multiple); `leaf_rules[l]` = (stop reason, profit reason, max_hold ms or -1 = none,
    first level row, end level row); `levels[k]` = (multiple of p0, fraction), ascending per leaf.
    """

    leaf_offsets: np.ndarray
    leaf_prices: np.ndarray
    leaf_rules: np.ndarray
    levels: np.ndarray

    @property
    def n_policies(self) -> int:
        return int(self.leaf_offsets.shape[0] - 1)


def compile_policies(policies: Sequence[Policy]) -> CompiledPolicies:
    leaf_offsets, prices, rules, levels = [0], [], [], []
    for policy in policies:
        for leaf in leaves(policy):
            stop_bps, stop_reason, profit_reason = None, _STOP_LOSS, _TAKE_PROFIT
            activation, keep, max_hold, leaf_levels = np.inf, 1.0, -1, []
            if isinstance(leaf, FixedStop):
                stop_bps = leaf.stop_loss_bps
                if leaf.take_profit_bps is not None:
                    leaf_levels = [(1 + leaf.take_profit_bps / BPS, 1.0)]
            elif isinstance(leaf, TrailingStop):
                stop_bps, stop_reason = leaf.hard_stop_bps, _HARD_STOP
                activation, keep = 1 + leaf.activation_bps / BPS, 1 - leaf.trail_bps / BPS
            elif isinstance(leaf, TimeStop):
                stop_bps, max_hold = leaf.stop_loss_bps, leaf.max_hold_ms
                if leaf.take_profit_bps is not None:
                    leaf_levels = [(1 + leaf.take_profit_bps / BPS, 1.0)]
            elif isinstance(leaf, Ladder):
                stop_bps, profit_reason = leaf.stop_loss_bps, _LADDER_COMPLETE
                leaf_levels = [(lv.multiple, lv.fraction) for lv in leaf.levels]
            stop_mult = 0.0 if stop_bps is None else 1 - stop_bps / BPS  # 0: a positive low never reaches it
            prices.append((stop_mult, activation, keep))
            rules.append((stop_reason, profit_reason, max_hold, len(levels), len(levels) + len(leaf_levels)))
            levels.extend(leaf_levels)
        leaf_offsets.append(len(prices))
    return CompiledPolicies(
        leaf_offsets=np.asarray(leaf_offsets, dtype=np.int64),
        leaf_prices=np.asarray(prices, dtype=np.float64).reshape(-1, 3),
        leaf_rules=np.asarray(rules, dtype=np.int64).reshape(-1, 5),
        levels=np.asarray(levels, dtype=np.float64).reshape(-1, 2),
    )


# -- kernels -----------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _run_leaf(ts, op, hi, lo, cl, a, b, end, p0, entry_ts, interval_ms, prices, rules, levels):
    """One exit rule over candles `[a, end)` of window `[a, b)`.

    Returns (candle, step, order key, exit_ts, exit_px, exit reason, lowest price held); candle is
    `_NEVER` when `end < b` and nothing exited before `end` (a later combo leaf that cannot win).
    """
    stop_px = p0 * prices[0]
    activation_px = p0 * prices[1]
    keep = prices[2]
    stop_reason, profit_reason, max_hold, nxt, lv_end = rules[0], rules[1], rules[2], rules[3], rules[4]
    deadline = entry_ts + max_hold if max_hold >= 0 else _NEVER
    peak = p0
    armed = peak >= activation_px
    remaining = 1.0
    proceeds = 0.0
    low_held = p0
    next_px = p0 * levels[nxt, 0] if nxt < lv_end else np.inf
    for i in range(a, end):
        o = op[i]
        if ts[i] >= deadline:
            proceeds += remaining * o
            return i, _STEP_OPEN, 0.0, ts[i], proceeds, _TIME_STOP, min(low_held, o)
        level = stop_px
        reason = stop_reason
        if armed:
            trail_px = peak * keep
            if trail_px > level:
                level = trail_px
                reason = _TRAILING_STOP
        low = lo[i]
        if low <= level:
            if o <= level:
                proceeds += remaining * o
                return i, _STEP_STOP, -level, ts[i], proceeds, reason, min(low_held, o)
            proceeds += remaining * level
            return i, _STEP_STOP, -level, ts[i], proceeds, reason, min(low_held, low)
        high = hi[i]
        if high >= next_px:
            filled_px = next_px
            while high >= next_px and remaining > FRACTION_TOLERANCE:
                filled_px = next_px
                part = min(levels[nxt, 1], remaining)
                proceeds += part * max(o, filled_px)
                remaining -= part
                nxt += 1
                next_px = p0 * levels[nxt, 0] if nxt < lv_end else np.inf
            if remaining <= FRACTION_TOLERANCE:
                held = low_held if o >= filled_px else min(low_held, low)
                return i, _STEP_PROFIT, filled_px, ts[i], proceeds / (1.0 - remaining), profit_reason, held
        if low < low_held:
            low_held = low
        if high > peak:
            peak = high
            if peak >= activation_px:
                armed = True
    if end < b:
        return _NEVER, _STEP_CLOSE, 0.0, _NEVER, 0.0, _NO_TRADE, 0.0
    close = cl[b - 1]
    proceeds += remaining * close
    return b - 1, _STEP_CLOSE, 0.0, ts[b - 1] + interval_ms, proceeds, _END_OF_DATA, min(low_held, close)


@numba.njit(cache=True, nogil=True)
def _run_policy(ts, op, hi, lo, cl, a, b, p0, entry_ts, interval_ms, leaf_lo, leaf_hi, leaf_prices, leaf_rules, levels):
    """The winning leaf's (exit_ts, exit_px, reason, lowest price held) for one trade."""
    best_c, best_step, best_key = _NEVER, _STEP_CLOSE, 0.0
    best_ts, best_px, best_reason, best_low = _NEVER, 0.0, _NO_TRADE, 0.0
    for leaf in range(leaf_lo, leaf_hi):
        end = b if best_c == _NEVER else min(b, best_c + 1)
        c, step, key, exit_ts, exit_px, reason, low = _run_leaf(
            ts, op, hi, lo, cl, a, b, end, p0, entry_ts, interval_ms, leaf_prices[leaf], leaf_rules[leaf], levels
        )
        if c < best_c or (c == best_c and (step < best_step or (step == best_step and key < best_key))):
            best_c, best_step, best_key = c, step, key
            best_ts, best_px, best_reason, best_low = exit_ts, exit_px, reason, low
    return best_ts, best_px, best_reason, best_low


@numba.njit(cache=True, nogil=True)
def _simulate_path(
    t,
    ts,
    op,
    hi,
    lo,
    cl,
    start,
    stop,
    p0,
    entry_ts,
    interval_ms,
    leaf_offsets,
    leaf_prices,
    leaf_rules,
    levels,
    out_ts,
    out_px,
    out_reason,
    out_low,
):
    """Every policy over path `t`, written to column `t` of the outputs (left as `_NO_TRADE`
    when the window has no candle)."""
    if start[t] >= stop[t]:
        return
    for p in range(leaf_offsets.shape[0] - 1):
        out_ts[p, t], out_px[p, t], out_reason[p, t], out_low[p, t] = _run_policy(
            ts,
            op,
            hi,
            lo,
            cl,
            start[t],
            stop[t],
            p0[t],
            entry_ts[t],
            interval_ms,
            leaf_offsets[p],
            leaf_offsets[p + 1],
            leaf_prices,
            leaf_rules,
            levels,
        )


@numba.njit(cache=True, nogil=True)
def _simulate_serial(
    ts,
    op,
    hi,
    lo,
    cl,
    start,
    stop,
    p0,
    entry_ts,
    interval_ms,
    leaf_offsets,
    leaf_prices,
    leaf_rules,
    levels,
    out_ts,
    out_px,
    out_reason,
    out_low,
):
    for t in range(start.shape[0]):
        _simulate_path(
            t,
            ts,
            op,
            hi,
            lo,
            cl,
            start,
            stop,
            p0,
            entry_ts,
            interval_ms,
            leaf_offsets,
            leaf_prices,
            leaf_rules,
            levels,
            out_ts,
            out_px,
            out_reason,
            out_low,
        )


@numba.njit(cache=True, nogil=True, parallel=True)
def _simulate_parallel(
    ts,
    op,
    hi,
    lo,
    cl,
    start,
    stop,
    p0,
    entry_ts,
    interval_ms,
    leaf_offsets,
    leaf_prices,
    leaf_rules,
    levels,
    out_ts,
    out_px,
    out_reason,
    out_low,
):
    """Paths spread over cores; each path's candles stay hot in cache while every policy runs."""
    for t in numba.prange(start.shape[0]):
        _simulate_path(
            t,
            ts,
            op,
            hi,
            lo,
            cl,
            start,
            stop,
            p0,
            entry_ts,
            interval_ms,
            leaf_offsets,
            leaf_prices,
            leaf_rules,
            levels,
            out_ts,
            out_px,
            out_reason,
            out_low,
        )


# -- frames ------------------------------------------------------------------------------------


def simulate_policies(
    paths: pl.DataFrame,
    candles: Candles,
    policies: Sequence[Policy],
    *,
    interval_ms: int,
    horizon_ms: int,
    execution: Execution,
    parallel: bool = True,
) -> pl.DataFrame:
    """Every policy over every path in one compiled call: one row per (policy, trade).

    Columns: `policy_index` (position in `policies`), `path_index` (row of `paths`), then the
    trade columns of §6 from `entry_ts_ms` on. Paths without candles in their window are absent.
    """
    compiled = compile_policies(policies)
    n_pol, n_paths = compiled.n_policies, paths.height
    out_ts = np.zeros((n_pol, n_paths), dtype=np.int64)
    out_px = np.zeros((n_pol, n_paths), dtype=np.float64)
    out_reason = np.full((n_pol, n_paths), _NO_TRADE, dtype=np.int8)
    out_low = np.zeros((n_pol, n_paths), dtype=np.float64)
    entry_ts = np.ascontiguousarray(paths.get_column("entry_ts_ms").to_numpy(), dtype=np.int64)
    p0 = np.ascontiguousarray(paths.get_column("p0").to_numpy(), dtype=np.float64)
    if n_paths and n_pol:
        hi_ts = paths.get_column("alert_ts_ms").to_numpy().astype(np.int64) + np.int64(horizon_ms)
        start, stop = candles.window_bounds(paths.get_column("mint"), entry_ts, hi_ts)
        kernel = _simulate_parallel if parallel else _simulate_serial
        kernel(
            candles.ts,
            candles.open,
            candles.high,
            candles.low,
            candles.close,
            start,
            stop,
            p0,
            entry_ts,
            np.int64(interval_ms),
            compiled.leaf_offsets,
            compiled.leaf_prices,
            compiled.leaf_rules,
            compiled.levels,
            out_ts,
            out_px,
            out_reason,
            out_low,
        )
    traded = out_reason.ravel() >= 0
    path_index = np.tile(np.arange(n_paths, dtype=np.int64), n_pol)[traded]
    peak = paths.get_column("peak_multiple").cast(pl.Float64).to_numpy()
    frame = pl.DataFrame(
        {
            "policy_index": np.repeat(np.arange(n_pol, dtype=np.int64), n_paths)[traded],
            "path_index": path_index,
            "entry_ts_ms": entry_ts[path_index],
            "entry_px": p0[path_index],
            "exit_ts_ms": out_ts.ravel()[traded],
            "exit_px": out_px.ravel()[traded],
            "_reason": out_reason.ravel()[traded].astype(np.int64),
            "_low": out_low.ravel()[traded],
            "_peak": peak[path_index],
        },
        schema_overrides={"_peak": pl.Float64},
    )
    costs_bps = 2.0 * (execution.fee_bps + execution.slippage_bps)
    return frame.select(
        "policy_index",
        "path_index",
        "entry_ts_ms",
        "entry_px",
        "exit_ts_ms",
        "exit_px",
        pl.col("_reason").replace_strict(dict(enumerate(EXIT_REASONS)), return_dtype=pl.String).alias("exit_reason"),
        ((pl.col("exit_px") / pl.col("entry_px") - 1.0) * BPS - costs_bps).alias("realized_return_bps"),
        pl.col("_reason").is_in([EXIT_REASONS.index(r) for r in STOP_OUT_REASONS]).alias("stop_out"),
        (pl.min_horizontal(pl.col("_low") / pl.col("entry_px") - 1.0, pl.lit(0.0)) * BPS).alias(
            "max_adverse_excursion_bps"
        ),
        (pl.col("exit_ts_ms") - pl.col("entry_ts_ms")).alias("time_exposed_ms"),
        pl.when(pl.col("_peak") > 1.0)
        .then((pl.col("exit_px") / pl.col("entry_px") - 1.0) / (pl.col("_peak") - 1.0))
        .alias("tail_capture"),
    )


def simulate_trades(
    paths: pl.DataFrame,
    candles: Candles,
    policy: Policy,
    *,
    run_id: str,
    policy_id: str,
    interval_ms: int,
    horizon_ms: int,
    execution: Execution,
) -> pl.DataFrame:
    """`policy/trades.parquet`: one trade per path, columns exactly `TRADES_SCHEMA` (single-threaded)."""
    outcomes = simulate_policies(
        paths, candles, [policy], interval_ms=interval_ms, horizon_ms=horizon_ms, execution=execution, parallel=False
    )
    call_id = paths.get_column("call_id").cast(pl.String).gather(outcomes.get_column("path_index"))
    return (
        outcomes.with_columns(
            pl.lit(run_id, dtype=pl.String).alias("run_id"),
            pl.lit(policy_id, dtype=pl.String).alias("policy_id"),
            call_id.alias("call_id"),
        )
        .select(TRADES_SCHEMA.names())
        .cast(dict(TRADES_SCHEMA))
    )
