"""Figures measured across processes: `quantlab backtest` end to end, the bare DuckDB scan it is
compared with, and cold start.

Each end-to-end run is a real `quantlab` subprocess with its own fresh `DAGSTER_HOME` (holding
only the project's `dagster.yaml`) and runs directory, so nothing of the user's instance is
touched, and with the benchmark's warm numba cache: it measures a user's second run, not
compilation (that is the cold-start figure).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa
from dataset import FIRST_DAY, HORIZON, INTERVAL, LAST_DAY, MONTH, MonthInputs
from kernels import E2E_POLICY, E2E_POLICY_ID
from measure import child_env, run_child, summarize, timed

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
QUANTLAB = Path(sys.executable).parent / "quantlab"


def bare_scan(month: MonthInputs, repeat: int) -> dict:
    """The month's candle rows (same mints, interval and time range as the pipeline's read) fetched
    by one DuckDB query into Arrow, in this process: the cost of just getting the data out.

    `seconds` fetches the rows with the columns the pipeline reads (mint, ts_ms, OHLCV);
    `numeric_seconds` leaves the mint strings out (filtered on, not fetched), the lower bound.
    """
    con = duckdb.connect(str(month.db), read_only=True)
    try:
        con.execute("SET enable_progress_bar = false")
        con.register("wanted_mints", pa.table({"mint": pa.array(month.mints, pa.string())}))
        where = (
            "FROM ohlcv_candles WHERE interval = $interval AND ts_ms >= $start_ms AND ts_ms < $end_ms "
            "AND mint IN (SELECT mint FROM wanted_mints)"
        )
        rows_query = f"SELECT mint, ts_ms, open, high, low, close, volume {where}"
        numeric_query = f"SELECT ts_ms, open, high, low, close, volume {where}"
        params = {"interval": INTERVAL, "start_ms": month.start_ms, "end_ms": month.end_ms}
        rows = con.sql(rows_query, params=params).to_arrow_table().num_rows  # also warms the OS page cache
        seconds = timed(lambda: con.sql(rows_query, params=params).to_arrow_table(), repeat)
        numeric_seconds = timed(lambda: con.sql(numeric_query, params=params).to_arrow_table(), repeat)
    finally:
        con.close()
    return {"rows": rows, "seconds": summarize(seconds, "s"), "numeric_seconds": summarize(numeric_seconds, "s")}


def _backtest_argv(run_type: str, db: Path, runs_dir: Path) -> list[str]:
    argv = [
        str(QUANTLAB),
        "backtest",
        run_type,
        "--calls-from-duckdb",
        str(db),
        "--interval",
        INTERVAL,
        "--horizon",
        HORIZON,
        "--from",
        FIRST_DAY,
        "--to",
        LAST_DAY,
        "--runs-dir",
        str(runs_dir),
    ]
    if run_type == "policy":
        argv += ["--policy-id", E2E_POLICY_ID, "--policy", E2E_POLICY]
    return argv


def _run_dir(runs_dir: Path) -> Path:
    found = sorted((runs_dir / MONTH).glob("run_id=*"))
    if len(found) != 1:
        raise RuntimeError(f"expected one run directory under {runs_dir / MONTH}, found {len(found)}")
    return found[0]


def _step_times(run_dir: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Compute ms per step (run.json `timing`) and write ms per artifact (the IO manager's
    `wrote <path>: … in N ms` lines in logs/stdout.txt)."""
    manifest = json.loads((run_dir / "run.json").read_text())
    if manifest.get("status") != "completed":
        raise RuntimeError(f"{run_dir}: run status is {manifest.get('status')!r}, not completed")
    compute = {k.removesuffix("_ms"): int(v) for k, v in manifest["timing"].items() if k != "total_ms"}
    log = (run_dir / "logs" / "stdout.txt").read_text()
    writes: dict[str, int] = {}
    for artifact, record in manifest["artifacts"].items():
        if artifact == "errors":  # written inside its phase's artifact write
            continue
        found = re.findall(rf"wrote {re.escape(record['path'])}: .* in (\d+) ms", log)
        if not found:
            raise RuntimeError(f"{run_dir}/logs/stdout.txt: no 'wrote {record['path']}: … in N ms' line")
        writes[artifact] = int(found[-1])
    return compute, writes


