"""`make bench`: the performance figures (docs/performance.md) of this machine, as a table and as JSON.

Builds the reference month with the sample generator (20,000 alerts × 1,440 five-minute candles,
cached in `bench/.cache/` by size, seed and generator version) and measures, at each requested scale, the streaming
floor, the truth kernel, one policy of each kind, a 100-policy sweep, the same exits computed by
vectorbt (the `bench` extra; `peer.py`), the portfolio and vectorbt's `Portfolio` on the same
trades (`portfolio_peer.py`), the bare DuckDB scan, and
`quantlab backtest path-only|policy` end to end (wall, Dagster overhead, peak memory); at the
largest scale, four months with `--parallel 1` and `--parallel 2`, a 10,000-policy sweep end to end
(`sweep10k.py`) and the first backtest of a fresh install (`firstrun.py`); once, the cold start and
the per-run fixed cost. Every figure is the median of `--repeat` runs with min and max.

    .venv/bin/python bench/run.py                      # scales 0.25 and 1, 3 runs each
    .venv/bin/python bench/run.py --scales 0.25,1,4    # 4× is ~110 M candles: ~8 min, ~8 GB RAM
    .venv/bin/python bench/run.py --quick              # tiny smoke run (the test suite's)
    .venv/bin/python bench/run.py --year-only --cache-dir /work/benchcache12   # the 12-month row (year.py)
    .venv/bin/python bench/run.py --year-only --cache-dir /work/benchcache12 --year-candle-cache-gb 25   # a repeated year
    .venv/bin/python bench/run.py --docs docs/performance.md   # also rewrite the page's figures (make bench)
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import dataset
import docs_block
import endtoend
import firstrun
import kernels
import numba
import peer
import portfolio_peer
import report
import research
import sweep10k
import year
from measure import ratio
from rich.console import Console

BENCH_DIR = Path(__file__).resolve().parent
QUICK_SCALE = 0.005  # 100 alerts × 1,440 candles
COLD_START_ALERTS = 50  # enough alerts that every kernel runs at least once
PARALLEL_MONTHS = ("2024-01", "2024-02", "2024-03", "2024-04")  # `--parallel` figure, at the largest scale
SINGLE_THREAD = 1


def _parse_scales(text: str) -> list[float]:
    try:
        scales = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.25,1,4, got {text!r}") from None
    if not scales or any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return scales


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scales",
        type=_parse_scales,
        default=[0.25, 1.0],
        help="sizes relative to the reference month (default 0.25,1)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per figure (default 3; median, min and max are reported)"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"tiny smoke run: scale {QUICK_SCALE:g}, one run per figure"
    )
    parser.add_argument("--seed", type=int, default=20240101, help="sample generator seed (default 20240101)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=BENCH_DIR / ".cache",
        help="generated data and numba cache (default bench/.cache)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=BENCH_DIR / "results" / "latest.json",
        help="where to write the results (default bench/results/latest.json)",
    )
    parser.add_argument(
        "--year",
        action="store_true",
        help="also measure the 12-month row (sample-data of a year, --parallel 2 over it; ~16 GB in --cache-dir)",
    )
    parser.add_argument("--year-only", action="store_true", help="measure the 12-month row alone")
    parser.add_argument(
        "--year-alerts",
        type=int,
        default=dataset.REFERENCE_ALERTS,
        metavar="N",
        help=f"alerts per month of the 12-month row (default {dataset.REFERENCE_ALERTS:,})",
    )
    parser.add_argument(
        "--year-candle-cache-gb",
        type=float,
        default=0.0,
        metavar="GB",
        help="candle cache cap of the 12-month row's backtests (default 0: off; a year fills ~19.5 GB)",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="also write the printed tables into this page's generated block (make bench: docs/performance.md)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.scales, args.repeat = [QUICK_SCALE], 1
    if args.repeat < 1:
        parser.error("--repeat: must be at least 1")
    if args.year_alerts < 10:
        parser.error("--year-alerts: must be at least 10")
    return args


def _meta(args: argparse.Namespace) -> dict:
    def git(*cmd: str) -> str | None:
        try:
            out = subprocess.run(["git", *cmd], cwd=BENCH_DIR, capture_output=True, text=True, timeout=10)
        except OSError:
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    versions = {
        name: metadata.version(name)
        for name in ("quantlab_pipeline", "dagster", "duckdb", "numba", "numpy", "polars", "pyarrow")
    }
    for name in ("vectorbt", "vectorbt-rust"):  # the optional `bench` extra
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain")),
        "seed": args.seed,
        "repeat": args.repeat,
        "scales": args.scales,
        "quick": args.quick,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _measure_scale(scale: float, args: argparse.Namespace, work_dir: Path, console: Console) -> dict:
    alerts_per_month = dataset.alerts_for_scale(scale)
    say = lambda msg: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] scale {report.scale_key(scale)}: {msg}")  # noqa: E731
    say(f"sample month ({alerts_per_month:,} alerts)")
    load_before = os.getloadavg()
    db, generation_s = dataset.ensure_database(args.cache_dir, alerts_per_month, args.seed)
    numba_cache = args.cache_dir / "numba"

    # End to end first, while this process holds no candles: the children get the memory.
    e2e = {}
    for run_type in ("path-only", "policy"):
        say(f"quantlab backtest {run_type} × {args.repeat}")
        e2e[run_type] = endtoend.end_to_end(
            run_type, db, repeat=args.repeat, numba_cache=numba_cache, work_dir=work_dir
        )

    say("reading the month in process")
    month = dataset.load_month(db)
    say("read_candles, streaming floor, truth kernel")
    read = dataset.read_candles_seconds(month, args.repeat)
    numba.set_num_threads(SINGLE_THREAD)
    try:
        floor = kernels.streaming_floor(month.candles, args.repeat)
        floor_rate = floor["candles_per_s"]["median"]
        truth, paths = kernels.truth_kernel(month, args.repeat, floor_rate)
        say("single policies")
        policies = kernels.single_policies(month, paths, args.repeat, floor_rate)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    say(f"sweep of {kernels.SWEEP_SIZE} policies")
    sweep = kernels.sweep(month, paths, args.repeat, threads=numba.config.NUMBA_NUM_THREADS)
    say("peer: vectorbt's OHLC stop generator, both engines, one thread")
    peers = peer.peer(month, paths, args.repeat)
    say("portfolio: marks, simulation, and vectorbt's Portfolio on the same trades")
    portfolio = portfolio_peer.figure(month, paths, e2e["policy"], args.repeat)
    gc.collect()
    say("bare DuckDB scan")
    scan = endtoend.bare_scan(db, (dataset.MONTH,), args.repeat)

    candle_bytes = month.candles.nbytes
    for figures in e2e.values():
        figures["ratio_to_bare_scan"] = ratio(figures["wall_s"], scan["seconds"]["median"])
        figures["ratio_to_numeric_scan"] = ratio(figures["wall_s"], scan["numeric_seconds"]["median"])
        figures["peak_rss_to_candles"] = ratio(figures["peak_rss_bytes"], candle_bytes)
    result = {
        "scale": scale,
        "alerts_per_month": alerts_per_month,
        "database": str(db),
        "generation_s": generation_s,
        # The machine is shared: the 1-minute load average around the measurements, to judge noise.
        "load_average_1m": {"start": load_before[0], "end": os.getloadavg()[0]},
        "dataset": {
            "alerts": month.alerts.height,
            "paths": paths.height,
            "mints": len(month.mints),
            "candles": len(month.candles),
            "candle_bytes": candle_bytes,
            "window_candles": truth["window_candles"],
        },
        "read_candles": read,
        "floor": floor,
        "truth": truth,
        "policies": policies,
        "sweep": sweep,
        "peer": peers,
        "portfolio": portfolio,
        "bare_scan": scan,
        "e2e": e2e,
    }
    if scale == max(args.scales):
        say(f"{sweep10k.GRID_SIZE:,}-policy sweep: quantlab backtest optimize, aggregation, vectorbt on a sample")
        result["sweep_10k"] = sweep10k.figure(
            db, month, paths, repeat=args.repeat, numba_cache=numba_cache, work_dir=work_dir
        )
    del month, paths
    gc.collect()
    if scale == max(args.scales) and args.quick:
        result["first_backtest"] = {"skipped": "not in --quick: the prebuild alone takes minutes on a loaded machine"}
    elif scale == max(args.scales):
        say(f"first backtest of a fresh install (cold and prebuilt numba cache) × {args.repeat}")
        result["first_backtest"] = firstrun.first_backtest(db, repeat=args.repeat, work_dir=work_dir)
    if scale == max(args.scales):
        months_db, months_generation_s = dataset.ensure_database(
            args.cache_dir, alerts_per_month, args.seed, PARALLEL_MONTHS
        )
        say(f"{len(PARALLEL_MONTHS)} months, --parallel 1 and 2 × {args.repeat}")
        result["months"] = endtoend.parallel_months(
            months_db, PARALLEL_MONTHS, repeat=args.repeat, numba_cache=numba_cache, work_dir=work_dir
        )
        result["months"]["generation_s"] = months_generation_s
    return result


def _research(args: argparse.Namespace, work_dir: Path, console: Console) -> dict:
    """Features on the reference month (the largest scale measured) and a three-month walk-forward
    at a quarter of it per month (docs/performance.md "Performance")."""
    scale = max(args.scales)
    numba_cache = args.cache_dir / "numba"
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] features: path-only with and without × {args.repeat}")
    db, _ = dataset.ensure_database(args.cache_dir, dataset.alerts_for_scale(scale), args.seed)
    features = research.features_overhead(db, repeat=args.repeat, numba_cache=numba_cache, work_dir=work_dir)
    per_month = dataset.alerts_for_scale(min(scale, research.WALK_FORWARD_SCALE))
    console.print(
        f"[dim]{time.strftime('%H:%M:%S')}[/dim] walk-forward: optimize 3 × {per_month:,} alerts × {args.repeat}"
    )
    three, _ = dataset.ensure_database(args.cache_dir, per_month, args.seed, research.WALK_FORWARD_MONTHS)
    walk = research.walk_forward_cost(three, repeat=args.repeat, numba_cache=numba_cache, work_dir=work_dir)
    return {
        "features_scale": scale,
        "walk_forward_alerts_per_month": per_month,
        "features": features,
        "walk_forward": walk,
    }


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    # Piped output (make, CI logs) gets a table wide enough to read; a terminal keeps its width.
    console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 150, record=True)
    if not endtoend.QUANTLAB.is_file():
        console.print(
            f"[red]{endtoend.QUANTLAB} not found: run the benchmark with the project's virtualenv (make bench)[/red]"
        )
        return 2
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    # This process's own figures (read_candles, kernels) read the candles from DuckDB, every time,
    # and leave the user's candle cache alone; the `quantlab` children use the bench's cache.
    os.environ["QUANTLAB_CANDLE_CACHE_GB"] = "0"
    work_dir = Path(tempfile.mkdtemp(prefix="quantlab-bench-"))
    started = time.perf_counter()
    try:
        results: dict = {"meta": _meta(args)}
        if args.year_only:
            results["year"] = year.measure(args, work_dir, console)
            return _finish(results, args, console, started)
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] cold start × {args.repeat} (cold and warm numba cache)")
        tiny_db, _ = dataset.ensure_database(args.cache_dir, COLD_START_ALERTS, args.seed)
        results["cold_start"] = endtoend.cold_start(
            tiny_db, repeat=args.repeat, numba_cache=args.cache_dir / "numba", work_dir=work_dir
        )
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] per-run fixed cost × {args.repeat} (tiny month)")
        results["fixed_cost"] = endtoend.fixed_cost(
            tiny_db, repeat=args.repeat, numba_cache=args.cache_dir / "numba", work_dir=work_dir
        )
        results["scales"] = {report.scale_key(s): _measure_scale(s, args, work_dir, console) for s in args.scales}
        results["scaling"] = report.scaling(results["scales"])
        results["checks"] = report.checks(results["scales"])
        results["research"] = _research(args, work_dir, console)
        if args.year:
            results["year"] = year.measure(args, work_dir, console)
        return _finish(results, args, console, started)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _finish(results: dict, args: argparse.Namespace, console: Console, started: float) -> int:
    """Write the JSON atomically and print the tables of what was measured."""
    results["meta"]["elapsed_s"] = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(f".{args.json.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, args.json)
    console.export_text(clear=True)  # the progress lines are not figures
    if "scales" in results:
        report.render(results, console)
        for scale in results["scales"].values():
            portfolio_peer.render(scale, console)
            sweep10k.render(scale, console)
        research.render(results["research"], console)
        if args.docs is not None:
            docs_block.update(args.docs, console.export_text(clear=True), results["meta"])
    if "year" in results:
        year.render(results["year"], console)
        if args.docs is not None:  # its own block: `--year-only` leaves the other figures alone
            docs_block.update(args.docs, console.export_text(clear=True), results["meta"], docs_block.YEAR)
    console.print(f"results: {args.json} ({results['meta']['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
