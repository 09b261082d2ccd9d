"""Figures measured across processes: `quantlab backtest` end to end (one month in the foreground,
four months with `--parallel 1` and `2`), the bare DuckDB scan each is compared with, the per-run
fixed cost, and cold start.

Each end-to-end run is a real `quantlab` subprocess with the benchmark's own `DAGSTER_HOME`
(holding only the project's `dagster.yaml`), runs directory and warm server, so nothing of the
user's is touched, and with the benchmark's warm numba cache: it measures a user's second
backtest of a month — the warm server running, the month's candles in the candle cache — not
compilation (the cold-start figure), creating the instance or starting the server (the fixed
cost shows both), nor the first read of the month (the `first_run` figure shows it).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
from dataset import HORIZON, INTERVAL, MONTH, MonthRead, month_read
from kernels import E2E_POLICY, E2E_POLICY_ID
from measure import ChildRun, child_env, ratio, run_child, summarize, timed

from quantlab_pipeline.core.spec import month_bounds
from quantlab_pipeline.warm.client import stop_servers

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
QUANTLAB = Path(sys.executable).parent / "quantlab"


WITH_MINTS, NUMERIC = "mint, ts_ms, open, high, low, close, volume", "ts_ms, open, high, low, close, volume"
_SCAN_WHERE = (
    "FROM ohlcv_candles WHERE interval = $interval AND ts_ms >= $start_ms AND ts_ms < $end_ms "
    "AND mint IN (SELECT mint FROM wanted_mints)"
)


def scan_connection(db: Path, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only connection for the bare scan; `memory_limit` caps DuckDB's block cache."""
    con = duckdb.connect(str(db), read_only=True, config={"memory_limit": memory_limit} if memory_limit else {})
    con.execute("SET enable_progress_bar = false")
    return con


def fetch_months(con: duckdb.DuckDBPyConnection, reads: Sequence[MonthRead], columns: str) -> int:
    """The candle rows of each month's read fetched into Arrow, one query a month; rows fetched."""
    fetched = 0
    for read in reads:
        con.register("wanted_mints", pa.table({"mint": pa.array(read.mints, pa.string())}))
        params = {"interval": INTERVAL, "start_ms": read.start_ms, "end_ms": read.end_ms}
        fetched += con.sql(f"SELECT {columns} {_SCAN_WHERE}", params=params).to_arrow_table().num_rows
    return fetched


def bare_scan(db: Path, months: Sequence[str], repeat: int) -> dict:
    """The candle rows a backtest of `months` reads (each month's alerts' mints, interval and time
    range, look-back included: `dataset.month_read`), fetched by one DuckDB query per month into
    Arrow, in this process: the cost of just getting the data out. A sample is the months' sum.

    The samples come from two connections, each warmed by two untimed fetches (the OS page cache,
    the allocators: a connection's first fetches are up to 1.5× slower): the same four-month
    fetch settles at ~2.0 s on one connection and ~2.8 s on another (where its memory lands), so
    one connection alone would show one of the two.

    `seconds` fetches the rows with the columns the pipeline reads (mint, ts_ms, OHLCV);
    `numeric_seconds` leaves the mint strings out (filtered on, not fetched), the lower bound.
    """
    reads = [month_read(db, month) for month in months]
    seconds: list[float] = []
    numeric_seconds: list[float] = []
    rows = 0
    for _ in range(2):
        con = scan_connection(db)
        try:

            def fetch(columns: str, con: duckdb.DuckDBPyConnection = con) -> int:
                return fetch_months(con, reads, columns)

            rows = fetch(WITH_MINTS)
            fetch(WITH_MINTS)
            seconds += timed(lambda: fetch(WITH_MINTS), repeat)
            numeric_seconds += timed(lambda: fetch(NUMERIC), repeat)
        finally:
            con.close()
    return {"rows": rows, "seconds": summarize(seconds, "s"), "numeric_seconds": summarize(numeric_seconds, "s")}


def _backtest_argv(run_type: str, db: Path, runs_dir: Path | None, months: Sequence[str] = (MONTH,)) -> list[str]:
    """`quantlab backtest <run_type>` over `months` of `db` (the bench's interval and horizon);
    `--runs-dir` only when `runs_dir` is given."""
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
        month_bounds(months[0])[0].isoformat(),
        "--to",
        month_bounds(months[-1])[1].isoformat(),
    ]
    if runs_dir is not None:
        argv += ["--runs-dir", str(runs_dir)]
    if run_type == "policy":
        argv += ["--policy-id", E2E_POLICY_ID, "--policy", E2E_POLICY]
    return argv


