"""Child process of the cold-start figure: import the pipeline, then run every kernel a backtest
uses twice on a tiny month. The first pass pays JIT compilation (or loading it from the numba
cache, `NUMBA_CACHE_DIR`), the second only the tiny computation; their difference is the JIT cost.

Usage: coldstart_child.py DB MONTH INTERVAL HORIZON — prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time


def main(db: str, month: str, interval: str, horizon: str) -> None:
    started = time.perf_counter()
    from quantlab_pipeline.core.durations import interval_ms, parse_duration_ms
    from quantlab_pipeline.core.frontier import run_sweep
    from quantlab_pipeline.core.policy import simulate_trades
    from quantlab_pipeline.core.policy_spec import parse_policy
    from quantlab_pipeline.core.spec import Execution, TruthParams, date_to_ms, month_bounds
    from quantlab_pipeline.core.sweep_spec import parse_sweep
    from quantlab_pipeline.core.truth import compute_paths
    from quantlab_pipeline.sources.alerts import read_alerts
    from quantlab_pipeline.sources.candles import read_candles

    import_core_s = time.perf_counter() - started
    started = time.perf_counter()
    import quantlab_pipeline.definitions  # noqa: F401  (Dagster and the asset graph)

    import_dagster_s = time.perf_counter() - started

    policy = parse_policy('{"kind":"fixed_stop","stop_loss_bps":2000,"take_profit_bps":10000}')
    grid = parse_sweep([{"kind": "trailing_stop", "activation_bps": [0, 2000], "trail_bps": 1500}])

    first, last = month_bounds(month)
    start_ms, end_ms = date_to_ms(first), date_to_ms(last) + 86_400_000
    horizon_ms = parse_duration_ms(horizon)

    def backtest() -> None:
        alerts = read_alerts(db, start_ms=start_ms, end_ms=end_ms).frame
        ts = alerts.get_column("alert_ts_ms")
        mints = sorted(alerts.get_column("mint").unique().to_list())
        lo, hi = int(ts.min()), int(ts.max()) + horizon_ms
        candles = read_candles(db, mints=mints, interval=interval, start_ms=lo, end_ms=hi).candles
        paths = compute_paths(
            alerts, candles, run_id="bench", interval=interval, horizon_ms=horizon_ms, params=TruthParams()
        ).paths
        common = {"interval_ms": interval_ms(interval), "horizon_ms": horizon_ms, "execution": Execution()}
        simulate_trades(paths, candles, policy, run_id="bench", policy_id="p", **common)
        run_sweep([(paths, candles)], grid, run_id="bench", **common)

    passes = []
    for _ in range(2):
        started = time.perf_counter()
        backtest()
        passes.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "import_core_s": import_core_s,
                "import_dagster_s": import_dagster_s,
                "first_pass_s": passes[0],
                "second_pass_s": passes[1],
                "jit_s": passes[0] - passes[1],
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:5])
