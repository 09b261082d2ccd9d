"""`quantlab`: the command line. Commands parse flags and call the storage layer or Dagster;
they hold no backtest logic of their own."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="quantlab_pipeline", prog_name="quantlab")
def main() -> None:
    """Backtest calls against OHLCV candles, orchestrated by Dagster."""


@main.group("backtest")
def backtest_group() -> None:
    """Run backtests and manage the run catalog."""


@main.group("runs")
def runs_group() -> None:
    """Create runs for `dagster asset materialize`."""


def _register() -> None:
    from quantlab_pipeline.cli import backtest, catalog, sample_data

    main.add_command(sample_data.sample_data)
    for command in [*backtest.BACKTEST_COMMANDS, *catalog.COMMANDS]:
        backtest_group.add_command(command)
    runs_group.add_command(backtest.runs_create)


_register()
