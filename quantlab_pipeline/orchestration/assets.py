"""Backtest assets, all on the run-month partitions (`orchestration.partitions`): `run_spec` →
alerts → paths → trades → summary, and paths → frontier (`orchestration.optimization`). Each body calls `core` and returns an
`ArtifactOutput`; the IO manager writes it. Their checks (`orchestration.checks`) are evaluated in
the asset's own step (`steps.checked_step`).

Only `alerts` takes the spec as an input: the lineage reads as the pipeline, without an edge
from the spec to every artifact; the other steps read the (immutable) spec through the run store.
"""

import enum
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    AssetsDefinition,
    Config,
    Failure,
    Output,
    asset,
    multi_asset,
)
from pydantic import Field

from quantlab_pipeline.core import display
from quantlab_pipeline.core.errors import QuantlabError, SpecError
from quantlab_pipeline.core.policy import simulate_trades
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.core.spec_builder import (
    DEFAULT_ALERTS_TABLE,
    DEFAULT_CAPITAL,
    DEFAULT_FEE_BPS,
    DEFAULT_HORIZON,
    DEFAULT_INTERVAL,
    DEFAULT_POSITION_SIZE,
    DEFAULT_SLIPPAGE_BPS,
    SpecRequest,
)
from quantlab_pipeline.core.summary import summarize_trades
from quantlab_pipeline.core.sweep_spec import DEFAULT_CSCV_BLOCKS, MAX_CSCV_BLOCKS
from quantlab_pipeline.core.truth import compute_paths
from quantlab_pipeline.orchestration import dagster_adapter
from quantlab_pipeline.orchestration.checks import ARTIFACT_CHECKS, ExclusionConfig
from quantlab_pipeline.orchestration.headlines import (
    paths_headline,
    report_link,
    summary_headline,
    trades_headline,
)
from quantlab_pipeline.orchestration.partitions import (
    OWNER,
    RUN_MONTH_PARTITIONS_NAME,
    check_months_exist,
    month_run_key,
    run_month_keys,
    run_month_partitions,
    split_month_run_key,
)
from quantlab_pipeline.orchestration.resources import CandleStoreResource, RunStoreResource
from quantlab_pipeline.orchestration.steps import ArtifactOutput, ArtifactStep, checked_step
from quantlab_pipeline.sources.alerts import check_alerts_source, read_alerts
from quantlab_pipeline.sources.candles import check_candles_source
from quantlab_pipeline.storage.artifact_files import LoadedArtifact
from quantlab_pipeline.storage.layout import step_artifacts
from quantlab_pipeline.storage.run_creation import create_run_spec
from quantlab_pipeline.storage.specs import read_spec

GROUP = "backtest"


def artifact_asset(**kwargs: Any):
    """The shape every run-month artifact shares: partitions, the run directory."""
    return asset(
        partitions_def=run_month_partitions,
        io_manager_key="run_io_manager",
        group_name=GROUP,
        owners=[OWNER],
        **kwargs,
    )


Body = Callable[..., Iterator[Output | AssetCheckResult]]


def checked_artifact_asset(
    kinds: set[str],
    companions: Mapping[str, str] | None = None,
    ins: dict[str, AssetIn] | None = None,
    op_tags: Mapping[str, str] | None = None,
) -> Callable[[Body], AssetsDefinition]:
    """`artifact_asset` for an artifact with checks (`checks.ARTIFACT_CHECKS`): the checks are
    declared on the asset and evaluated in its step. Subsettable, so a check can run alone.

    A step that writes several artifacts (`layout.STEP_ARTIFACTS`) has an asset for each; their
    descriptions are `companions` (artifact: description). `op_tags` are the step's (Dagster's
    `dagster/priority` orders the steps that are ready at once)."""

    def decorate(body: Body) -> AssetsDefinition:
        name = body.__name__
        descriptions = {name: inspect.getdoc(body), **(companions or {})}
        outs = {
            artifact: AssetOut(
                key=AssetKey(artifact),
                description=descriptions[artifact],
                io_manager_key="run_io_manager",
                is_required=False,  # a check-only selection writes nothing
                group_name=GROUP,
                owners=[OWNER],
                kinds=kinds,
            )
            for artifact in step_artifacts(name)
        }
        return multi_asset(
            name=name,
            outs=outs,
            check_specs=[check.spec(artifact) for artifact in outs for check in ARTIFACT_CHECKS.get(artifact, ())],
            can_subset=True,
            partitions_def=run_month_partitions,
            ins=ins or {},
            op_tags=op_tags,
        )(body)

    return decorate


