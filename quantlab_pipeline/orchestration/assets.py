"""Backtest assets: `run_spec` (run) and the month × run artifacts alerts → paths → trades → summary,
and paths → frontier. Each body calls `core` and returns an `ArtifactOutput`; the IO manager writes it.
"""

import warnings
from typing import Any

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    BetaWarning,
    Config,
    Failure,
    MultiToSingleDimensionPartitionMapping,
    asset,
)

from quantlab_pipeline.core.errors import QuantlabError, SpecError
from quantlab_pipeline.core.frontier import run_sweep
from quantlab_pipeline.core.policy import simulate_trades
from quantlab_pipeline.core.policy_spec import parse_policy
from quantlab_pipeline.core.run_creation import create_run_spec
from quantlab_pipeline.core.spec import RunSpec, validate_run_id
from quantlab_pipeline.core.summary import summarize_trades
from quantlab_pipeline.core.sweep_spec import parse_sweep
from quantlab_pipeline.core.truth import compute_paths
from quantlab_pipeline.orchestration.partitions import month_run_partitions, run_partitions
from quantlab_pipeline.orchestration.resources import CandleStoreResource, RunStoreResource
from quantlab_pipeline.orchestration.steps import ArtifactOutput, artifact_step
from quantlab_pipeline.sources.alerts import check_alerts_source, read_alerts
from quantlab_pipeline.sources.candles import check_candles_source
from quantlab_pipeline.storage.run_dir import LoadedArtifact
from quantlab_pipeline.storage.specs import read_spec

GROUP = "backtest"
with warnings.catch_warnings():  # the mapping is beta; its use here is the documented one
    warnings.simplefilter("ignore", BetaWarning)
    SPEC_INPUT = AssetIn(partition_mapping=MultiToSingleDimensionPartitionMapping(partition_dimension_name="run"))


def artifact_asset(**kwargs: Any):
    """The shape every month × run artifact shares: partitions, the spec input, the run directory."""
    return asset(
        partitions_def=month_run_partitions,
        ins={"run_spec": SPEC_INPUT},
        io_manager_key="run_io_manager",
        group_name=GROUP,
        **kwargs,
    )


class RunSpecConfig(Config):
    """Launchpad config for a new run (omit everything to re-materialize an existing spec).

    `policy` and `sweep` are JSON text; dates are `YYYY-MM-DD`, inclusive.
    """

    run_type: str | None = None
    interval: str | None = None
    window_from: str | None = None
    window_to: str | None = None
    horizon: str | None = None
    alerts: str | None = None
    alerts_table: str | None = None
    candles: str | None = None
    callers: list[str] | None = None
    chains: list[str] | None = None
    policy_id: str | None = None
    policy: str | None = None
    fee_bps: float | None = None
    slippage_bps: float | None = None
    sweep: str | None = None

    def spec_fields(self) -> dict[str, Any]:
        """The given fields as a (partial) run spec dict."""
        fields: dict[str, Any] = {}

        def put(path: tuple[str, ...], value: Any) -> None:
            if value is None:
                return
            node = fields
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value

        put(("run_type",), self.run_type)
        put(("interval",), self.interval)
        put(("window", "from"), self.window_from)
        put(("window", "to"), self.window_to)
        put(("horizon",), self.horizon)
        put(("source", "alerts"), self.alerts)
        put(("source", "alerts_table"), self.alerts_table)
        put(("source", "candles"), self.candles)
        put(("filters", "callers"), self.callers)
        put(("filters", "chains"), self.chains)
        put(("policy_id",), self.policy_id)
        put(("policy",), self.policy)
        put(("execution", "fee_bps"), self.fee_bps)
        put(("execution", "slippage_bps"), self.slippage_bps)
        put(("sweep",), self.sweep)
        return fields


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            _deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return merged


@asset(partitions_def=run_partitions, io_manager_key="spec_io_manager", group_name=GROUP, kinds={"json"})
def run_spec(context: AssetExecutionContext, config: RunSpecConfig, run_store: RunStoreResource) -> RunSpec:
    """One backtest configuration, immutable once written (`runs/_specs/<run_id>.json`)."""
    run_id = validate_run_id(context.partition_key)
    fields = config.spec_fields()
    try:
        existing = read_spec(run_store.root, run_id)
    except QuantlabError:
        existing = None
    try:
        if existing is None:
            fields.setdefault("run_type", "path-only")
            fields.setdefault("source", {}).setdefault("alerts", "data/alerts.duckdb")
            return create_run_spec(fields, run_id=run_id)
        if not fields:
            return existing
        return RunSpec.from_dict(_deep_merge(existing.to_dict(), fields))
    except SpecError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None


