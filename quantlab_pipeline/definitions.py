"""The one `Definitions` of the project, for `dagster dev`, `dg dev`, `dagster asset materialize` and run
workers: built from the environment's settings (`QUANTLAB_RUNS_DIR`, `QUANTLAB_CATALOG`,
`QUANTLAB_CATALOG_SENSOR_INTERVAL`), plus the UI's launchpad job (`orchestration.launchpad`)."""

from dagster import Definitions

from quantlab_pipeline.orchestration import launchpad  # a module: one Definitions at this module's scope
from quantlab_pipeline.orchestration.defs import build_defs
from quantlab_pipeline.orchestration.settings import Settings

defs = Definitions.merge(build_defs(Settings.from_env()), launchpad.LAUNCHPAD)
