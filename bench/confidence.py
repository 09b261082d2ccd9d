"""The confidence step on the reference month (docs/performance.md "Confidence"), beside the sweep
it follows: the sweep with and without the intervals of its 10 best rows, the daily matrix, PBO
and SPA, the bootstrap intervals alone, and what importing arch would cost.

    .venv/bin/python bench/confidence.py [--repeat 3]

In one process, warm (each part run once before it is timed); arch's import (a dev dependency,
no longer imported by a backtest) in fresh processes that have imported the definitions first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import dataset
import polars as pl
from measure import summarize, timed

from quantlab_pipeline.core.confidence import cscv, daily_matrix, daily_values, overfitting, return_intervals, spa
from quantlab_pipeline.core.frontier import sweep_month
from quantlab_pipeline.core.policy import simulate_policies
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

    def sweep_call(intervals: bool):
        return sweep_month(
            [(paths, month.candles)], sweep, run_id="b", benchmark=benchmark, intervals=intervals, **common
        )

    result = sweep_call(True)
    daily = result.daily
    ids = list(result.policy_ids)
    swept = ids[: len(sweep.policies)]
    matrix = daily_matrix(ids, daily.day_numbers, daily.sums, daily.counts, run_id="b")

    def overfitting_call():
        return overfitting(matrix, run_id="b", policy_ids=swept, benchmark_policy_id=ids[-1], cscv_blocks=8)

    top = result.frontier.filter(pl.col("caller_name").is_null()).sort("rank").head(10).get_column("policy_id")
    outcomes = simulate_policies(paths, month.candles, [sweep.policies[swept.index(p)] for p in top], **common)
    samples = [
        outcomes.filter(pl.col("policy_index") == i).get_column("realized_return_bps").to_numpy()
        for i in range(len(top))
    ]
    values = daily_values(matrix, sorted(swept))
    bench_values = daily_values(matrix, [ids[-1]])[0]
    figures = {}
    parts = {
        "sweep_month without intervals (grid + benchmark)": lambda: sweep_call(False),
        "sweep_month with the 10 best rows' intervals": lambda: sweep_call(True),
        "daily_matrix from the sweep's sums and counts": lambda: daily_matrix(
            ids, daily.day_numbers, daily.sums, daily.counts, run_id="b"
        ),
        "overfitting: PBO (S = 8, 70 splits) and SPA": overfitting_call,
        "SPA alone (core.spa, 1,000 repetitions)": lambda: spa(bench_values, values),
        "PBO alone, S = 16 (12,870 splits)": lambda: cscv(values, 16),
        "intervals of the 10 best rows alone": lambda: return_intervals(samples),
        "intervals of one policy (a policy run's summary)": lambda: return_intervals(samples[:1]),
    }
    for name, call in parts.items():
        call()
        figures[name] = timed(call, args.repeat)
    figures["import arch.bootstrap (fresh process; not done by a backtest)"] = [
        float(subprocess.run([sys.executable, "-c", IMPORT_ARCH], capture_output=True, text=True, check=True).stdout)
        for _ in range(args.repeat)
    ]
    base = summarize(figures["sweep_month without intervals (grid + benchmark)"], "s")["median"]
    print(f"reference month: {paths.height} paths, {len(daily.day_numbers)} days, {len(ids)} policies simulated")
    print(overfitting_call().to_dicts()[0])
    for name, samples_s in figures.items():
        fig = summarize(samples_s, "s")
        print(
            f"{name:58s} {fig['median']:8.3f} s ({fig['min']:.3f}–{fig['max']:.3f})  {fig['median'] / base:6.1%} of the sweep"
        )


if __name__ == "__main__":
    main()