def _run_dir(runs_dir: Path, month: str = MONTH) -> Path:
    found = sorted((runs_dir / month).glob("run_id=*"))
    if len(found) != 1:
        raise RuntimeError(f"expected one run directory under {runs_dir / month}, found {len(found)}")
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


@contextlib.contextmanager
def dagster_home(
    work_dir: Path, numba_cache: Path, *, start_server: bool = True
) -> Iterator[tuple[Path, dict[str, str]]]:
    """A scratch directory holding a Dagster home with the project's `dagster.yaml` (telemetry off,
    queue, pools; its relative state paths land in the scratch directory, the children's working
    directory), and the environment of a child that uses it, with a warm server directory of its
    own (stopped at the end).

    The instance is created, and the warm server started, here, before anything is timed: the
    figures are a user's second run (both are rows of the per-run fixed cost).
    """
    scratch = Path(tempfile.mkdtemp(prefix="e2e-", dir=work_dir))
    warm_dir = tempfile.mkdtemp(prefix="qlw-", dir="/tmp")  # short: a socket path holds 107 bytes
    try:
        home = scratch / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        env = child_env(
            DAGSTER_HOME=str(home),
            NUMBA_CACHE_DIR=str(numba_cache),
            QUANTLAB_CACHE_DIR=str(numba_cache.parent / "quantlab"),
        )
        child = run_child(
            [sys.executable, "-c", "import dagster; dagster.DagsterInstance.get().dispose()"],
            env=env,
            cwd=scratch,
            log_dir=scratch / "instance",
        )
        if child.returncode != 0:
            raise RuntimeError(f"creating the Dagster instance failed:\n{child.stderr.strip()[-2000:]}")
        env["QUANTLAB_WARM_DIR"] = warm_dir
        if start_server:
            backtest_child([str(QUANTLAB), "server", "status"], scratch, env)
        yield scratch, env
    finally:
        stop_servers(warm_dir)
        shutil.rmtree(warm_dir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def backtest_child(argv: list[str], scratch: Path, env: dict[str, str]) -> ChildRun:
    """One `quantlab backtest` in the scratch directory of `dagster_home`; an error if it failed."""
    child = run_child(argv, env=env, cwd=scratch, log_dir=scratch / "child")
    if child.returncode != 0:
        tail = "\n".join((child.stderr or child.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(Path(a).name for a in argv[:3])} exited {child.returncode}:\n{tail}")
    return child


def end_to_end(run_type: str, db: Path, *, repeat: int, numba_cache: Path, work_dir: Path) -> dict:
    """`quantlab backtest <run_type>` on the reference month in the foreground, `repeat` times,
    after one first run of the month in the command's own process (no warm server: its peak RSS
    is the backtest's; it also fills the candle cache, as a user's first backtest of a month does).

    Dagster overhead = wall time minus the steps' compute (reading inputs, kernels, frames) and
    the artifact writes: what remains is the command's start, run creation, and Dagster's own run,
    step and event machinery.
    """
    walls, overheads = [], []
    steps: dict[str, list[float]] = {}
    with dagster_home(work_dir, numba_cache) as (scratch, env):
        first = backtest_child(_backtest_argv(run_type, db, scratch / "runs-first"), scratch, _own_process(env))
        shutil.rmtree(scratch / "runs-first")
        for attempt in range(repeat):
            runs_dir = scratch / f"runs-{attempt}"
            child = backtest_child(_backtest_argv(run_type, db, runs_dir), scratch, env)
            compute, writes = _step_times(_run_dir(runs_dir))
            shutil.rmtree(runs_dir)
            walls.append(child.wall_s)
            overheads.append(child.wall_s - (sum(compute.values()) + sum(writes.values())) / 1000)
            for name, ms in compute.items():
                steps.setdefault(f"{name}_compute", []).append(ms / 1000)
            for name, ms in writes.items():
                steps.setdefault(f"{name}_write", []).append(ms / 1000)
    return {
        "wall_s": summarize(walls, "s"),
        "first_run_s": summarize([first.wall_s], "s"),
        "peak_rss_bytes": summarize([first.peak_rss_bytes], "bytes"),
        "dagster_overhead_s": summarize(overheads, "s"),
        "steps_s": {name: summarize(values, "s") for name, values in steps.items()},
    }


def _own_process(env: dict[str, str]) -> dict[str, str]:
    """`env` for a command that runs in its own process, not forked from the warm server."""
    return {**env, "QUANTLAB_WARM_SERVER": "off"}


def parallel_months(db: Path, months: Sequence[str], *, repeat: int, numba_cache: Path, work_dir: Path) -> dict:
    """`quantlab backtest policy` over `months` with `--parallel 1` and `--parallel 2`, interleaved
    so the shared machine's load hits both alike, then the bare scan of the same months' candles."""
    walls: dict[int, list[float]] = {1: [], 2: []}
    with dagster_home(work_dir, numba_cache) as (scratch, env):
        # The months' first read, untimed: the figures are a second backtest of the same months.
        backtest_child([*_backtest_argv("policy", db, scratch / "runs-first", months), "--parallel", "2"], scratch, env)
        shutil.rmtree(scratch / "runs-first")
        for attempt in range(repeat):
            for parallel in walls:
                runs_dir = scratch / f"runs-{attempt}-{parallel}"
                argv = [*_backtest_argv("policy", db, runs_dir, months), "--parallel", str(parallel)]
                walls[parallel].append(backtest_child(argv, scratch, env).wall_s)
                for month in months:  # every month completed (`_step_times` checks run.json)
                    _step_times(_run_dir(runs_dir, month))
                shutil.rmtree(runs_dir)
    scan = bare_scan(db, months, repeat)
    figures: dict = {"months": list(months), "bare_scan": scan}
    for parallel, samples in walls.items():
        wall = summarize(samples, "s")
        figures[f"parallel_{parallel}"] = {"wall_s": wall, "ratio_to_bare_scan": ratio(wall, scan["seconds"]["median"])}
    figures["speedup"] = walls_ratio(walls[1], walls[2])
    return figures


def walls_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> dict:
    """Pairwise ratios of interleaved samples (each pair ran back to back, under the same load)."""
    return summarize([a / b for a, b in zip(numerators, denominators, strict=True)], "ratio")


def fixed_cost(db: Path, *, repeat: int, numba_cache: Path, work_dir: Path) -> dict:
    """What every backtest pays whatever its size: `quantlab backtest policy` of a tiny month (its
    compute is a few milliseconds) with the warm server running, split into the interpreter's
    start, handing the command to the server (`quantlab --version`, whole), and the rest — opening
    the instance, creating the run, Dagster's run, step and event handling. Paid once, not per
    run: starting the warm server (the imports of CLI, Dagster and definitions, of which `imports_s`
    measures the first three alone in a fresh process, and loading the kernels), and creating a
    new instance."""
    imports = (
        "import time; t = time.perf_counter(); "
        "import quantlab_pipeline.cli, quantlab_pipeline.orchestration.month_runs, quantlab_pipeline.definitions; "
        "print(time.perf_counter() - t)"
    )
    names = ("interpreter_s", "handoff_s", "backtest_s", "server_start_s", "imports_s", "new_instance_s")
    samples: dict[str, list[float]] = {name: [] for name in names}
    version = [str(QUANTLAB), "--version"]
    for attempt in range(repeat):
        started = time.perf_counter()
        with dagster_home(work_dir, numba_cache, start_server=False) as (scratch, env):
            samples["new_instance_s"].append(time.perf_counter() - started)
            samples["interpreter_s"].append(backtest_child([sys.executable, "-c", "pass"], scratch, env).wall_s)
            child = backtest_child([sys.executable, "-c", imports], scratch, env)
            samples["imports_s"].append(float(child.stdout.strip().splitlines()[-1]))
            first = backtest_child(version, scratch, env).wall_s  # starts the server
            samples["handoff_s"].append(backtest_child(version, scratch, env).wall_s)
            samples["server_start_s"].append(first - samples["handoff_s"][-1])
            runs_dir = scratch / f"runs-{attempt}"
            samples["backtest_s"].append(backtest_child(_backtest_argv("policy", db, runs_dir), scratch, env).wall_s)
    out = {name: summarize(values, "s") for name, values in samples.items()}
    rest = [b - h for b, h in zip(samples["backtest_s"], samples["handoff_s"])]
    out["run_handling_s"] = summarize(rest, "s")
    return out


def cold_start(db: Path, *, repeat: int, numba_cache: Path, work_dir: Path) -> dict:
    """Import + JIT of a backtest's kernels in a fresh process: with an empty numba cache (every
    kernel compiled) and with the cache warm (compiled code loaded from disk)."""
    argv = [sys.executable, str(BENCH_DIR / "coldstart_child.py"), str(db), MONTH, INTERVAL, HORIZON]

    def one(cache: Path) -> dict:
        env = child_env(NUMBA_CACHE_DIR=str(cache), QUANTLAB_CACHE_DIR=str(numba_cache.parent / "quantlab"))
        child = run_child(argv, env=env, cwd=REPO, log_dir=work_dir / "coldstart")
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
