"""The one `Definitions` of the project, for `dagster dev`, `dagster asset materialize` and run
workers: built from the environment's settings (`QUANTLAB_RUNS_DIR`, `QUANTLAB_CATALOG`,
`QUANTLAB_CATALOG_SENSOR_INTERVAL`)."""

from quantlab_pipeline.orchestration.defs import build_defs
from quantlab_pipeline.orchestration.settings import Settings

defs = build_defs(Settings.from_env())