class RunType(enum.Enum):
    """The launchpad's choice of run type (a dropdown); values are the spec's `run_type`."""

    path_only = "path-only"
    policy = "policy"
    optimization = "optimization"


class RunSpecConfig(Config):
    """Launchpad config for a new run; to re-materialize an existing spec, give nothing.

    Required for every new run: `run_type`, `alerts`, `window_from`, `window_to`. Policy runs also
    need `policy_id` and `policy`; fields a run type does not use are refused, not ignored.
    """

    run_type: RunType | None = Field(
        default=None, description="path_only, policy or optimization (the spec's path-only, policy, optimization)."
    )
    alerts: str | None = Field(
        default=None,
        description="DuckDB database with the alerts table; relative paths are resolved against the "
        "code location's working directory and stored absolute.",
    )
    window_from: str | None = Field(default=None, description="First day of the window, YYYY-MM-DD (UTC, inclusive).")
    window_to: str | None = Field(default=None, description="Last day of the window, YYYY-MM-DD (UTC, inclusive).")
    alerts_table: str | None = Field(default=None, description=f"Alerts table name (default {DEFAULT_ALERTS_TABLE}).")
    candles: str | None = Field(
        default=None,
        description="Candles: a DuckDB database with ohlcv_candles, or a Parquet file, directory or glob "
        "(default: the alerts database).",
    )
    interval: str | None = Field(
        default=None, description=f"Candle interval, e.g. 1m, 5m, 1h (default {DEFAULT_INTERVAL})."
    )
    horizon: str | None = Field(
        default=None, description=f"How long after each alert the path is followed (default {DEFAULT_HORIZON})."
    )
    callers: list[str] | None = Field(default=None, description="Only alerts of these callers.")
    chains: list[str] | None = Field(default=None, description="Only alerts on these chains.")
    policy_id: str | None = Field(default=None, description="Policy runs: the policy's name.")
    policy: str | None = Field(
        default=None,
        description='Policy runs: the policy as JSON, e.g. {"kind":"fixed_stop","stop_loss_bps":500}, or @file.json.',
    )
    fee_bps: float | None = Field(
        default=None, description=f"Policy and optimization runs: fee per side in bps (default {DEFAULT_FEE_BPS:g})."
    )
    slippage_bps: float | None = Field(
        default=None,
        description=f"Policy and optimization runs: slippage per side in bps (default {DEFAULT_SLIPPAGE_BPS:g}).",
    )
    sweep: str | None = Field(
        default=None,
        description="Optimization runs: the policy grid as JSON or @grid.json (default: the built-in grid).",
    )
    per_caller: bool = Field(default=False, description="Optimization runs: also rank the policies for each caller.")
    cscv_blocks: int | None = Field(
        default=None,
        description="Optimization runs: PBO's blocks, the parts each month's days are cut into; an even "
        f"integer from 2 to {MAX_CSCV_BLOCKS} (default {DEFAULT_CSCV_BLOCKS}).",
    )
    benchmark: str | None = Field(
        default=None,
        description="Optimization runs: the policy the grid is tested against (SPA), as JSON or @file.json "
        '(default: holding to the horizon, {"kind":"time_stop","max_hold":"<horizon>"}).',
    )
    features: bool = Field(
        default=True,
        description="Write features/features.parquet, the research features of each call (false: the CLI's --no-features).",
    )
    portfolio: bool = Field(
        default=True,
        description="Policy runs: follow the trades with an account, writing portfolio/equity.parquet and "
        "results/portfolio.parquet (false: the CLI's --no-portfolio).",
    )
    capital: float | None = Field(
        default=None,
        description=f"Policy runs: the account's starting cash, in quote units (default {DEFAULT_CAPITAL:,.0f}).",
    )
    position_size: float | None = Field(
        default=None,
        description=f"Policy runs: what each entry spends, in quote units (default {DEFAULT_POSITION_SIZE:g}; "
        "not with position_fraction).",
    )
    position_fraction: float | None = Field(
        default=None,
        description="Policy runs: what each entry spends as a fraction of equity at that instant, in (0, 1] "
        "(instead of position_size).",
    )
    max_positions: int | None = Field(
        default=None, description="Policy runs: at most this many positions open at once (default: no cap)."
    )

    def is_empty(self) -> bool:
        return not self.model_dump(exclude_defaults=True)

    def request(self) -> SpecRequest:
        return SpecRequest(
            run_type=self.run_type.value if self.run_type else "",
            alerts=self.alerts,
            window_from=self.window_from,
            window_to=self.window_to,
            alerts_table=self.alerts_table,
            candles=self.candles,
            interval=self.interval,
            horizon=self.horizon,
            callers=tuple(self.callers or ()),
            chains=tuple(self.chains or ()),
            policy_id=self.policy_id,
            policy=self.policy,
            fee_bps=self.fee_bps,
            slippage_bps=self.slippage_bps,
            sweep=self.sweep,
            per_caller=self.per_caller,
            features=self.features,
            cscv_blocks=self.cscv_blocks,
            benchmark=self.benchmark,
            portfolio=self.portfolio,
            capital=self.capital,
            position_size=self.position_size,
            position_fraction=self.position_fraction,
            max_positions=self.max_positions,
        )


