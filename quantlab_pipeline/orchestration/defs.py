"""`build_defs`: the project's one `Definitions`, built explicitly from `Settings`.

`definitions.py` (what `dagster dev`, `dagster asset materialize` and run workers load) calls it
with the environment's settings (tests with their own). Resources are bound here once: the run
store is shared by the assets, both IO managers and the sensor, and is configurable at launch so
a run's config (the CLI's `--runs-dir`) can point it elsewhere. Resource config is text: the
settings' paths become strings here, and back to paths in the resources (`RunStoreResource.root`).
"""

from __future__ import annotations

from dagster import Definitions, in_process_executor
from dagster_duckdb import DuckDBResource

from quantlab_pipeline.orchestration.assets import BACKTEST_ASSETS
from quantlab_pipeline.orchestration.catalog import backtest_catalog, build_catalog_sync_sensor, catalog_sync_job
from quantlab_pipeline.orchestration.io_managers import RunDirectoryIOManager, RunSpecIOManager
from quantlab_pipeline.orchestration.jobs import BACKTEST_JOBS
from quantlab_pipeline.orchestration.optimization import OPTIMIZATION_ASSETS
from quantlab_pipeline.orchestration.portfolio import PORTFOLIO_ASSETS
from quantlab_pipeline.orchestration.research import RESEARCH_ASSETS
from quantlab_pipeline.orchestration.resources import CandleStoreResource, RunStoreResource
from quantlab_pipeline.orchestration.settings import Settings


def build_defs(settings: Settings) -> Definitions:
    run_store = RunStoreResource.configure_at_launch(runs_dir=str(settings.paths.runs_dir))
    return Definitions(
        assets=[*BACKTEST_ASSETS, *OPTIMIZATION_ASSETS, *RESEARCH_ASSETS, *PORTFOLIO_ASSETS, backtest_catalog],
        jobs=[*BACKTEST_JOBS, catalog_sync_job],
        sensors=[build_catalog_sync_sensor(settings.sensor_interval_s, settings.problems)],
        resources={
            "run_store": run_store,
            "candle_store": CandleStoreResource(),
            "catalog_duckdb": DuckDBResource(database=str(settings.paths.catalog_path)),
            "run_io_manager": RunDirectoryIOManager(run_store=run_store),
            "spec_io_manager": RunSpecIOManager(run_store=run_store),
        },
        # One process per run: steps share the candles read for a partition (CandleStoreResource)
        # and no step pays a process start-up.
        executor=in_process_executor,
    )
