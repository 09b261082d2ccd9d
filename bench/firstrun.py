"""The first backtest of a fresh install (docs/performance.md, "First backtest"): `quantlab
backtest policy` on the reference month with empty numba and candle caches, a new Dagster home
and no warm server, as a fresh clone's first command meets them — once with no prebuilt kernels
(every kernel compiles during the run), once after `make install`'s prebuild
(`quantlab_pipeline.warm.prebuild`, timed apart: it is paid at install). Pairs run back to back,
so the ratio holds under a shared machine's load.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from endtoend import _backtest_argv, backtest_child, dagster_home
from measure import child_env, run_child, summarize


def first_backtest(db: Path, *, repeat: int, work_dir: Path) -> dict:
    """Wall seconds of the first `quantlab backtest policy` with a cold and a prebuilt numba
    cache (candle cache empty in both), their ratio, and the prebuild's own time."""
    walls: dict[str, list[float]] = {"cold": [], "prebuilt": []}
    prebuild_s: list[float] = []
    for _ in range(repeat):
        for state in walls:
            caches = Path(tempfile.mkdtemp(prefix="first-", dir=work_dir))
            try:
                numba_cache = caches / "numba"
                if state == "prebuilt":
                    env = child_env(NUMBA_CACHE_DIR=str(numba_cache), QUANTLAB_CACHE_DIR=str(caches / "prebuild"))
                    argv = [sys.executable, "-m", "quantlab_pipeline.warm.prebuild"]
                    child = run_child(argv, env=env, cwd=caches, log_dir=caches / "log")
                    if child.returncode != 0:
                        raise RuntimeError(f"prebuild failed:\n{child.stderr.strip()[-2000:]}")
                    prebuild_s.append(child.wall_s)
                with dagster_home(work_dir, numba_cache, start_server=False) as (scratch, env):
                    env["QUANTLAB_CACHE_DIR"] = str(caches / "candles")  # empty: the month is read from DuckDB
                    argv = _backtest_argv("policy", db, scratch / "runs")
                    walls[state].append(backtest_child(argv, scratch, env).wall_s)
            finally:
                shutil.rmtree(caches, ignore_errors=True)
    return {
        "cold_s": summarize(walls["cold"], "s"),
        "prebuilt_s": summarize(walls["prebuilt"], "s"),
        "ratio": summarize([c / p for c, p in zip(walls["cold"], walls["prebuilt"], strict=True)], "ratio"),
        "prebuild_s": summarize(prebuild_s, "s"),
    }
