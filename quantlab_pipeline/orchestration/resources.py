"""Resources shared by assets, IO managers and sensors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from quantlab_pipeline.core.candles import Candles, plan_chunks
from quantlab_pipeline.core.features import LOOKBACK_MS
from quantlab_pipeline.core.inputs import CandlesInput
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.orchestration.partitions import split_month_run_key
from quantlab_pipeline.orchestration.run_launcher import record_run_worker
from quantlab_pipeline.sources.candles import read_candles
from quantlab_pipeline.storage.layout import required_artifacts
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import read_spec


class RunStoreResource(ConfigurableResource):
    """Where run directories and run specs live.

    `build_defs` binds it with `configure_at_launch`, so a run's config (the CLI's `--runs-dir`,
    the launchpad) reaches the assets and the IO managers that hold it alike.
    """

    runs_dir: str = Field(
        description="Root of the run directories (relative to the code location's working directory)."
    )

    _specs: dict[str, RunSpec] = PrivateAttr(default_factory=dict)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Every backtest, spec and catalog run sets this resource up in its worker before its
        first step: the one place the worker names itself on its run, for run monitoring
        (`orchestration.run_launcher`)."""
        record_run_worker(context.instance, context.dagster_run)

    @property
    def root(self) -> Path:
        return Path(self.runs_dir)

    def directory(self, month: str, run_id: str) -> RunDirectory:
        return RunDirectory(self.root, month, run_id)

    def spec(self, partition_key: str) -> RunSpec:
        """The spec of the run a run-month key belongs to (specs are immutable: read once)."""
        _, run_id = split_month_run_key(partition_key)
        if run_id not in self._specs:
            self._specs[run_id] = read_spec(self.root, run_id)
        return self._specs[run_id]


# ≈1.9 GB of candle columns (ts, OHLC, volume): the reference month, 20,000 alerts × (5 d + the
# features' 25 h look-back) of 5-minute candles as `plan_chunks` estimates it, in one part.
DEFAULT_CHUNK_CANDLES = 40_000_000


def _alert_span(alerts: pl.DataFrame) -> tuple[int, int]:
    """First and last `alert_ts_ms` of a non-empty alerts frame."""
    first, last = alerts.select(
        pl.col("alert_ts_ms").min().alias("first"), pl.col("alert_ts_ms").max().alias("last")
    ).row(0)
    return int(first), int(last)


def lookback_ms(spec: RunSpec) -> int:
    """How far before its first alert a partition's candles are read: the features' look-back
    when the run writes features (docs/research.md "Features"), else nothing."""
    return LOOKBACK_MS if "features" in required_artifacts(spec.run_type, spec.to_dict()) else 0


class CandleStoreResource(ConfigurableResource):
    """Reads the candles a partition needs: once per Dagster run, or in parts for large months.

    `paths`, `features`, `trades` and `frontier` of one partition need the same candles (the
    alerts' mints over the alerts' time span plus the horizon, and the features' look-back before
    it: one read serves them all). A month whose estimated candles fit in
    `max_chunk_candles` is read whole, once: with the in-process executor all steps of a run share
    this resource, so the read is kept and reused, and dropped when the run ends. A larger month
    is streamed in parts of whole mints (`core.candles.plan_chunks`), so peak memory is bounded
    by the part, not the month; each step then reads the parts it needs itself.
    """

    max_chunk_candles: int = DEFAULT_CHUNK_CANDLES

    _cache_key: tuple | None = PrivateAttr(default=None)
    _cache_value: CandlesInput | None = PrivateAttr(default=None)

    def plan(self, spec: RunSpec, alerts: pl.DataFrame) -> list[pl.DataFrame]:
        """The alerts of each part the partition is read in (one part: the month is read whole)."""
        return plan_chunks(
            alerts,
            candles_per_alert=(spec.horizon_ms + lookback_ms(spec)) // spec.interval_ms
            + spec.truth.max_entry_delay_candles,
            max_candles=self.max_chunk_candles,
        )

    def parts(self, spec: RunSpec, alerts: pl.DataFrame) -> Iterator[tuple[pl.DataFrame, CandlesInput]]:
        """`(alerts of the part, their candles)` for each part of the partition."""
        plan = self.plan(spec, alerts)
        if len(plan) == 1:
            yield plan[0], self._read_shared(spec, plan[0])
            return
        self._forget()
        for part in plan:
            yield part, self._read(spec, part)

    def segments(self, spec: RunSpec, alerts: pl.DataFrame, paths: pl.DataFrame) -> PathSegments:
        """The partition's paths with their candles, part by part (re-iterable, for the sweep)."""
        return PathSegments(self, spec, alerts, paths)

    def _read(self, spec: RunSpec, alerts: pl.DataFrame) -> CandlesInput:
        if alerts.height == 0:
            return CandlesInput(candles=Candles.empty(), errors=[])
        first, last = _alert_span(alerts)
        return read_candles(
            spec.source.candles_source,
            mints=alerts.get_column("mint").unique().to_list(),
            interval=spec.interval,
            start_ms=first - lookback_ms(spec),
            end_ms=last + spec.horizon_ms,
        )

    def _read_shared(self, spec: RunSpec, alerts: pl.DataFrame) -> CandlesInput:
        if alerts.height == 0:  # a month without calls: no candles, nothing to keep (docs/inputs.md)
            return self._read(spec, alerts)
        mints = tuple(sorted(alerts.get_column("mint").unique().to_list()))
        key = (
            spec.source.candles_source,
            spec.interval,
            spec.horizon_ms,
            lookback_ms(spec),
            _alert_span(alerts),
            hash(mints),
            len(mints),
        )
        if key != self._cache_key or self._cache_value is None:
            self._forget()  # free the previous month before reading the next
            self._cache_value = self._read(spec, alerts)
            self._cache_key = key
        return self._cache_value

    def _forget(self) -> None:
        self._cache_key, self._cache_value = None, None

    def teardown_after_execution(self, context) -> None:
        self._forget()


class PathSegments:
    """`(paths of a part, its candles)` pairs; iterating again reads the parts again."""

    def __init__(self, store: CandleStoreResource, spec: RunSpec, alerts: pl.DataFrame, paths: pl.DataFrame):
        self._store, self._spec, self._alerts, self._paths = store, spec, alerts, paths

    def __iter__(self) -> Iterator[tuple[pl.DataFrame, Candles]]:
        for part, read in self._store.parts(self._spec, self._alerts):
            candles = read.candles
            del read
            yield self._paths.filter(pl.col("call_id").is_in(part.get_column("call_id").implode())), candles
            del candles  # the consumer's reference is the only one left while the next part is read
