"""The research-scale sweep (docs/performance.md, "10,000-policy sweeps"): a 10,000-policy grid
over the reference month end to end through `quantlab backtest optimize`, the sweep beside its
kernel alone (the aggregation's share), and vectorbt on a sample of the same grid.

The grid is 100 stops × 100 targets of `fixed_stop`, a rule vectorbt's OHLC stop generator
expresses (`sl_stop`, `tp_stop`), so the peer runs the very same policies. vectorbt has no grid
call that fits in memory here (its broadcast form lays every window out once per policy: 10,000 ×
the month), so its fastest formulation is one generator call per policy over the month's windows
on the faster of its two engines; it is timed on `PEER_SAMPLE` policies spread over the grid
and scaled to 10,000, which is stated with the figure. Its exits are compared with ours on the
sample, exactly (candle and fill).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numba
import numpy as np
import peer
import polars as pl
from endtoend import _backtest_argv, _run_dir, _step_times, backtest_child, dagster_home
from kernels import cpu_timed
from measure import summarize, timed

from quantlab_pipeline.core.frontier import POLICY_CHUNK, run_sweep, sweep_month
from quantlab_pipeline.core.inputs import DEFAULT_CALLER
from quantlab_pipeline.core.policy import compile_policies, run_policies, simulate_policies
from quantlab_pipeline.core.policy_spec import BPS, policy_id_of
from quantlab_pipeline.core.spec import Execution
from quantlab_pipeline.core.summary import metric_exprs
from quantlab_pipeline.core.sweep_spec import Sweep, parse_sweep

STOPS_BPS = list(range(50, 5050, 50))  # 100 stops, 0.5 % to 50 %
TARGETS_BPS = list(range(500, 50500, 500))  # 100 targets, 5 % to 500 %
GRID = [{"kind": "fixed_stop", "stop_loss_bps": STOPS_BPS, "take_profit_bps": TARGETS_BPS}]
GRID_SIZE = len(STOPS_BPS) * len(TARGETS_BPS)
AGGREGATION_SUBSET = 1_000  # policies of the sweep-vs-kernel figure (every 10th of the grid)
PEER_SAMPLE = 8  # policies of the grid vectorbt is timed on


def grid() -> Sweep:
    sweep = parse_sweep(GRID)
    if len(sweep.policies) != GRID_SIZE:
        raise RuntimeError(f"the 10,000-policy grid has {len(sweep.policies)} policies")
    return sweep


def end_to_end(db: Path, *, repeat: int, numba_cache: Path, work_dir: Path) -> dict:
    """`quantlab backtest optimize --sweep @grid.json` on the reference month, `repeat` times
    (after one untimed run that fills the candle cache): wall, the frontier step's compute, and
    the frontier's rows."""
    walls, frontier_s = [], []
    with dagster_home(work_dir, numba_cache) as (scratch, env):
        grid_file = scratch / "grid10k.json"
        grid_file.write_text(json.dumps(GRID))
        sweep_args = ["--sweep", f"@{grid_file}"]
        first = backtest_child([*_backtest_argv("optimize", db, scratch / "runs-first"), *sweep_args], scratch, env)
        rows = pl.scan_parquet(_run_dir(scratch / "runs-first") / "results" / "frontier.parquet").select(pl.len())
        n_rows = int(rows.collect().item())
        shutil.rmtree(scratch / "runs-first")
        for attempt in range(repeat):
            runs_dir = scratch / f"runs-{attempt}"
            child = backtest_child([*_backtest_argv("optimize", db, runs_dir), *sweep_args], scratch, env)
            compute, _ = _step_times(_run_dir(runs_dir))
            shutil.rmtree(runs_dir)
            walls.append(child.wall_s)
            frontier_s.append(compute["frontier"] / 1000)
    return {
        "policies": GRID_SIZE,
        "frontier_rows": n_rows,
        "wall_s": summarize(walls, "s"),
        "first_run_s": summarize([first.wall_s], "s"),
        "frontier_compute_s": summarize(frontier_s, "s"),
    }


