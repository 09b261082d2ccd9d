"""Asset checks: what must hold of every month × run partition, shown on each asset's Checks tab.

Blocking checks stop the downstream steps of the same run: trades are never simulated on paths
that looked ahead, and a summary never describes trades that disagree with their paths. Each
check reads the partition's run directory (and, for look-ahead, the candles the run already
holds in `candle_store`), never recomputes the artifact it checks.
"""

import warnings
from typing import Any

import numpy as np
import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    Config,
    MetadataValue,
    PreviewWarning,
    asset_check,
)
from dagster_duckdb import DuckDBResource
from pydantic import Field

from quantlab_pipeline.core.summary import summarize_trades
from quantlab_pipeline.orchestration.assets import alerts, frontier, paths, summary, trades
from quantlab_pipeline.orchestration.catalog import backtest_catalog
from quantlab_pipeline.orchestration.partitions import month_run_partitions, split_month_run_key
from quantlab_pipeline.orchestration.resources import CandleStoreResource, RunStoreResource
from quantlab_pipeline.storage.atomic import sha256_file
from quantlab_pipeline.storage.catalog import ARTIFACT_TYPES, query_artifacts
from quantlab_pipeline.storage.layout import ARTIFACT_INPUTS
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import read_spec

_EXAMPLES = 5  # offending rows shown in a failed check's metadata
# Partitioned checks are "preview" in Dagster 1.13; their use here is the documented one.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=PreviewWarning)


def _run_dir(context: AssetCheckExecutionContext, run_store: RunStoreResource) -> RunDirectory:
    month, run_id = split_month_run_key(context.partition_key)
    return run_store.directory(month, run_id)


def _examples(values: list[Any]) -> MetadataValue:
    return MetadataValue.json([str(v) for v in values[:_EXAMPLES]])


def _manifest_consistency(artifact: str) -> AssetChecksDefinition:
    asset_def = {"alerts": alerts, "paths": paths, "trades": trades, "summary": summary, "frontier": frontier}[artifact]

    @asset_check(
        asset=asset_def,
        name="manifest_consistent",
        blocking=True,
        partitions_def=month_run_partitions,
        description=f"run.json records {artifact} at its size and sha256, computed from the current version of "
        "each upstream artifact (what completion of the run relies on).",
    )
    def check(context: AssetCheckExecutionContext, run_store: RunStoreResource) -> AssetCheckResult:
        rd = _run_dir(context, run_store)
        manifest = rd.manifest() or {}
        record = manifest.get("artifacts", {}).get(artifact)
        problems = []
        if record is None:
            problems.append(f"{artifact} is not recorded in run.json")
        else:
            path = rd.path / record["path"]
            if not path.is_file():
                problems.append(f"{record['path']} is missing")
            elif sha256_file(path) != record["sha256"]:
                problems.append(f"{record['path']} does not match its recorded sha256")
            for upstream in ARTIFACT_INPUTS[artifact]:
                current = manifest["artifacts"].get(upstream, {}).get("sha256")
                if record.get("inputs", {}).get(upstream) != current:
                    problems.append(f"computed from an older {upstream}")
        return AssetCheckResult(
            passed=not problems,
            metadata={"problems": MetadataValue.json(problems), "run_status": manifest.get("status", "missing")},
        )

    return check


@asset_check(
    asset=alerts,
    blocking=True,
    partitions_def=month_run_partitions,
    description="Every call_id of the partition's alerts appears once (repeats are skipped at input).",
)
def call_id_unique(context: AssetCheckExecutionContext, run_store: RunStoreResource) -> AssetCheckResult:
    frame = _run_dir(context, run_store).read_artifact("alerts").frame
    repeated = frame.filter(pl.col("call_id").is_duplicated()).get_column("call_id").unique().sort().to_list()
    return AssetCheckResult(
        passed=not repeated,
        metadata={"alerts": frame.height, "repeated_call_ids": len(repeated), "examples": _examples(repeated)},
    )


@asset_check(
    asset=paths,
    blocking=True,
    partitions_def=month_run_partitions,
    description="No look-ahead: every entry is at or after its alert, within the entry delay, and p0 is the open "
    "of the entry candle.",
)
def no_look_ahead(
    context: AssetCheckExecutionContext, run_store: RunStoreResource, candle_store: CandleStoreResource
) -> AssetCheckResult:
    rd = _run_dir(context, run_store)
    spec = read_spec(run_store.root, rd.run_id)
    frame = rd.read_artifact("paths").frame
    limit = pl.col("alert_ts_ms") + spec.truth.max_entry_delay_candles * spec.interval_ms
    early = frame.filter((pl.col("entry_ts_ms") < pl.col("alert_ts_ms")) | (pl.col("entry_ts_ms") >= limit))
    wrong_p0: list[str] = []
    for part, read in candle_store.parts(spec, rd.read_artifact("alerts").frame):
        rows = frame.filter(pl.col("call_id").is_in(part.get_column("call_id").implode()))
        entry = rows.get_column("entry_ts_ms").to_numpy().astype(np.int64)
        start, stop = read.candles.window_bounds(rows.get_column("mint"), entry, entry + 1)
        found = stop > start
        opens = np.full(rows.height, np.nan)
        opens[found] = read.candles.open[start[found]]
        bad = ~found | (opens != rows.get_column("p0").to_numpy())
        wrong_p0 += rows.filter(pl.Series(bad)).get_column("call_id").to_list()
    offenders = sorted({*early.get_column("call_id").to_list(), *wrong_p0})
    return AssetCheckResult(
        passed=not offenders,
        metadata={
            "paths": frame.height,
            "entries_outside_the_entry_window": early.height,
            "p0_not_the_entry_open": len(wrong_p0),
            "examples": _examples(offenders),
        },
    )


