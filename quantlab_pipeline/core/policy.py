"""The policy simulation (docs/inputs.md "Policies"): one trade per path, exits by the pessimistic per-candle rules.

Each trade enters at p0 at `entry_ts_ms` and sees the truth layer's window (`entry_ts_ms <= ts <
alert_ts_ms + horizon`). Within a candle, using levels known before it: time stop at the open,
then stop-type exits (`low <= level`, fill `min(open, level)`), then profit exits (`high >= level`,
fill `max(open, level)`, ladder levels ascending, several per candle), then the trailing peak and
activation update for the next candle. Nothing exits → `end_of_data` at the last close.

Choices the design leaves open, made here (docs/semantics.md "Semantics chosen where the design leaves a choice"):

- **hard_stop vs trailing_stop at the same level**: reported as `hard_stop` (the trail must be
  strictly higher to be the one that fired).
- **"Left at the open"** (the exit candle's low is then not part of the adverse excursion): a
  time stop; a stop whose level is at or above the open (`open <= level`); a profit exit whose
  last filled level is at or below the open (`open >= level`).
- **Combo "earliest exit"**: sub-policies are alternative whole trades from the same entry (the
  winner's partial ladder fills are its own; a losing ladder's are discarded). Exits are ordered by
  candle, then by the order above inside a candle — time stop at the open, stop-type exits from the
  highest level down, profit exits from the lowest level up, the close — so a combo obeys the
  same rules as one policy holding all the levels (highest stop fires, stop beats profit). Exactly
  equal exits (same candle, step and level) go to the first listed leaf, depth-first.
- **Ladders**: `exit_px` is the average fill weighted by the fractions filled (the remainder of
  fractions summing below 1 rides to a stop or the end of data at that fill).
- A path with no candle in its window (only possible when `candles` lacks the truth layer's
  rows) has no trade.

The kernels (`nb.policy`; `nb.passage` for a sweep's single fixed levels) loop over contiguous
candle arrays with per-trade `[start, stop)` bounds; policies are compiled to flat arrays
(`compile_policies`), so no Python runs per candle or trade.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.nb.passage import passage_parallel
from quantlab_pipeline.core.nb.policy import (
    EXIT_REASONS,
    HARD_STOP,
    LADDER_COMPLETE,
    NO_TRADE,
    STOP_LOSS,
    TAKE_PROFIT,
    simulate_parallel,
    simulate_serial,
    trade_columns,
)
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

STOP_OUT_REASONS: tuple[str, ...] = ("stop_loss", "hard_stop", "trailing_stop")
IS_STOP_OUT = np.isin(np.array(EXIT_REASONS), STOP_OUT_REASONS)  # by reason code
# `simulate_policies`' columns, in the order `nb.policy.trade_columns` returns them.
_OUTCOME_COLUMNS = (
    "policy_index",
    "path_index",
    "entry_ts_ms",
    "entry_px",
    "exit_ts_ms",
    "exit_px",
    "exit_reason",
    "realized_return_bps",
    "stop_out",
    "max_adverse_excursion_bps",
    "time_exposed_ms",
    "tail_capture",
)

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
    leaf_offsets: list[int] = [0]
    prices: list[tuple[float, float, float]] = []
    rules: list[tuple[int, int, int, int, int]] = []
    levels: list[tuple[float, float]] = []
    for policy in policies:
        for leaf in leaves(policy):
            stop_bps, stop_reason, profit_reason = None, STOP_LOSS, TAKE_PROFIT
            activation, keep, max_hold, leaf_levels = np.inf, 1.0, -1, []
            if isinstance(leaf, FixedStop):
                stop_bps = leaf.stop_loss_bps
                if leaf.take_profit_bps is not None:
                    leaf_levels = [(1 + leaf.take_profit_bps / BPS, 1.0)]
            elif isinstance(leaf, TrailingStop):
                stop_bps, stop_reason = leaf.hard_stop_bps, HARD_STOP
                activation, keep = 1 + leaf.activation_bps / BPS, 1 - leaf.trail_bps / BPS
            elif isinstance(leaf, TimeStop):
                stop_bps, max_hold = leaf.stop_loss_bps, leaf.max_hold_ms
                if leaf.take_profit_bps is not None:
                    leaf_levels = [(1 + leaf.take_profit_bps / BPS, 1.0)]
            elif isinstance(leaf, Ladder):
                stop_bps, profit_reason = leaf.stop_loss_bps, LADDER_COMPLETE
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


def round_trip_costs_bps(execution: Execution) -> float:
    """What a trade pays in bps of its entry: fees and slippage, on the way in and out."""
    return 2.0 * (execution.fee_bps + execution.slippage_bps)


# -- frames ------------------------------------------------------------------------------------


def run_policies(
    candles: Candles,
    start: np.ndarray,
    stop: np.ndarray,
    p0: np.ndarray,
    entry_ts: np.ndarray,
    interval_ms: int,
    compiled: CompiledPolicies,
    *,
    parallel: bool,
    buffers: ExitBuffers | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The policy kernel over prepared windows: `(exit_ts, exit_px, exit_reason, lowest_held)`,
    each shaped (policies, trades); reason `NO_TRADE` where a window has no candle. With `buffers`,
    the outputs are written into its arrays (the previous call's outputs are overwritten).

    In parallel (a sweep's chunk), the first-passage policies (`first_passage_policies`) run in
    `nb.passage` (one pass per window for all of them, the same exits bit for bit) and the others
    in `nb.policy`, each into its rows (docs/performance.md, "First-passage sweeps")."""
    shape = (compiled.n_policies, start.shape[0])
    if buffers is None:
        outputs = _no_exits(shape)
    else:  # the last call's values: what the kernels leave untouched, windows without candles, cleared
        outputs = buffers.take(shape)
        empty = start >= stop
        if empty.any():
            for out, value in zip(outputs, _NO_EXIT, strict=True):
                out[:, empty] = value
    if not (shape[0] and shape[1]):
        return outputs
    if not parallel or not np.all(p0[start < stop] > 0.0):  # the passage's level order needs p0 > 0
        _run_general(candles, start, stop, p0, entry_ts, interval_ms, compiled, *outputs, parallel=parallel)
        return outputs
    eligible = first_passage_policies(compiled)
    for rows, run in ((np.flatnonzero(eligible), _run_passage), (np.flatnonzero(~eligible), _run_general)):
        if rows.size == shape[0]:
            run(candles, start, stop, p0, entry_ts, interval_ms, compiled, *outputs)
        elif rows.size:
            part = _no_exits((rows.size, shape[1]))
            run(candles, start, stop, p0, entry_ts, interval_ms, _subset(compiled, rows), *part)
            for out, values in zip(outputs, part, strict=True):
                out[rows] = values
    return outputs