@asset(
    partitions_def=run_month_partitions,
    io_manager_key="spec_io_manager",
    group_name=GROUP,
    kinds={"json"},
    owners=[OWNER],
)
def run_spec(context: AssetExecutionContext, config: RunSpecConfig, run_store: RunStoreResource) -> RunSpec:
    """One backtest configuration, immutable once written (`runs/_specs/<run_id>.json`); each of
    its months is a partition. A new spec from the launchpad registers the keys of its window."""
    month, run_id = split_month_run_key(context.partition_key)
    try:
        existing = read_spec(run_store.root, run_id)
    except QuantlabError:
        existing = None
    try:  # a spec that differs from the stored one is refused by the IO manager (immutable)
        if existing is not None and config.is_empty():
            spec = existing
        else:
            spec = create_run_spec(config.request(), run_id=run_id)
            check_months_exist(spec.months())
        if not spec.covers_month(month) or month_run_key(spec, month) != context.partition_key:
            raise SpecError(
                f"partition {context.partition_key}: not a month of this run "
                f"(its keys: {', '.join(run_month_keys(spec))})"
            )
    except SpecError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    dagster_adapter.add_partition_keys(context.instance, RUN_MONTH_PARTITIONS_NAME, run_month_keys(spec))
    return spec


@checked_artifact_asset(kinds={"duckdb", "parquet"}, ins={"run_spec": AssetIn()})
def alerts(
    context: AssetExecutionContext, run_spec: RunSpec, run_store: RunStoreResource, candle_store: CandleStoreResource
) -> Iterator[Output | AssetCheckResult]:
    """The partition's valid, de-duplicated alerts (`inputs/alerts.parquet`): a provenance snapshot."""
    source = run_spec.source
    if AssetKey("alerts") in context.selected_asset_keys:
        try:  # a bad source fails before the run directory exists
            check_alerts_source(source.alerts, source.alerts_table)
            check_candles_source(source.candles_source, interval=run_spec.interval)
        except QuantlabError as exc:
            raise Failure(description=str(exc), allow_retries=False) from None

    def compute(step: ArtifactStep) -> ArtifactOutput:
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

    yield from checked_step(context, run_store, run_spec, "inputs", compute, inputs={}, candle_store=candle_store)