def end_to_end(run_type: str, db: Path, *, repeat: int, numba_cache: Path, work_dir: Path) -> dict:
    """`quantlab backtest <run_type>` on the month, `repeat` times, each in a fresh Dagster home
    with the project's `dagster.yaml`.

    Dagster overhead = wall time minus the steps' compute (reading inputs, kernels, frames) and
    the artifact writes: what remains is process start-up, imports, run creation, and Dagster's
    own run, step and event machinery.
    """
    walls, rss, overheads = [], [], []
    steps: dict[str, list[float]] = {}
    for _ in range(repeat):
        scratch = Path(tempfile.mkdtemp(prefix=f"e2e-{run_type}-", dir=work_dir))
        try:
            runs_dir, home = scratch / "runs", scratch / "dagster_home"
            home.mkdir()
            # The project's instance config (telemetry off, pools); its relative state paths land
            # in the scratch directory, the child's working directory.
            shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
            env = child_env(DAGSTER_HOME=str(home), QUANTLAB_RUNS_DIR=str(runs_dir), NUMBA_CACHE_DIR=str(numba_cache))
            child = run_child(_backtest_argv(run_type, db, runs_dir), env=env, cwd=scratch, log_dir=scratch / "child")
            if child.returncode != 0:
                tail = "\n".join((child.stderr or child.stdout).strip().splitlines()[-15:])
                raise RuntimeError(f"quantlab backtest {run_type} exited {child.returncode}:\n{tail}")
            compute, writes = _step_times(_run_dir(runs_dir))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        walls.append(child.wall_s)
        rss.append(child.peak_rss_bytes)
        overheads.append(child.wall_s - (sum(compute.values()) + sum(writes.values())) / 1000)
        for name, ms in compute.items():
            steps.setdefault(f"{name}_compute", []).append(ms / 1000)
        for name, ms in writes.items():
            steps.setdefault(f"{name}_write", []).append(ms / 1000)
    return {
        "wall_s": summarize(walls, "s"),
        "peak_rss_bytes": summarize(rss, "bytes"),
        "dagster_overhead_s": summarize(overheads, "s"),
        "steps_s": {name: summarize(values, "s") for name, values in steps.items()},
    }


def cold_start(db: Path, *, repeat: int, numba_cache: Path, work_dir: Path) -> dict:
    """Import + JIT of a backtest's kernels in a fresh process: with an empty numba cache (every
    kernel compiled) and with the cache warm (compiled code loaded from disk)."""
    argv = [sys.executable, str(BENCH_DIR / "coldstart_child.py"), str(db), MONTH, INTERVAL, HORIZON]

    def one(cache: Path) -> dict:
        child = run_child(argv, env=child_env(NUMBA_CACHE_DIR=str(cache)), cwd=REPO, log_dir=work_dir / "coldstart")
        if child.returncode != 0:
            tail = "\n".join(child.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"cold-start child exited {child.returncode}:\n{tail}")
        report = json.loads(child.stdout.strip().splitlines()[-1])
        return {"process_s": child.wall_s, "peak_rss_bytes": child.peak_rss_bytes, **report}

    cold = []
    for _ in range(repeat):
        cache = Path(tempfile.mkdtemp(prefix="numba-cold-", dir=work_dir))
        try:
            cold.append(one(cache))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    one(numba_cache)  # fill (or refresh) the warm cache the end-to-end runs use
    warm = [one(numba_cache) for _ in range(repeat)]
    keys = ("process_s", "import_core_s", "import_dagster_s", "jit_s", "first_pass_s", "second_pass_s")
    return {
        state: {
            **{k: summarize([s[k] for s in samples], "s") for k in keys},
            "peak_rss_bytes": summarize([s["peak_rss_bytes"] for s in samples], "bytes"),
        }
        for state, samples in (("cold", cold), ("warm", warm))
    }