# A (policy, path) without a trade, `(exit_ts, exit_px, exit_reason, lowest_held)`: what `_no_exits` holds.
_NO_EXIT = (0, 0.0, NO_TRADE, 0.0)


def _no_exits(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The kernels' outputs before they run: every (policy, path) "no trade" (zeros from
    `np.zeros`, whose pages the system zeroes when first written, rather than a fill pass)."""
    return (
        np.zeros(shape, dtype=np.int64),
        np.zeros(shape, dtype=np.float64),
        np.full(shape, NO_TRADE, dtype=np.int8),
        np.zeros(shape, dtype=np.float64),
    )


class ExitBuffers:
    """The kernels' output arrays, reused from call to call by a sweep: a chunk of 128 policies over
    the reference month writes 61 MB of exits, and writing them into fresh memory each chunk paid
    its page faults again (docs/performance.md, "10,000-policy sweeps")."""

    def __init__(self) -> None:
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def take(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Outputs of `shape`: the first rows of the last arrays when they fit (policy-major, so
        still contiguous), holding what the last call wrote; new "no trade" arrays otherwise."""
        arrays = self._arrays
        if arrays is None or arrays[0].shape[0] < shape[0] or arrays[0].shape[1] != shape[1]:
            self._arrays = arrays = _no_exits(shape)
        out_ts, out_px, out_reason, out_low = (a[: shape[0]] for a in arrays)
        return out_ts, out_px, out_reason, out_low


