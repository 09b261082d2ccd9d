"""`python -m quantlab_pipeline.warm.prebuild` (run by `make install`): compile the numba kernels
into their on-disk cache before the first backtest (docs/performance.md, "First backtest").

A backtest of each run type (path-only with features, policy with its portfolio, optimization) on
a tiny generated month, in this process and in a scratch Dagster home, candle cache and runs
directory: the kernels compile with exactly the argument types a real backtest gives them, so a
user's first backtest loads them instead of compiling. Their signatures are then recorded for the
warm server (`core.nb.load_backtest_kernels`).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PREBUILD_ALERTS = 50  # enough alerts that every kernel of each run type runs
SEED = 1
MONTH = "2024-01"


def prebuild() -> int:
    """Run the three backtests, then record the kernels' signatures; returns how many."""
    from quantlab_pipeline.warm.kernels import record_kernel_signatures

    scratch = Path(tempfile.mkdtemp(prefix="quantlab-prebuild-"))
    saved = {name: os.environ.get(name) for name in ("DAGSTER_HOME", "QUANTLAB_CACHE_DIR", "QUANTLAB_WARM_SERVER")}
    try:
        (scratch / "dagster_home").mkdir()
        (scratch / "dagster_home" / "dagster.yaml").write_text("")  # Dagster's defaults, said without a warning
        os.environ.update(
            DAGSTER_HOME=str(scratch / "dagster_home"),
            QUANTLAB_CACHE_DIR=str(scratch / "candle_cache"),
            QUANTLAB_WARM_SERVER="off",
        )
        from quantlab_pipeline.cli import cli

        db = str(scratch / "alerts.duckdb")
        cli.main(
            [
                "sample-data",
                "--out",
                db,
                "--months",
                MONTH,
                "--alerts-per-month",
                str(PREBUILD_ALERTS),
                "--seed",
                str(SEED),
            ],
            standalone_mode=False,
        )
        span = [
            "--calls-from-duckdb",
            db,
            "--from",
            f"{MONTH}-01",
            "--to",
            f"{MONTH}-31",
            "--runs-dir",
            str(scratch / "runs"),
        ]
        policy = ["--policy-id", "prebuild", "--policy", '{"kind":"fixed_stop","stop_loss_bps":500}']
        for command in (["path-only"], ["policy", *policy], ["optimize"]):
            cli.main(["backtest", *command, *span], standalone_mode=False)
        return record_kernel_signatures()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    """One line before and one after; the backtests' own output only if the prebuild fails."""
    started = time.perf_counter()
    print("prebuilding the numba kernels (a backtest of each run type on a tiny sample)…", file=sys.stderr)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            count = prebuild()
    except BaseException:
        sys.stderr.write(log.getvalue()[-4000:])
        raise
    print(f"{count} kernel builds cached in {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