class ExclusionConfig(Config):
    max_excluded_share: float = Field(
        default=0.25, description="Warn when more than this share of the partition's alert rows is excluded."
    )


@asset_check(
    asset=paths,
    partitions_def=month_run_partitions,
    description="The share of the partition's alert rows without a path (skipped or excluded) stays under a "
    "threshold; a warning, since bad data is recorded rather than fatal.",
)
def excluded_share(
    context: AssetCheckExecutionContext, config: ExclusionConfig, run_store: RunStoreResource
) -> AssetCheckResult:
    rd = _run_dir(context, run_store)
    loaded = rd.read_artifact("alerts")
    source_rows = int(loaded.metadata.get("source_rows", loaded.frame.height))
    processed = rd.read_artifact("paths").frame.height
    share = (source_rows - processed) / source_rows if source_rows else 0.0
    return AssetCheckResult(
        passed=share <= config.max_excluded_share,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "alert_rows": source_rows,
            "calls_processed": processed,
            "excluded_share_pct": round(100 * share, 1),
            "threshold_pct": round(100 * config.max_excluded_share, 1),
        },
    )


@asset_check(
    asset=trades,
    blocking=True,
    partitions_def=month_run_partitions,
    description="One trade per path: the trades' call ids are exactly the paths' (every path has its entry candle).",
)
def trades_match_paths(context: AssetCheckExecutionContext, run_store: RunStoreResource) -> AssetCheckResult:
    rd = _run_dir(context, run_store)
    path_ids = set(rd.read_artifact("paths").frame.get_column("call_id").to_list())
    trade_ids = rd.read_artifact("trades").frame.get_column("call_id").to_list()
    missing, extra = sorted(path_ids - set(trade_ids)), sorted(set(trade_ids) - path_ids)
    repeated = len(trade_ids) - len(set(trade_ids))
    return AssetCheckResult(
        passed=not (missing or extra or repeated),
        metadata={
            "paths": len(path_ids),
            "trades": len(trade_ids),
            "paths_without_trade": len(missing),
            "trades_without_path": len(extra),
            "repeated_trades": repeated,
            "examples": _examples(missing + extra),
        },
    )


_SUMMARY_TOLERANCE = 1e-9


@asset_check(
    asset=summary,
    partitions_def=month_run_partitions,
    description="The summary row equals the metrics recomputed from the partition's trades.",
)
def summary_matches_trades(context: AssetCheckExecutionContext, run_store: RunStoreResource) -> AssetCheckResult:
    rd = _run_dir(context, run_store)
    stored = rd.read_artifact("summary").frame.row(0, named=True)
    expected = summarize_trades(
        rd.read_artifact("trades").frame,
        run_id=stored["run_id"],
        month=stored["month"],
        policy_id=stored["policy_id"],
        calls_processed=stored["calls_processed"],
        calls_excluded=stored["calls_excluded"],
    ).row(0, named=True)
    differ = [
        name
        for name, value in expected.items()
        if not (
            value == stored[name]
            or (
                isinstance(value, float)
                and isinstance(stored[name], float)
                and abs(value - stored[name]) <= _SUMMARY_TOLERANCE * max(1.0, abs(value))
            )
        )
    ]
    return AssetCheckResult(passed=not differ, metadata={"columns_that_differ": MetadataValue.json(differ)})


@asset_check(
    asset=backtest_catalog,
    description="Every artifact the catalog lists exists at its recorded size and sha256.",
)
def catalog_artifacts_verified(catalog_duckdb: DuckDBResource) -> AssetCheckResult:
    rows = []
    for artifact_type in ARTIFACT_TYPES:
        rows += query_artifacts(catalog_duckdb.database, artifact_type, limit=None)
    bad = []
    for row in rows:
        try:
            ok = sha256_file(row["path"]) == row["sha256"]
        except OSError:
            ok = False
        if not ok:
            bad.append(row["path"])
    return AssetCheckResult(
        passed=not bad,
        metadata={"artifacts": len(rows), "not_matching": len(bad), "examples": _examples(bad)},
    )


BACKTEST_CHECKS = [
    *(_manifest_consistency(a) for a in ("alerts", "paths", "trades", "summary", "frontier")),
    call_id_unique,
    no_look_ahead,
    excluded_share,
    trades_match_paths,
    summary_matches_trades,
]
CATALOG_CHECKS = [catalog_artifacts_verified]
