"""`quantlab`: the command line. Commands parse flags and call the storage layer or Dagster;
they hold no backtest logic of their own."""

from __future__ import annotations

import gc
import os
import sys
from typing import NoReturn

# Before NumPy is imported: a backtest fills ~1 GB of fresh candle arrays once, and NumPy's
# madvise(MADV_HUGEPAGE) on them makes the kernel compact memory at first touch, which measured
# 1.5–2 s slower per reference month than plain pages. Set NUMPY_MADVISE_HUGEPAGE=1 to keep them.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

import click

# Importing Dagster creates a few hundred thousand long-lived objects; with the default thresholds
# the collector rescans them ~1,000 times per backtest (0.4–0.6 s of CPU). Collect young objects
# less often: the candle arrays are not tracked by the collector, so memory is unaffected.
gc.set_threshold(10_000, 20, 20)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="quantlab_pipeline", prog_name="quantlab")
def cli() -> None:
    """Backtest calls against OHLCV candles, orchestrated by Dagster."""


def main() -> NoReturn:
    """The `quantlab` console script: run the command, then leave without interpreter teardown.

    By the time a command returns, everything it wrote is durable (files fsynced and renamed,
    databases committed and closed). Tearing down the interpreter would then only free a month of
    candle arrays and unload DuckDB, LLVM and Dagster, which costs 1–2 s per backtest.
    """
    try:
        cli.main(prog_name="quantlab")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # reader went away (`| head`), or stream closed
            code = code or 1
    os._exit(code)


@cli.group("backtest")
def backtest_group() -> None:
    """Run backtests and manage the run catalog."""


@cli.group("runs")
def runs_group() -> None:
    """Create runs for `dagster asset materialize`; see where a run stands; finish it; delete it."""


@cli.group("server")
def server_group() -> None:
    """The warm server commands are forked from: see it, stop it."""


def _register() -> None:
    from quantlab_pipeline.cli import backtest, catalog, report, retention, runs, sample_data, server

    cli.add_command(sample_data.sample_data)
    cli.add_command(report.report)
    for command in [*backtest.BACKTEST_COMMANDS, *catalog.COMMANDS]:
        backtest_group.add_command(command)
    for command in [backtest.runs_create, *runs.COMMANDS, *retention.COMMANDS]:
        runs_group.add_command(command)
    for command in server.COMMANDS:
        server_group.add_command(command)


_register()