@artifact_asset(kinds={"duckdb", "parquet"})
def alerts(context: AssetExecutionContext, run_spec: RunSpec, run_store: RunStoreResource) -> ArtifactOutput:
    """The partition's valid, de-duplicated alerts (`inputs/alerts.parquet`): a provenance snapshot."""
    source = run_spec.source
    try:  # a bad source fails before the run directory exists
        check_alerts_source(source.alerts, source.alerts_table)
        check_candles_source(source.candles_source, interval=run_spec.interval)
    except QuantlabError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    with artifact_step(context, run_store, run_spec, "inputs") as step:
        start_ms, end_ms = run_spec.month_range_ms(step.month)
        first_month = run_spec.window.from_ is not None and step.month == run_spec.window.from_.strftime("%Y-%m")
        read = read_alerts(
            source.alerts,
            source.alerts_table,
            start_ms=start_ms,
            end_ms=end_ms,
            callers=run_spec.filters.callers,
            chains=run_spec.filters.chains,
            include_null_ts=first_month,
        )
        step.log(f"{read.frame.height} alerts kept of {read.source_rows} rows ({len(read.errors)} skipped)")
        return step.output(
            read.frame,
            errors=read.errors,
            headline={"source_rows": read.source_rows, "skipped_rows": len(read.errors)},
            parquet_metadata={"source_rows": str(read.source_rows)},
        )


@artifact_asset(kinds={"numba", "parquet"})
def paths(
    context: AssetExecutionContext,
    run_spec: RunSpec,
    alerts: LoadedArtifact,
    run_store: RunStoreResource,
    candle_store: CandleStoreResource,
) -> ArtifactOutput:
    """The truth layer (`truth/paths.parquet`): per alert, entry, multiples hit, peak, drawdowns."""
    with artifact_step(context, run_store, run_spec, "truth") as step:
        check_candles_source(run_spec.source.candles_source, interval=run_spec.interval)
        frames, errors, excluded = [], [], 0
        for part, candles in candle_store.parts(run_spec, alerts.frame):
            step.log(f"read {len(candles.candles)} candles for {len(candles.candles.mints)} mints")
            result = compute_paths(
                part,
                candles.candles,
                run_id=run_spec.run_id,
                interval=run_spec.interval,
                horizon_ms=run_spec.horizon_ms,
                params=run_spec.truth,
            )
            frames.append(result.paths)
            errors += candles.errors + result.errors
            excluded += len(result.errors)
            del candles  # free this part before the next one is read
        frame = pl.concat(frames).sort("alert_ts_ms", "call_id")
        step.log(
            f"{frame.height} paths, {excluded} alerts excluded; hit 2x {_pct(_mean(frame, 'hit_2x'))}, "
            f"median peak {_num(_median(frame, 'peak_multiple'))}x"
        )
        return step.output(
            frame,
            inputs=(alerts,),
            errors=errors,
            headline={
                "calls_processed": frame.height,
                "excluded": excluded,
                "hit_2x_rate": _mean(frame, "hit_2x"),
                "median_peak_multiple": _median(frame, "peak_multiple"),
            },
        )


@artifact_asset(kinds={"numba", "parquet"})
def trades(
    context: AssetExecutionContext,
    run_spec: RunSpec,
    alerts: LoadedArtifact,
    paths: LoadedArtifact,
    run_store: RunStoreResource,
    candle_store: CandleStoreResource,
) -> ArtifactOutput:
    """The policy layer (`policy/trades.parquet`): one simulated trade per entry."""
    with artifact_step(context, run_store, run_spec, "policy") as step:
        if run_spec.run_type != "policy" or run_spec.policy is None:
            raise SpecError(f"trades: run {run_spec.run_id} is a {run_spec.run_type} run; only policy runs have trades")
        policy = parse_policy(run_spec.policy)
        parts = []
        for segment, candles in candle_store.segments(run_spec, alerts.frame, paths.frame):
            parts.append(
                simulate_trades(
                    segment,
                    candles,
                    policy,
                    run_id=run_spec.run_id,
                    policy_id=run_spec.policy_id,
                    interval_ms=run_spec.interval_ms,
                    horizon_ms=run_spec.horizon_ms,
                    execution=run_spec.execution,
                )
            )
            del candles  # free this part before the next one is read
        # In the order of the paths, whatever parts the month was read in.
        order = paths.frame.select("call_id").with_row_index("_order")
        trades_frame = pl.concat(parts)
        frame = order.join(trades_frame, on="call_id").sort("_order").select(trades_frame.columns)
        reasons = dict(frame.group_by("exit_reason").len().sort("exit_reason").iter_rows()) if frame.height else {}
        step.log(f"{frame.height} trades; exits {reasons}")
        return step.output(
            frame,
            inputs=(alerts, paths),
            headline={
                "avg_return_bps": _mean(frame, "realized_return_bps"),
                "median_return_bps": _median(frame, "realized_return_bps"),
                "stop_out_rate": _mean(frame, "stop_out"),
                "win_rate": _mean(frame.select(pl.col("realized_return_bps") > 0), "realized_return_bps"),
                "exit_reasons": reasons,
            },
        )