def aggregation_share(month, paths: pl.DataFrame, repeat: int) -> dict:
    """The sweep of `AGGREGATION_SUBSET` policies of the grid (`sweep_month` without the best rows'
    bootstrap intervals: kernel, aggregation, ranking) against its policy kernel alone over the
    same chunks (windows bounded once): the sweep's wall over its kernel's, interleaved; and the
    sweep with the intervals (docs/confidence.md), whose bootstrap is apart from the aggregation."""
    sweep = Sweep(policies=grid().policies[:: GRID_SIZE // AGGREGATION_SUBSET])
    candles = month.candles
    common = dict(run_id="bench", interval_ms=month.interval_ms, horizon_ms=month.horizon_ms, execution=Execution())
    entry_ts = np.ascontiguousarray(paths.get_column("entry_ts_ms").to_numpy(), dtype=np.int64)
    p0 = np.ascontiguousarray(paths.get_column("p0").to_numpy(), dtype=np.float64)
    hi_ts = paths.get_column("alert_ts_ms").to_numpy().astype(np.int64) + np.int64(month.horizon_ms)
    start, stop = candles.window_bounds(paths.get_column("mint"), entry_ts, hi_ts)
    chunks = [
        compile_policies(sweep.policies[lo : lo + POLICY_CHUNK]) for lo in range(0, AGGREGATION_SUBSET, POLICY_CHUNK)
    ]

    def full() -> None:
        sweep_month([(paths, candles)], sweep, intervals=False, **common)

    def with_intervals() -> None:
        sweep_month([(paths, candles)], sweep, **common)

    def kernel() -> None:
        for compiled in chunks:
            run_policies(candles, start, stop, p0, entry_ts, month.interval_ms, compiled, parallel=True)

    full()  # compile / load
    kernel()
    with_intervals()
    sweep_s, kernel_s, cpu_s, intervals_s = [], [], [], []
    for _ in range(repeat):
        sweep_s += timed(full, 1)
        kernel_s += timed(kernel, 1)
        cpu_s += cpu_timed(full, 1)
        intervals_s += timed(with_intervals, 1)
    return {
        "policies": AGGREGATION_SUBSET,
        "seconds": summarize(sweep_s, "s"),
        "kernel_seconds": summarize(kernel_s, "s"),
        "ratio": summarize([s / k for s, k in zip(sweep_s, kernel_s, strict=True)], "ratio"),
        "cpu_seconds": summarize(cpu_s, "s"),  # every thread: what vectorbt's one-thread CPU time compares with
        "with_intervals_seconds": summarize(intervals_s, "s"),
    }


def polars_check(month, paths: pl.DataFrame) -> dict:
    """The compiled aggregation against Polars' on the reference month: `POLICY_CHUNK` policies of
    the grid, per caller, every metric compared bit for bit (nulls at the same rows)."""
    names = ("trades_count", "avg_return_bps", "median_return_bps", "stop_out_rate", "p95_mae_bps", "avg_tail_capture")
    sweep = Sweep(policies=grid().policies[:: GRID_SIZE // POLICY_CHUNK][:POLICY_CHUNK], per_caller=True)
    common = dict(interval_ms=month.interval_ms, horizon_ms=month.horizon_ms, execution=Execution())
    ours = run_sweep([(paths, month.candles)], sweep, run_id="bench", **common).select(
        "policy_id", "caller_name", *names
    )
    trades = simulate_policies(paths, month.candles, sweep.policies, **common)
    caller = paths.get_column("caller_name").fill_null(DEFAULT_CALLER).gather(trades.get_column("path_index"))
    trades = trades.with_columns(caller.alias("caller_name"))
    ids = pl.DataFrame(
        {"policy_index": range(len(sweep.policies)), "policy_id": [policy_id_of(p) for p in sweep.policies]}
    )
    theirs = pl.concat(
        [
            trades.group_by("policy_index").agg(metric_exprs(*names)).with_columns(caller_name=pl.lit(None, pl.String)),
            trades.group_by("policy_index", "caller_name").agg(metric_exprs(*names)),
        ],
        how="diagonal",
    ).join(ids, on="policy_index")
    joined = ours.join(theirs, on=["policy_id", "caller_name"], how="full", nulls_equal=True, suffix="_polars")
    differing = sum(
        int((~np.isclose(joined[n].to_numpy(), joined[f"{n}_polars"].to_numpy(), rtol=0, atol=0, equal_nan=True)).sum())
        for n in names
    )
    return {
        "policies": len(sweep.policies),
        "rows": joined.height,
        "values": joined.height * len(names),
        "differing_values": differing,
    }


def vectorbt_sample(month, paths: pl.DataFrame, repeat: int) -> dict:
    """vectorbt's fastest engine on `PEER_SAMPLE` policies of the grid, one thread, CPU seconds
    per policy, and its exits against ours on them; `{"skipped": reason}` without the `bench` extra."""
    found = peer._vectorbt()
    if found is None:
        return {"skipped": "vectorbt is not installed (pip install -e '.[bench]'; make bench does)"}
    generate, stop_types = found
    candles = month.candles
    paths, start, stop, last_row = peer.windows(month, paths)
    arrays = peer._layout(candles, start, stop)
    rows = np.arange(arrays["open"].shape[0], dtype=np.int64)[:, None]
    ts_window = candles.ts[np.minimum(start[None, :] + rows, len(candles) - 1)]
    policies = grid().policies
    sample = [policies[i] for i in np.linspace(0, GRID_SIZE - 1, PEER_SAMPLE).astype(int)]
    per_policy: list[float] = []
    differing = 0
    numba.set_num_threads(1)
    try:
        for policy in sample:
            kwargs = {"sl_stop": policy.stop_loss_bps / BPS, "tp_stop": policy.take_profit_bps / BPS}
            frame = simulate_policies(
                paths,
                candles,
                [policy],
                interval_ms=month.interval_ms,
                horizon_ms=month.horizon_ms,
                execution=Execution(),
                parallel=False,
            )
            fastest = np.inf
            for engine in peer.ENGINES:
                out = (np.full(arrays["open"].shape, np.nan, order="F"), np.full(arrays["open"].shape, -1, order="F"))

                def call(engine=engine, out=out, kwargs=kwargs):
                    return peer._vbt_call(generate, arrays, kwargs, engine, out)

                exits = call()
                fastest = min(fastest, float(np.median(cpu_timed(call, repeat))))
                vbt_ts, vbt_px = peer._vbt_exits(
                    exits, *out, stop_types, arrays, ts_window, last_row, month.interval_ms
                )
                ours_ts, ours_px = frame.get_column("exit_ts_ms").to_numpy(), frame.get_column("exit_px").to_numpy()
                differing += int(((vbt_ts != ours_ts) | (vbt_px != ours_px)).sum())
                del out, exits
            per_policy.append(fastest)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    per_policy_s = float(np.median(per_policy))
    return {
        "sample_policies": PEER_SAMPLE,
        "seconds_per_policy": summarize(per_policy, "s"),
        "scaled_seconds": per_policy_s * GRID_SIZE,
        "differing_exits": differing,
        "exits_compared": PEER_SAMPLE * len(peer.ENGINES) * paths.height,
        "note": f"vectorbt timed on {PEER_SAMPLE} policies of the grid (one thread, CPU s, fastest engine) "
        f"and scaled to {GRID_SIZE:,}",
    }


def figure(db: Path, month, paths: pl.DataFrame, *, repeat: int, numba_cache: Path, work_dir: Path) -> dict:
    """The whole row: end to end, the aggregation's share, and vectorbt scaled; the ratio of
    vectorbt's scaled time to our end-to-end wall."""
    started = time.perf_counter()
    out = {"end_to_end": end_to_end(db, repeat=repeat, numba_cache=numba_cache, work_dir=work_dir)}
    out["aggregation"] = aggregation_share(month, paths, repeat)
    out["aggregation"]["polars_check"] = polars_check(month, paths)
    out["vectorbt"] = vectorbt_sample(month, paths, repeat)
    if "scaled_seconds" in out["vectorbt"]:
        scaled = out["vectorbt"]["scaled_seconds"]
        out["vectorbt_over_ours"] = scaled / out["end_to_end"]["wall_s"]["median"]
        # CPU against CPU: our sweep's (every thread) on 1,000 policies of the grid, scaled to 10,000
        ours_cpu = out["aggregation"]["cpu_seconds"]["median"] * GRID_SIZE / AGGREGATION_SUBSET
        out["vectorbt_over_ours_cpu"] = scaled / ours_cpu
    out["measured_s"] = time.perf_counter() - started
    return out


def render(scale: dict, console) -> None:
    """The 10,000-policy row and the first backtest, when the scale measured them."""
    from rich.table import Table

    table = Table(title="Research scale and first run (docs/performance.md)")
    for name in ("figure", "value", "target"):
        table.add_column(name)
    sweep = scale.get("sweep_10k")
    if sweep:
        e2e, agg = sweep["end_to_end"], sweep["aggregation"]
        table.add_row(
            f"quantlab backtest optimize, {e2e['policies']:,} policies (s)", f"{e2e['wall_s']['median']:.1f}", "≤ 60"
        )
        table.add_row("  its frontier step (s)", f"{e2e['frontier_compute_s']['median']:.1f}", "")
        table.add_row(f"sweep / its kernel, {agg['policies']:,} policies", f"{agg['ratio']['median']:.3f}", "≤ 1.1")
        check = agg["polars_check"]
        table.add_row(
            "values differing from Polars' aggregation", f"{check['differing_values']} of {check['values']:,}", "0"
        )
        peer = sweep["vectorbt"]
        if "scaled_seconds" in peer:
            table.add_row(
                f"vectorbt scaled / ours end to end ({peer['note']})", f"{sweep['vectorbt_over_ours']:.1f}×", "≥ 10×"
            )
            cpu = f"{sweep['vectorbt_over_ours_cpu']:.1f}×"
            table.add_row("  the same, CPU over CPU (ours: 1,000 policies scaled)", cpu, "≥ 10×")
            table.add_row(
                "  exits differing from vectorbt's", f"{peer['differing_exits']} of {peer['exits_compared']:,}", "0"
            )
    first = scale.get("first_backtest")
    if first and "skipped" not in first:
        table.add_row("first backtest, numba cache empty (s)", f"{first['cold_s']['median']:.1f}", "")
        table.add_row(
            "first backtest after make install's prebuild (s)", f"{first['prebuilt_s']['median']:.1f}", "≤ 10"
        )
        table.add_row("  ratio", f"{first['ratio']['median']:.2f}", "")
    if table.row_count:
        console.print(table)
