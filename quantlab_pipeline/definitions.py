"""The one `Definitions` of the project: `dagster dev` and `dagster asset materialize` load this."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from quantlab_pipeline.orchestration.assets import BACKTEST_ASSETS
from quantlab_pipeline.orchestration.catalog import (
    backtest_catalog,
    catalog_resources,
    catalog_sync_job,
    catalog_sync_sensor,
)
from quantlab_pipeline.orchestration.io_managers import RunDirectoryIOManager, RunSpecIOManager
from quantlab_pipeline.orchestration.jobs import BACKTEST_JOBS
from quantlab_pipeline.orchestration.resources import CandleStoreResource, RunStoreResource

run_store = RunStoreResource()

defs = Definitions(
    assets=[*BACKTEST_ASSETS, backtest_catalog],
    jobs=[*BACKTEST_JOBS, catalog_sync_job],
    sensors=[catalog_sync_sensor],
    resources={
        **catalog_resources(),
        "run_store": run_store,
        "candle_store": CandleStoreResource(),
        "run_io_manager": RunDirectoryIOManager(run_store=run_store),
        "spec_io_manager": RunSpecIOManager(run_store=run_store),
    },
    # One process per run: steps share the candles read for a partition (CandleStoreResource)
    # and no step pays a process start-up.
    executor=in_process_executor,
)
