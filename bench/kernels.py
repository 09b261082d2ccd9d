"""In-process figures: the streaming floor, the truth kernel, one policy of each kind, the sweep.

Kernels are called directly on the arrays the pipeline would hand them (reading excluded),
compiled and run once before timing. Throughput is counted in *window candles*: the candles inside
the per-alert `[entry, alert + horizon)` windows, the same denominator for truth and policies, so
each figure reads "this many candles of the month per second". A policy that exits early visits
fewer; the visited count is reported beside it so an early exit cannot pass for a fast loop.

The one-thread figures are CPU seconds of this process (`cpu_timed`), not wall seconds: the
machine is shared, and a busy neighbour stretches wall time by whatever share of a core it takes
(at a load of 9 on 2 cores, the truth kernel's wall figure halved while its CPU time did not
move). The multi-threaded sweep stays in wall seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numba
import numpy as np
import polars as pl
from dataset import INTERVAL
from measure import summarize, timed

from quantlab_pipeline.core import policy as policy_core
from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.frontier import run_sweep
from quantlab_pipeline.core.nb import truth as truth_nb
from quantlab_pipeline.core.policy_spec import parse_policy
from quantlab_pipeline.core.spec import Execution
from quantlab_pipeline.core.sweep_spec import DEFAULT_GRID, Sweep, parse_sweep
from quantlab_pipeline.core.truth import compute_paths

# One representative policy per kind (docs/inputs.md "Policies"), mid-grid parameters.
POLICIES: dict[str, str] = {
    "fixed_stop": '{"kind":"fixed_stop","stop_loss_bps":2000,"take_profit_bps":10000}',
    "trailing_stop": '{"kind":"trailing_stop","activation_bps":2000,"trail_bps":1500,"hard_stop_bps":3000}',
    "time_stop": '{"kind":"time_stop","max_hold":"24h","take_profit_bps":10000,"stop_loss_bps":3000}',
    "ladder": '{"kind":"ladder","levels":[{"multiple":2,"fraction":0.5},{"multiple":4,"fraction":0.5}],"stop_loss_bps":3000}',
    "combo": '{"kind":"combo","policies":[{"kind":"trailing_stop","activation_bps":2000,"trail_bps":2000,"hard_stop_bps":5000},{"kind":"time_stop","max_hold":"48h"}]}',
}
# The end-to-end policy run uses the fixed stop above.
E2E_POLICY_ID, E2E_POLICY = "bench-fixed-stop", POLICIES["fixed_stop"]
# The default grid (96 policies over the five kinds) plus four wide fixed stops: 100 policies.
SWEEP_TEMPLATES = [*DEFAULT_GRID, {"kind": "fixed_stop", "stop_loss_bps": [1500, 2500, 4000, 7000]}]
SWEEP_SIZE = 100


def cpu_timed(fn: Callable[[], object], repeat: int) -> list[float]:
    """CPU seconds of this process (every thread, e.g. Polars' pool) for `repeat` calls of `fn`;
    the caller warms it up first."""
    out = []
    for _ in range(repeat):
        started = time.process_time()
        fn()
        out.append(time.process_time() - started)
    return out


@numba.njit(cache=True, nogil=True, fastmath=True)
def _stream(ts, op, hi, lo, cl):
    """Touch every element of the five candle columns once; fastmath lets the sums vectorise, so
    the loop is bound by memory bandwidth, not by a serial floating-point add chain."""
    acc_ts = 0
    acc_px = 0.0
    for i in range(ts.shape[0]):
        acc_ts += ts[i]
        acc_px += op[i] + hi[i] + lo[i] + cl[i]
    return acc_ts, acc_px


def _columns(candles: Candles) -> tuple[np.ndarray, ...]:
    return candles.ts, candles.open, candles.high, candles.low, candles.close


def streaming_floor(candles: Candles, repeat: int) -> dict:
    """The machine's physical limit for one pass over the month: GB/s and candles/s on one thread."""
    cols = _columns(candles)
    n = len(candles)
    nbytes = sum(c.nbytes for c in cols)
    _stream(*cols)
    seconds = cpu_timed(lambda: _stream(*cols), repeat)
    return {
        "bytes": nbytes,
        "candles": n,
        "seconds": summarize(seconds, "s"),
        "gb_per_s": summarize([nbytes / s / 1e9 for s in seconds], "GB/s"),
        "candles_per_s": summarize([n / s for s in seconds], "candles/s"),
    }


def truth_kernel(month, repeat: int, floor_candles_per_s: float) -> tuple[dict, pl.DataFrame]:
    """The truth kernel alone over every alert's window (one thread), called as `compute_paths`
    calls it, plus the whole `compute_paths` (bounds + kernel + paths frame); returns the figure
    and the paths frame the policy figures run on."""
    candles, alerts, params = month.candles, month.alerts, month.truth_params
    alert_ts = np.ascontiguousarray(alerts.get_column("alert_ts_ms").to_numpy(), dtype=np.int64)
    start, stop = candles.window_bounds(alerts.get_column("mint"), alert_ts, alert_ts + month.horizon_ms)
    entry_limit_ts = alert_ts + params.max_entry_delay_candles * month.interval_ms
    multiples = np.asarray(params.multiples, dtype=np.float64)

    def kernel_call():
        return truth_nb.truth_kernel(
            candles.ts,
            candles.open,
            candles.high,
            candles.low,
            start,
            stop,
            alert_ts,
            entry_limit_ts,
            multiples,
            float(params.activity_move),
        )

    n_window = int(kernel_call()[3].sum())  # n_candles: the window candles of every entered alert
    seconds = cpu_timed(kernel_call, repeat)

    def api_call():
        return compute_paths(
            alerts, candles, run_id="bench", interval=INTERVAL, horizon_ms=month.horizon_ms, params=params
        ).paths

    paths = api_call()
    api_seconds = cpu_timed(api_call, repeat)
    figure = {
        "alerts": alerts.height,
        "paths": paths.height,
        "window_candles": n_window,
        "seconds": summarize(seconds, "s"),
        "candles_per_s": summarize([n_window / s for s in seconds], "candles/s"),
        "fraction_of_floor": summarize([n_window / s / floor_candles_per_s for s in seconds], "ratio"),
        "compute_paths_seconds": summarize(api_seconds, "s"),
    }
    return figure, paths


def _trade_inputs(paths: pl.DataFrame, candles: Candles, horizon_ms: int):
    entry_ts = np.ascontiguousarray(paths.get_column("entry_ts_ms").to_numpy(), dtype=np.int64)
    p0 = np.ascontiguousarray(paths.get_column("p0").to_numpy(), dtype=np.float64)
    hi_ts = paths.get_column("alert_ts_ms").to_numpy().astype(np.int64) + np.int64(horizon_ms)
    start, stop = candles.window_bounds(paths.get_column("mint"), entry_ts, hi_ts)
    return entry_ts, p0, hi_ts, start, stop


def _policy_kernel(parallel: bool, candles: Candles, trade_inputs, compiled, interval_ms: int):
    """One call of the policy kernel (`run_policies`, serial or parallel) as `simulate_policies`
    makes it; returns the exit timestamps and reasons, shape (policies, trades)."""
    entry_ts, p0, _, start, stop = trade_inputs
    out_ts, _, out_reason, _ = policy_core.run_policies(
        candles, start, stop, p0, entry_ts, interval_ms, compiled, parallel=parallel
    )
    return out_ts, out_reason


def _visited_candles(
    paths: pl.DataFrame, candles: Candles, trade_inputs, exit_ts: np.ndarray, reason: np.ndarray
) -> int:
    """Candles a single policy actually read: from the entry up to and including its exit candle."""
    entry_ts, _, hi_ts, _, _ = trade_inputs
    traded = reason >= 0
    last = np.minimum(exit_ts + 1, hi_ts)  # a close fill's exit_ts is the last candle's ts + Δ
    start, stop = candles.window_bounds(
        paths.get_column("mint").filter(pl.Series(traded)), entry_ts[traded], last[traded]
    )
    return int((stop - start).sum())


def single_policies(month, paths: pl.DataFrame, repeat: int, floor_candles_per_s: float) -> dict:
    """Each policy kind alone through the serial kernel on one thread, plus the full
    `simulate_trades` call (kernel + window bounds + trade frame) for comparison."""
    candles = month.candles
    inputs = _trade_inputs(paths, candles, month.horizon_ms)
    n_window = int((inputs[4] - inputs[3]).sum())
    execution = Execution()
    out = {}
    for kind, text in POLICIES.items():
        policy = parse_policy(text)
        compiled = policy_core.compile_policies([policy])

        def kernel_call(compiled=compiled):
            return _policy_kernel(False, candles, inputs, compiled, month.interval_ms)

        exit_ts, reason = kernel_call()
        visited = _visited_candles(paths, candles, inputs, exit_ts[0], reason[0])
        seconds = cpu_timed(kernel_call, repeat)

        def api_call(policy=policy, kind=kind):
            return policy_core.simulate_trades(
                paths,
                candles,
                policy,
                run_id="bench",
                policy_id=kind,
                interval_ms=month.interval_ms,
                horizon_ms=month.horizon_ms,
                execution=execution,
            )

        api_call()
        api_seconds = cpu_timed(api_call, repeat)
        out[kind] = {
            "policy": text,
            "trades": int((reason[0] >= 0).sum()),
            "window_candles": n_window,
            "visited_candles": visited,
            "seconds": summarize(seconds, "s"),
            "candles_per_s": summarize([n_window / s for s in seconds], "candles/s"),
            "visited_candles_per_s": summarize([visited / s for s in seconds], "candles/s"),
            "fraction_of_floor": summarize([n_window / s / floor_candles_per_s for s in seconds], "ratio"),
            "simulate_trades_seconds": summarize(api_seconds, "s"),
        }
    return out


def sweep_policies() -> Sweep:
    sweep = parse_sweep(SWEEP_TEMPLATES)
    if len(sweep.policies) != SWEEP_SIZE:
        raise RuntimeError(f"the benchmark grid has {len(sweep.policies)} policies, expected {SWEEP_SIZE}")
    return sweep


def sweep(month, paths: pl.DataFrame, repeat: int, threads: int) -> dict:
    """`run_sweep` of 100 policies over the month on `threads` threads (the optimization step's
    work: kernel, per-policy aggregation, ranking), and the parallel kernel alone."""
    grid = sweep_policies()
    candles = month.candles
    inputs = _trade_inputs(paths, candles, month.horizon_ms)
    n_window = int((inputs[4] - inputs[3]).sum())
    compiled = policy_core.compile_policies(grid.policies)
    numba.set_num_threads(threads)
    try:

        def full():
            return run_sweep(
                [(paths, candles)],
                grid,
                run_id="bench",
                interval_ms=month.interval_ms,
                horizon_ms=month.horizon_ms,
                execution=Execution(),
            )

        def kernel_only():
            return _policy_kernel(True, candles, inputs, compiled, month.interval_ms)

        small = Sweep(policies=grid.policies[:2])
        run_sweep(
            [(paths.head(50), candles)],
            small,
            run_id="bench",
            interval_ms=month.interval_ms,
            horizon_ms=month.horizon_ms,
            execution=Execution(),
        )  # compile / load only
        seconds = timed(full, repeat)
        kernel_seconds = timed(kernel_only, repeat)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    work = n_window * SWEEP_SIZE
    return {
        "policies": SWEEP_SIZE,
        "threads": threads,
        "window_candles": n_window,
        "seconds": summarize(seconds, "s"),
        "kernel_seconds": summarize(kernel_seconds, "s"),
        "policy_candles_per_s": summarize([work / s for s in seconds], "candles/s"),
        "kernel_policy_candles_per_s": summarize([work / s for s in kernel_seconds], "candles/s"),
    }
