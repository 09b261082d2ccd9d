"""Research assets on the run-month partitions: `features` (docs/research.md "Features") and
`walkforward` (docs/research.md "Walk-forward optimization").

Both apply to some runs only (features: path-only and policy runs unless the spec says no
features; walkforward: optimization runs with `walk_forward`), so their outputs are optional:
in a run they do not apply to they materialize nothing and the job goes on.
"""

# No `from __future__ import annotations`: Dagster reads the `context` annotation at definition.
import itertools
from collections.abc import Iterator

import polars as pl
from dagster import AssetExecutionContext, Output

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.core.features import compute_features
from quantlab_pipeline.core.frontier import run_sweep
from quantlab_pipeline.core.policy_spec import policy_id_of
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.core.sweep_spec import parse_sweep
from quantlab_pipeline.core.walkforward import WALKFORWARD_SCHEMA, training_pbo, walk_forward
from quantlab_pipeline.orchestration.assets import artifact_asset
from quantlab_pipeline.orchestration.headlines import features_headline, walkforward_headline
from quantlab_pipeline.orchestration.resources import CandleStoreResource, RunStoreResource
from quantlab_pipeline.orchestration.steps import ArtifactOutput, artifact_step
from quantlab_pipeline.storage.artifact_files import LoadedArtifact
from quantlab_pipeline.storage.layout import required_artifacts


def _applies(context: AssetExecutionContext, spec: RunSpec) -> bool:
    artifact = context.asset_key.path[-1]
    if artifact in required_artifacts(spec.run_type, spec.to_dict()):
        return True
    context.log.info(f"{artifact} does not apply to run {spec.run_id} ({spec.run_type}); skipped")
    return False


@artifact_asset(kinds={"numba", "parquet"}, output_required=False)
def features(
    context: AssetExecutionContext,
    alerts: LoadedArtifact,
    paths: LoadedArtifact,
    run_store: RunStoreResource,
    candle_store: CandleStoreResource,
) -> Iterator[Output[ArtifactOutput]]:
    """Per call, what was known at its alert (`features/features.parquet`): pre-alert returns,
    volatility and volume, the token's history, the time, and the caller's prior record."""
    run_spec = run_store.spec(context.partition_key)
    if not _applies(context, run_spec):
        return
    with artifact_step(context, run_store, run_spec, "features") as step:
        frame = compute_features(
            alerts.frame,
            paths.frame,
            ((part, read.candles) for part, read in candle_store.parts(run_spec, alerts.frame)),
            run_id=run_spec.run_id,
            interval_ms=run_spec.interval_ms,
            horizon_ms=run_spec.horizon_ms,
        )
        headline = features_headline(frame)
        step.log(
            f"{frame.height} calls; 24h history for {headline['with_24h_history_pct']}%, "
            f"a prior caller record for {headline['with_caller_record_pct']}%"
            if frame.height
            else "0 calls"
        )
        output = step.output(frame, inputs=(alerts, paths), headline=headline)
    yield Output(output)


@artifact_asset(
    kinds={"polars", "parquet"},
    output_required=False,
    # The month's own frontier; the training months' are read from their run directories, as
    # the previous months of a run are not partitions a mapping can name.
    deps=["frontier"],
)
def walkforward(
    context: AssetExecutionContext,
    run_store: RunStoreResource,
    candle_store: CandleStoreResource,
) -> Iterator[Output[ArtifactOutput]]:
    """Walk-forward validation (`results/walkforward.parquet`): the policy the K months before
    chose (in-sample), scored on this month (out-of-sample), and the difference."""
    run_spec = run_store.spec(context.partition_key)
    if not _applies(context, run_spec):
        return
    with artifact_step(context, run_store, run_spec, "walkforward") as step:
        sweep = parse_sweep(run_spec.sweep)
        k = sweep.train_months or 1
        months = run_spec.months()
        position = months.index(step.month)
        tested = run_store.directory(step.month, run_spec.run_id).read_artifact("frontier")
        if position < k:
            step.log(f"{step.month} has fewer than {k} month(s) before it in the window: nothing to test")
            frame, metadata = pl.DataFrame(schema=WALKFORWARD_SCHEMA), dict[str, str]()
        else:
            train = months[position - k : position]
            in_sample, metadata = _in_sample(run_spec, train, run_store, candle_store)
            matrices = _training_matrices(run_spec, train, run_store, metadata)
            frame = walk_forward(
                in_sample,
                tested.frame,
                run_id=run_spec.run_id,
                month=step.month,
                train_months=tuple(train),
                objective=sweep.objective,
                train_pbo=training_pbo(matrices, [policy_id_of(p) for p in sweep.policies], sweep.cscv_blocks),
            )
        headline = walkforward_headline(frame)
        if frame.height:
            step.log(
                f"selected {headline.get('selected_policy_id') or 'no feasible policy'} on {headline['train_months']}: "
                f"in-sample {headline.get('in_sample_score')}, out-of-sample {headline.get('out_of_sample_score')}"
            )
        output = step.output(frame, inputs=(tested,), headline=headline, parquet_metadata=metadata)
    yield Output(output)


def _in_sample(
    spec: RunSpec, train: list[str], run_store: RunStoreResource, candle_store: CandleStoreResource
) -> tuple[pl.DataFrame, dict[str, str]]:
    """The frontier of the training months' trades together, and the sha256 of what it was read from.

    One month: its stored frontier (the same grid, so the same rows a new sweep would give). More:
    one sweep over the months' paths and candles, so medians and percentiles are of the union of
    trades (docs/research.md "Walk-forward optimization")."""
    directories = [run_store.directory(month, spec.run_id) for month in train]
    for month, directory in zip(train, directories):
        if (directory.manifest() or {}).get("status") != "completed":
            raise QuantlabError(
                f"walk-forward: month {month} of run {spec.run_id} is not completed; "
                "its frontier is this month's in-sample: materialize the months in order"
            )
    if len(train) == 1:
        stored = directories[0].read_artifact("frontier")
        return stored.frame, {f"frontier_sha256_{train[0]}": stored.sha256}
    reads = [(d.read_artifact("alerts"), d.read_artifact("paths")) for d in directories]
    frame = run_sweep(
        _Chained([candle_store.segments(spec, a.frame, p.frame) for a, p in reads]),
        parse_sweep(spec.sweep),
        run_id=spec.run_id,
        interval_ms=spec.interval_ms,
        horizon_ms=spec.horizon_ms,
        execution=spec.execution,
    )
    metadata = {f"paths_sha256_{month}": p.sha256 for month, (_, p) in zip(train, reads)}
    return frame, metadata


def _training_matrices(
    spec: RunSpec, train: list[str], run_store: RunStoreResource, metadata: dict[str, str]
) -> list[pl.DataFrame | None]:
    """The training months' daily matrices (None for a month written without one), their sha256
    recorded in `metadata` beside what the in-sample frontier was read from."""
    matrices: list[pl.DataFrame | None] = []
    for month in train:
        directory = run_store.directory(month, spec.run_id)
        if "policy_daily" not in ((directory.manifest() or {}).get("artifacts") or {}):
            matrices.append(None)
            continue
        stored = directory.read_artifact("policy_daily")
        metadata[f"policy_daily_sha256_{month}"] = stored.sha256
        matrices.append(stored.frame)
    return matrices


class _Chained:
    """Several months' segments as one re-iterable sequence (the sweep walks it once per chunk)."""

    def __init__(self, parts: list):
        self._parts = parts

    def __iter__(self):
        return itertools.chain.from_iterable(self._parts)


RESEARCH_ASSETS = [features, walkforward]
