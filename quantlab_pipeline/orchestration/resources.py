"""Resources shared by assets, IO managers and sensors."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from dagster import ConfigurableResource
from pydantic import PrivateAttr

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.inputs import CandlesInput, read_candles
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.storage.layout import default_runs_dir
from quantlab_pipeline.storage.run_dir import RunDirectory

class RunStoreResource(ConfigurableResource):
    """Where run directories and run specs live.

    Unset `runs_dir` means env `QUANTLAB_RUNS_DIR` (default `runs`), read at execution time so the
    CLI's `--runs-dir` reaches runs launched from an already-loaded `Definitions`.
    """

    runs_dir: str | None = None

    @property
    def root(self) -> Path:
        return Path(self.runs_dir or default_runs_dir())

    def directory(self, month: str, run_id: str) -> RunDirectory:
        return RunDirectory(self.root, month, run_id)


class CandleStoreResource(ConfigurableResource):
    """Reads the candles a partition needs, once per Dagster run.

    `paths`, `trades` and `frontier` of one partition need the same candles (the alerts' mints over
    the alerts' time span plus the horizon). With the in-process executor all steps of a run share
    this resource, so the last read is kept and reused; it is dropped when the run ends.
    """

    _cache_key: tuple | None = PrivateAttr(default=None)
    _cache_value: CandlesInput | None = PrivateAttr(default=None)

    def for_alerts(self, spec: RunSpec, alerts: pl.DataFrame) -> CandlesInput:
        if alerts.height == 0:
            return CandlesInput(candles=Candles.empty(), errors=[])
        mints = tuple(sorted(alerts.get_column("mint").unique().to_list()))
        ts = alerts.get_column("alert_ts_ms")
        start_ms, end_ms = int(ts.min()), int(ts.max()) + spec.horizon_ms
        source = spec.source.candles_source
        key = (source, spec.interval, start_ms, end_ms, hash(mints), len(mints))
        if key != self._cache_key:
            self._cache_key, self._cache_value = None, None  # free the previous month first
            self._cache_value = read_candles(
                source, mints=mints, interval=spec.interval, start_ms=start_ms, end_ms=end_ms
            )
            self._cache_key = key
        return self._cache_value

    def teardown_after_execution(self, context) -> None:
        self._cache_key, self._cache_value = None, None