def _run_general(
    candles: Candles,
    start: np.ndarray,
    stop: np.ndarray,
    p0: np.ndarray,
    entry_ts: np.ndarray,
    interval_ms: int,
    compiled: CompiledPolicies,
    *outputs: np.ndarray,
    parallel: bool = True,
) -> None:
    kernel = simulate_parallel if parallel else simulate_serial
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
        *outputs,
    )


def first_passage_policies(compiled: CompiledPolicies) -> np.ndarray:
    """Per policy, whether its exit is a first passage (`nb.passage`): one leaf, no trail
    (activation inf), no time stop, and no level or one level whose fill closes the position
    (`1 - min(fraction, 1)` within `FRACTION_TOLERANCE`, as `nb.policy.simulate_range` tests it):
    a `fixed_stop`, a one-level `ladder` selling it all, or a combo of one of them."""
    offsets = compiled.leaf_offsets
    if compiled.leaf_rules.shape[0] == 0:
        return np.zeros(compiled.n_policies, dtype=bool)
    leaf = np.minimum(offsets[:-1], compiled.leaf_rules.shape[0] - 1)
    rules = compiled.leaf_rules[leaf]
    n_levels = rules[:, 4] - rules[:, 3]
    closes = n_levels == 0
    if compiled.levels.shape[0]:
        fraction = compiled.levels[np.minimum(rules[:, 3], compiled.levels.shape[0] - 1), 1]
        closes |= (n_levels == 1) & (1.0 - np.minimum(fraction, 1.0) <= FRACTION_TOLERANCE)
    trail = compiled.leaf_prices[leaf, 1] != np.inf
    return (np.diff(offsets) == 1) & ~trail & (rules[:, 2] < 0) & closes


def _run_passage(
    candles: Candles,
    start: np.ndarray,
    stop: np.ndarray,
    p0: np.ndarray,
    entry_ts: np.ndarray,
    interval_ms: int,
    compiled: CompiledPolicies,
    *outputs: np.ndarray,
) -> None:
    """First-passage policies only: their distinct stop and target multiples, sorted for the pass."""
    leaf = compiled.leaf_offsets[:-1]
    rules = compiled.leaf_rules[leaf]
    has_target = rules[:, 4] > rules[:, 3]
    levels = compiled.levels if compiled.levels.shape[0] else np.array([[np.inf, 1.0]])
    level = levels[np.where(has_target, rules[:, 3], 0)]
    target_multiple = np.where(has_target, level[:, 0], np.inf)
    part = np.where(has_target, np.minimum(level[:, 1], 1.0), 1.0)
    stops, stop_of = np.unique(-compiled.leaf_prices[leaf, 0], return_inverse=True)  # highest first
    targets, target_of = np.unique(target_multiple, return_inverse=True)
    passage_parallel(
        candles.ts,
        candles.open,
        candles.high,
        candles.low,
        candles.close,
        start,
        stop,
        p0,
        np.int64(interval_ms),
        np.ascontiguousarray(-stops),
        np.ascontiguousarray(stop_of.reshape(-1), dtype=np.int64),
        np.ascontiguousarray(targets),
        np.ascontiguousarray(target_of.reshape(-1), dtype=np.int64),
        np.ascontiguousarray(part),
        np.ascontiguousarray(rules[:, 0]),
        np.ascontiguousarray(rules[:, 1]),
        *outputs,
    )


