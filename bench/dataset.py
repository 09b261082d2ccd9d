"""The benchmark month: generated once per size, seed and generator version into `bench/.cache/`,
then loaded the way the pipeline loads it (same readers, same pushed-down query), so kernels see
the pipeline's arrays.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from measure import summarize, timed

from quantlab_pipeline.core import sample_data
from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.durations import interval_ms, parse_duration_ms
from quantlab_pipeline.core.features import LOOKBACK_MS
from quantlab_pipeline.core.spec import TruthParams, date_to_ms, month_bounds
from quantlab_pipeline.sources import sample_db
from quantlab_pipeline.sources.alerts import read_alerts
from quantlab_pipeline.sources.candles import read_candles

REFERENCE_ALERTS = 20_000  # docs/performance.md "Performance": 20,000 alerts × 1,440 five-minute candles a month
MONTH = "2024-01"
INTERVAL = "5m"
HORIZON = "5d"


def alerts_for_scale(scale: float) -> int:
    return max(10, round(REFERENCE_ALERTS * scale))


def _generator_version() -> str:
    """A short hash of the generator's and the writer's source: a changed generator never reuses
    stale data."""
    digest = hashlib.sha256()
    for module in (sample_data, sample_db):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:10]


def _stem(alerts_per_month: int, seed: int, months: tuple[str, ...]) -> str:
    span = f"month-{months[0]}" if len(months) == 1 else f"months-{months[0]}..{months[-1]}"
    return f"{span}-{INTERVAL}-a{alerts_per_month}-s{seed}"


def database_path(cache_dir: Path, alerts_per_month: int, seed: int, months: tuple[str, ...]) -> Path:
    """Where the sample database of `months` at this size and seed is cached, by generator version."""
    return Path(cache_dir) / f"{_stem(alerts_per_month, seed, months)}-g{_generator_version()}.duckdb"


def remove_stale(cache_dir: Path, alerts_per_month: int, seed: int, months: tuple[str, ...]) -> None:
    """Delete the cached databases (and their records) of other generator versions of this size and seed."""
    for stale in Path(cache_dir).glob(f"{_stem(alerts_per_month, seed, months)}-g*.duckdb*"):
        stale.unlink()


def ensure_database(
    cache_dir: Path, alerts_per_month: int, seed: int, months: tuple[str, ...] = (MONTH,)
) -> tuple[Path, float | None]:
    """The cached sample database of `months` (the reference month by default) for this size, seed
    and generator version; generation seconds, or None when it was cached. Entries of older
    generator versions of this size and seed are deleted (the reference month is over 1 GB).

    The generator writes atomically (temp file + rename), so an interrupted run never leaves a
    truncated cache entry behind.
    """
    path = database_path(cache_dir, alerts_per_month, seed, months)
    if path.is_file():
        return path, None
    remove_stale(cache_dir, alerts_per_month, seed, months)
    started = time.perf_counter()
    sample_db.generate_sample_data(
        path, months=list(months), alerts_per_month=alerts_per_month, seed=seed, interval=INTERVAL
    )
    return path, time.perf_counter() - started


@dataclass(frozen=True)
class MonthRead:
    """The candle read a backtest makes for one month: its alerts' mints, from the features'
    look-back before the first alert to the horizon after the last (`CandleStoreResource._read`)."""

    alerts: pl.DataFrame
    mints: tuple[str, ...]
    start_ms: int
    end_ms: int


def month_read(db: Path, month: str = MONTH) -> MonthRead:
    first, last = month_bounds(month)
    alerts = read_alerts(str(db), start_ms=date_to_ms(first), end_ms=date_to_ms(last) + 86_400_000).frame
    mints = tuple(sorted(alerts.get_column("mint").unique().to_list()))
    ts = alerts.get_column("alert_ts_ms")
    return MonthRead(alerts, mints, int(ts.min()) - LOOKBACK_MS, int(ts.max()) + parse_duration_ms(HORIZON))


@dataclass(frozen=True)
class MonthInputs:
    """The month as the pipeline's `paths` step sees it: alerts, their candles, and the query bounds."""

    db: Path
    alerts: pl.DataFrame
    candles: Candles
    mints: tuple[str, ...]  # the alerts' distinct mints, as `CandleStoreResource` asks for them
    start_ms: int
    end_ms: int

    @property
    def interval_ms(self) -> int:
        return interval_ms(INTERVAL)

    @property
    def horizon_ms(self) -> int:
        return parse_duration_ms(HORIZON)

    @property
    def truth_params(self) -> TruthParams:
        return TruthParams()


def load_month(db: Path) -> MonthInputs:
    """Read the month with the pipeline's readers and the bounds of its candle read."""
    read = month_read(db)
    candles = read_candles(
        str(db), mints=read.mints, interval=INTERVAL, start_ms=read.start_ms, end_ms=read.end_ms
    ).candles
    return MonthInputs(db, read.alerts, candles, read.mints, read.start_ms, read.end_ms)


def read_candles_seconds(month: MonthInputs, repeat: int) -> dict:
    """The pipeline's candle reader on the month (query, counting sort, validation), `repeat` times."""

    def read() -> None:
        read_candles(str(month.db), mints=month.mints, interval=INTERVAL, start_ms=month.start_ms, end_ms=month.end_ms)

    return {"seconds": summarize(timed(read, repeat), "s")}