@checked_artifact_asset(kinds={"numba", "parquet"})
def paths(
    context: AssetExecutionContext,
    config: ExclusionConfig,
    alerts: LoadedArtifact,
    run_store: RunStoreResource,
    candle_store: CandleStoreResource,
) -> Iterator[Output | AssetCheckResult]:
    """The truth layer (`truth/paths.parquet`): per alert, entry, multiples hit, peak, drawdowns."""
    run_spec = run_store.spec(context.partition_key)

    def compute(step: ArtifactStep) -> ArtifactOutput:
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
        headline = paths_headline(frame, excluded)
        step.log(
            f"{frame.height} paths, {excluded} alerts excluded; hit 2x {display.num(headline['hit_2x_pct'])}%, "
            f"median peak {display.num(headline['median_peak_multiple'])}x"
        )
        return step.output(frame, inputs=(alerts,), errors=errors, headline=headline)

    yield from checked_step(
        context,
        run_store,
        run_spec,
        "truth",
        compute,
        inputs={"alerts": alerts},
        candle_store=candle_store,
        max_excluded_share=config.max_excluded_share,
    )


@checked_artifact_asset(kinds={"numba", "parquet"})
def trades(
    context: AssetExecutionContext,
    alerts: LoadedArtifact,
    paths: LoadedArtifact,
    run_store: RunStoreResource,
    candle_store: CandleStoreResource,
) -> Iterator[Output | AssetCheckResult]:
    """The policy layer (`policy/trades.parquet`): one simulated trade per entry."""
    run_spec = run_store.spec(context.partition_key)

    def compute(step: ArtifactStep) -> ArtifactOutput:
        policy_id, policy = run_spec.policy_and_id()
        parts = []
        for segment, candles in candle_store.segments(run_spec, alerts.frame, paths.frame):
            parts.append(
                simulate_trades(
                    segment,
                    candles,
                    policy,
                    run_id=run_spec.run_id,
                    policy_id=policy_id,
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
        headline = trades_headline(frame)
        step.log(f"{frame.height} trades; exits {headline['exit_reasons'].value}")
        return step.output(frame, inputs=(alerts, paths), headline=headline)

    yield from checked_step(
        context,
        run_store,
        run_spec,
        "policy",
        compute,
        inputs={"alerts": alerts, "paths": paths},
        candle_store=candle_store,
    )


@checked_artifact_asset(kinds={"polars", "parquet"})
def summary(
    context: AssetExecutionContext,
    alerts: LoadedArtifact,
    paths: LoadedArtifact,
    trades: LoadedArtifact,
    run_store: RunStoreResource,
    candle_store: CandleStoreResource,
) -> Iterator[Output | AssetCheckResult]:
    """One row of aggregate metrics over the partition's trades (`results/summary.parquet`)."""
    run_spec = run_store.spec(context.partition_key)

    def compute(step: ArtifactStep) -> ArtifactOutput:
        source_rows = int(alerts.metadata.get("source_rows", alerts.frame.height))
        frame = summarize_trades(
            trades.frame,
            run_id=run_spec.run_id,
            month=step.month,
            policy_id=run_spec.policy_and_id()[0],
            calls_processed=paths.frame.height,
            calls_excluded=source_rows - paths.frame.height,
        )
        row = frame.row(0, named=True)
        step.log(
            f"{row['trades_count']} trades, median return {display.bps(row['median_return_bps'])} bps, "
            f"stop-out {display.pct(row['stop_out_rate'])}, win rate {display.pct(row['win_rate'])}"
        )
        headline = summary_headline(row, report_link(run_store.root, run_spec.run_id))
        return step.output(frame, inputs=(alerts, paths, trades), headline=headline)

    yield from checked_step(
        context,
        run_store,
        run_spec,
        "summary",
        compute,
        inputs={"alerts": alerts, "paths": paths, "trades": trades},
        candle_store=candle_store,
    )


BACKTEST_ASSETS = [run_spec, alerts, paths, trades, summary]  # and the frontier's step: orchestration.optimization