@artifact_asset(kinds={"polars", "parquet"})
def summary(
    context: AssetExecutionContext,
    run_spec: RunSpec,
    alerts: LoadedArtifact,
    paths: LoadedArtifact,
    trades: LoadedArtifact,
    run_store: RunStoreResource,
) -> ArtifactOutput:
    """One row of aggregate metrics over the partition's trades (`results/summary.parquet`)."""
    with artifact_step(context, run_store, run_spec, "summary") as step:
        source_rows = int(alerts.metadata.get("source_rows", alerts.frame.height))
        frame = summarize_trades(
            trades.frame,
            run_id=run_spec.run_id,
            month=step.month,
            policy_id=run_spec.policy_id,
            calls_processed=paths.frame.height,
            calls_excluded=source_rows - paths.frame.height,
        )
        row = frame.row(0, named=True)
        step.log(
            f"{row['trades_count']} trades, median return {_num(row['median_return_bps'])} bps, "
            f"stop-out {_pct(row['stop_out_rate'])}, win rate {_pct(row['win_rate'])}"
        )
        return step.output(
            frame,
            inputs=(alerts, paths, trades),
            headline={
                k: row[k] for k in ("trades_count", "avg_return_bps", "median_return_bps", "stop_out_rate", "win_rate")
            },
        )


@artifact_asset(kinds={"numba", "parquet"})
def frontier(
    context: AssetExecutionContext,
    run_spec: RunSpec,
    alerts: LoadedArtifact,
    paths: LoadedArtifact,
    run_store: RunStoreResource,
    candle_store: CandleStoreResource,
) -> ArtifactOutput:
    """The optimization frontier (`results/frontier.parquet`): a policy grid ranked under constraints."""
    with artifact_step(context, run_store, run_spec, "frontier") as step:
        if run_spec.run_type != "optimization":
            raise SpecError(
                f"frontier: run {run_spec.run_id} is a {run_spec.run_type} run; only optimization runs have a frontier"
            )
        frame = run_sweep(
            candle_store.segments(run_spec, alerts.frame, paths.frame),
            parse_sweep(run_spec.sweep),
            run_id=run_spec.run_id,
            interval_ms=run_spec.interval_ms,
            horizon_ms=run_spec.horizon_ms,
            execution=run_spec.execution,
        )
        overall = frame.filter(pl.col("caller_name").is_null())
        best = overall.filter(pl.col("rank") == 1)
        headline: dict[str, Any] = {
            "policies": overall.height,
            "feasible_policies": int(overall.get_column("meets_constraints").sum()),
        }
        if best.height:
            headline.update(
                best_policy_id=best.item(0, "policy_id"),
                best_policy=best.item(0, "policy_params"),
                best_objective_score=best.item(0, "objective_score"),
            )
        step.log(
            f"{overall.height} policies, {headline['feasible_policies']} meet the constraints; "
            f"best {headline.get('best_policy', 'n/a')} (score {_num(headline.get('best_objective_score'))})"
        )
        return step.output(frame, inputs=(alerts, paths), headline=headline)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def _mean(frame: pl.DataFrame, column: str) -> float | None:
    if frame.height == 0:
        return None
    value = frame.get_column(column).cast(pl.Float64).mean()
    return None if value is None else float(value)


def _median(frame: pl.DataFrame, column: str) -> float | None:
    if frame.height == 0:
        return None
    value = frame.get_column(column).cast(pl.Float64).median()
    return None if value is None else float(value)


BACKTEST_ASSETS = [run_spec, alerts, paths, trades, summary, frontier]
