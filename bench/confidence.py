"""The confidence step on the reference month (docs/performance.md "Confidence"), beside the sweep
it follows: the daily matrix, PBO and SPA, the bootstrap intervals, and importing arch.

    .venv/bin/python bench/confidence.py [--repeat 3]

In one process, warm (each part run once before it is timed); arch's import in fresh processes
that have imported Dagster and the definitions first, as a backtest step has.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import dataset
import numpy as np
import polars as pl
from measure import summarize, timed

from quantlab_pipeline.core.confidence import DAY_MS, cscv, daily_matrix, daily_values, overfitting, return_intervals
from quantlab_pipeline.core.frontier import run_sweep, simulated_policies
from quantlab_pipeline.core.policy import simulate_policies
from quantlab_pipeline.core.policy_spec import policy_id_of
from quantlab_pipeline.core.spec import Execution, TruthParams
from quantlab_pipeline.core.sweep_spec import benchmark_policy, parse_sweep
from quantlab_pipeline.core.truth import compute_paths

IMPORT_ARCH = (
    "import time, quantlab_pipeline.definitions; t = time.perf_counter(); import arch.bootstrap; "
    "print(time.perf_counter() - t)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path(__file__).parent / ".cache")
    args = parser.parse_args()
    db, _ = dataset.ensure_database(args.cache_dir, dataset.REFERENCE_ALERTS, 20240101)
    month = dataset.load_month(db)
    paths = compute_paths(
        month.alerts,
        month.candles,
        run_id="b",
        interval=dataset.INTERVAL,
        horizon_ms=month.horizon_ms,
        params=TruthParams(),
    ).paths
    sweep = parse_sweep(None)
    benchmark = benchmark_policy(sweep, month.horizon_ms)
    common = dict(interval_ms=month.interval_ms, horizon_ms=month.horizon_ms, execution=Execution())

    def sweep_call():
        return run_sweep([(paths, month.candles)], sweep, run_id="b", benchmark=benchmark, **common)

    frontier = sweep_call()
    figures = {"run_sweep (grid + benchmark)": timed(sweep_call, args.repeat)}

    # the per-(policy, day) sums and counts the sweep kernel is to emit
    policies = simulated_policies(sweep, benchmark)
    ids = [policy_id_of(p) for p in policies]
    trades = simulate_policies(paths, month.candles, policies, **common)
    day = trades.get_column("entry_ts_ms").to_numpy() // DAY_MS
    days, column = np.unique(day, return_inverse=True)
    row = trades.get_column("policy_index").to_numpy()
    returns = trades.get_column("realized_return_bps").to_numpy()
    sums, counts = np.zeros((len(ids), len(days))), np.zeros((len(ids), len(days)), dtype=np.int64)
    np.add.at(sums, (row, column), returns)
    np.add.at(counts, (row, column), 1)
    matrix = daily_matrix(ids, days, sums, counts, run_id="b")
    swept = ids[: len(sweep.policies)]

    def overfitting_call():
        return overfitting(matrix, run_id="b", policy_ids=swept, benchmark_policy_id=ids[-1], cscv_blocks=8)

    top = frontier.filter(pl.col("caller_name").is_null()).sort("rank").head(10).get_column("policy_id")
    samples = [returns[row == ids.index(p)] for p in top]
    values16 = daily_values(matrix, sorted(swept))
    parts = {
        "daily_matrix": lambda: daily_matrix(ids, days, sums, counts, run_id="b"),
        "overfitting (PBO S=8 + SPA)": overfitting_call,
        "PBO alone, S=16": lambda: cscv(values16, 16),
        "intervals, the 10 best rows": lambda: return_intervals(samples),
        "intervals, one policy": lambda: return_intervals(samples[:1]),
    }
    for name, call in parts.items():
        call()
        figures[name] = timed(call, args.repeat)
    figures["import arch.bootstrap (fresh process)"] = [
        float(subprocess.run([sys.executable, "-c", IMPORT_ARCH], capture_output=True, text=True, check=True).stdout)
        for _ in range(args.repeat)
    ]
    base = summarize(figures["run_sweep (grid + benchmark)"], "s")["median"]
    print(f"reference month: {paths.height} paths, {len(days)} days, {len(ids)} policies simulated")
    print(overfitting_call().to_dicts()[0])
    for name, samples_s in figures.items():
        fig = summarize(samples_s, "s")
        print(
            f"{name:42s} {fig['median']:8.3f} s ({fig['min']:.3f}–{fig['max']:.3f})  {fig['median'] / base:6.1%} of the sweep"
        )


if __name__ == "__main__":
    main()
