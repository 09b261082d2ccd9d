"""The frontier's step of optimization runs (README "A first backtest", Optimization): the grid
simulated over the month's entries, ranked under constraints, and how much of its winner is luck
(docs/confidence.md) — the daily matrix and PBO/SPA, written with the frontier from the same
simulation.

A spec written before confidence existed (no `confidence: true`) gets the frontier alone.
"""

# No `from __future__ import annotations`: Dagster reads the `context` annotation at definition.
from collections.abc import Iterator

from dagster import AssetCheckResult, AssetExecutionContext, Output

from quantlab_pipeline.core import display
from quantlab_pipeline.core.confidence import benchmark_phrase, daily_matrix, overfitting, overfitting_sentence
from quantlab_pipeline.core.frontier import check_sweep_memory, sweep_month
from quantlab_pipeline.core.policy_spec import policy_id_of
from quantlab_pipeline.core.sweep_spec import benchmark_policy, parse_sweep
from quantlab_pipeline.orchestration.assets import checked_artifact_asset
from quantlab_pipeline.orchestration.headlines import frontier_headline, overfitting_headline, report_link
from quantlab_pipeline.orchestration.resources import CandleStoreResource, RunStoreResource
from quantlab_pipeline.orchestration.steps import ArtifactOutput, ArtifactStep, checked_step
from quantlab_pipeline.sources.machine import available_memory_bytes
from quantlab_pipeline.storage.artifact_files import LoadedArtifact

COMPANIONS = {
    "policy_daily": "The daily matrix (`results/policy_daily.parquet`): per swept policy, and the benchmark, and "
    "per UTC day of entry, the trades entered that day and their mean net return.",
    "overfitting": "How much of the frontier's winner is luck (`results/overfitting.parquet`): the probability of "
    "backtest overfitting by CSCV over the daily matrix, and SPA p-values of the grid against the benchmark.",
}


@checked_artifact_asset(kinds={"numba", "parquet"}, companions=COMPANIONS)
def frontier(
    context: AssetExecutionContext,
    alerts: LoadedArtifact,
    paths: LoadedArtifact,
    run_store: RunStoreResource,
    candle_store: CandleStoreResource,
) -> Iterator[Output | AssetCheckResult]:
    """The optimization frontier (`results/frontier.parquet`): a policy grid ranked under constraints."""
    run_spec = run_store.spec(context.partition_key)

    def compute(step: ArtifactStep) -> ArtifactOutput:
        sweep = parse_sweep(run_spec.sweep)
        benchmark = benchmark_policy(sweep, run_spec.horizon_ms)
        check_sweep_memory(len(sweep.policies), paths.frame.height, available_memory_bytes(), where="--sweep")
        result = sweep_month(
            candle_store.segments(run_spec, alerts.frame, paths.frame),
            sweep,
            run_id=run_spec.run_id,
            interval_ms=run_spec.interval_ms,
            horizon_ms=run_spec.horizon_ms,
            execution=run_spec.execution,
            benchmark=benchmark,
            intervals=run_spec.confidence,
        )
        frame = result.frontier
        headline = frontier_headline(frame, report_link(run_store.root, run_spec.run_id))
        step.log(
            f"{headline['policies']} policies, {headline['feasible_policies']} meet the constraints; "
            f"best {headline.get('best_policy', 'n/a')} (score {display.bps(headline.get('best_objective_score'))})"
        )
        read = (alerts, paths)
        if not run_spec.confidence:
            return step.output(frame, inputs=read, headline=headline)
        daily = result.daily
        matrix = daily_matrix(result.policy_ids, daily.day_numbers, daily.sums, daily.counts, run_id=run_spec.run_id)
        row = overfitting(
            matrix,
            run_id=run_spec.run_id,
            policy_ids=[policy_id_of(p) for p in sweep.policies],
            benchmark_policy_id=policy_id_of(benchmark),
            cscv_blocks=sweep.cscv_blocks,
        )
        figures = row.row(0, named=True)
        sentence = overfitting_sentence(figures, benchmark=benchmark_phrase(benchmark, run_spec.horizon_ms))
        step.log(sentence)
        companions = {
            "policy_daily": step.output(
                matrix, inputs=read, headline={"policies": len(result.policy_ids), "days": len(daily.day_numbers)}
            ),
            "overfitting": step.output(row, inputs=read, headline=overfitting_headline(figures, sentence)),
        }
        return step.output(frame, inputs=read, headline=headline, companions=companions)

    yield from checked_step(
        context,
        run_store,
        run_spec,
        "frontier",
        compute,
        inputs={"alerts": alerts, "paths": paths},
        candle_store=candle_store,
    )


OPTIMIZATION_ASSETS = [frontier]