def _subset(compiled: CompiledPolicies, rows: np.ndarray) -> CompiledPolicies:
    """Policies `rows` of `compiled`, compiled alone (their leaves' level rows renumbered)."""
    offsets = compiled.leaf_offsets
    leaf_counts = offsets[rows + 1] - offsets[rows]
    leaves_of = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows]).astype(np.int64)
    rules = compiled.leaf_rules[leaves_of].copy()
    level_counts = rules[:, 4] - rules[:, 3]
    level_rows = np.concatenate([np.arange(lo, hi) for lo, hi in rules[:, 3:5]] + [np.empty(0, np.int64)])
    first = np.concatenate([[0], np.cumsum(level_counts)[:-1]]).astype(np.int64)
    rules[:, 3], rules[:, 4] = first, first + level_counts
    return CompiledPolicies(
        leaf_offsets=np.concatenate([[0], np.cumsum(leaf_counts)]).astype(np.int64),
        leaf_prices=np.ascontiguousarray(compiled.leaf_prices[leaves_of]),
        leaf_rules=rules,
        levels=np.ascontiguousarray(compiled.levels[level_rows.astype(np.int64)]).reshape(-1, 2),
    )


@dataclass(frozen=True)
class PolicyExits:
    """The kernel's exits of policies over a frame of paths: `out_*[policy, path]` (`run_policies`)
    and the paths' `entry_ts` and `p0` they were taken from."""

    entry_ts: np.ndarray
    p0: np.ndarray
    out_ts: np.ndarray
    out_px: np.ndarray
    out_reason: np.ndarray
    out_low: np.ndarray


def policy_exits(
    paths: pl.DataFrame,
    candles: Candles,
    compiled: CompiledPolicies,
    *,
    interval_ms: int,
    horizon_ms: int,
    parallel: bool = True,
    buffers: ExitBuffers | None = None,
) -> PolicyExits:
    """Every compiled policy over every path of `paths` in one kernel call (into `buffers`, if given)."""
    n_paths = paths.height
    entry_ts = np.ascontiguousarray(paths.get_column("entry_ts_ms").to_numpy(), dtype=np.int64)
    p0 = np.ascontiguousarray(paths.get_column("p0").to_numpy(), dtype=np.float64)
    start = stop = np.zeros(n_paths, dtype=np.int64)  # no candles: every output stays "no trade"
    if n_paths and compiled.n_policies:
        hi_ts = paths.get_column("alert_ts_ms").to_numpy().astype(np.int64) + np.int64(horizon_ms)
        start, stop = candles.window_bounds(paths.get_column("mint"), entry_ts, hi_ts)
    outputs = run_policies(
        candles, start, stop, p0, entry_ts, interval_ms, compiled, parallel=parallel, buffers=buffers
    )
    return PolicyExits(entry_ts, p0, *outputs)


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
    trade columns of `TRADES_SCHEMA` from `entry_ts_ms` on. Paths without candles in their window are absent.
    """
    exits = policy_exits(
        paths, candles, compile_policies(policies), interval_ms=interval_ms, horizon_ms=horizon_ms, parallel=parallel
    )
    peak = np.asarray(paths.get_column("peak_multiple").to_numpy(), dtype=np.float64)  # null → NaN
    columns = trade_columns(
        exits.out_ts,
        exits.out_px,
        exits.out_reason,
        exits.out_low,
        exits.entry_ts,
        exits.p0,
        peak,
        round_trip_costs_bps(execution),
        IS_STOP_OUT,
    )
    # One compiled pass writes every column; the frame wraps the arrays without copying them.
    frame = dict(zip(_OUTCOME_COLUMNS, columns, strict=True))
    frame["exit_reason"] = pl.Series(EXIT_REASONS, dtype=pl.String).gather(frame["exit_reason"])
    frame["tail_capture"] = pl.Series(frame["tail_capture"], dtype=pl.Float64, nan_to_null=True)
    return pl.DataFrame(frame)


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
        .cast(TRADES_SCHEMA)
    )
