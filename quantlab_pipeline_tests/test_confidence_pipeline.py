"""Confidence through the pipeline (docs/confidence.md): an optimization month writes the daily
matrix and the overfitting row with its frontier; PBO recomputed from the stored matrix by the
definition equals the stored one, SPA equals arch's on the same matrix, the best policy's daily
matrix and intervals equal those of a policy run of it; end to end through the CLI."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import polars as pl
import pytest
from dagster import AssetCheckSeverity

from quantlab_pipeline.core.confidence import DAILY_SCHEMA, OVERFITTING_SCHEMA, block_bounds, daily_matrix_of_trades
from quantlab_pipeline.core.frontier import BEST_ROWS
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.core.spec_builder import SpecRequest
from quantlab_pipeline.orchestration.checks import ARTIFACT_CHECKS
from quantlab_pipeline.orchestration.defs import build_defs
from quantlab_pipeline.orchestration.launch import create_run
from quantlab_pipeline.orchestration.month_runs import materialize_month
from quantlab_pipeline.orchestration.partitions import month_run_key
from quantlab_pipeline.orchestration.settings import Settings
from quantlab_pipeline.storage.catalog import query_runs, sync_catalog
from quantlab_pipeline.storage.layout import required_artifacts
from quantlab_pipeline.storage.paths import ProjectPaths
from quantlab_pipeline.storage.run_creation import create_run_spec
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline_tests.helpers import run_cli

arch_bootstrap = pytest.importorskip("arch.bootstrap", reason="arch is a dev dependency: pip install -e '.[dev]'")

GRID = {
    "templates": [
        {"kind": "fixed_stop", "stop_loss_bps": [300, 1000, 3000], "take_profit_bps": [5000, 20000, None]},
        {"kind": "time_stop", "max_hold": ["1h", "12h"]},
    ],
    "per_caller": True,
    "cscv_blocks": 4,
}


def spec_of(sample_db, run_type, **extra) -> RunSpec:
    request = SpecRequest(
        run_type=run_type,
        alerts=str(sample_db),
        window_from="2024-01-05",
        window_to="2024-01-31",
        interval="5m",
        **extra,
    )
    return create_run_spec(request)


@pytest.fixture
def optimized(sample_db, runs_dir, dagster_instance):
    spec = spec_of(sample_db, "optimization", sweep=GRID)
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    result = materialize_month(spec, "2024-01", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert result.status == "completed", result.error
    return spec, RunDirectory(runs_dir, "2024-01", spec.run_id), result


def pbo_by_definition(matrix: pl.DataFrame, policy_ids: list[str], blocks: int) -> tuple[float, float]:
    """PBO and the median logit by docs/confidence.md, one split at a time, from the stored rows."""
    days = sorted(matrix.get_column("day").unique().to_list())
    value = {(r["policy_id"], r["day"]): r["mean_return_bps"] for r in matrix.iter_rows(named=True)}
    ids = sorted(policy_ids)
    bounds = block_bounds(len(days), blocks)
    cut = [days[bounds[b] : bounds[b + 1]] for b in range(blocks)]

    def performance(policy: str, chosen: tuple[int, ...]) -> float:
        cells = [value.get((policy, d), 0.0) for b in chosen for d in cut[b]]
        return sum(cells) / len(cells)

    logits = []
    for chosen in itertools.combinations(range(blocks), blocks // 2):
        rest = tuple(b for b in range(blocks) if b not in chosen)
        ins = {p: performance(p, chosen) for p in ids}
        best = min(p for p in ids if ins[p] == max(ins.values()))  # ties: the smallest id
        outs = {p: performance(p, rest) for p in ids}
        equal = [math.isclose(outs[p], outs[best], rel_tol=1e-12, abs_tol=1e-9) for p in ids]
        below = sum(outs[p] < outs[best] and not same for p, same in zip(ids, equal))
        rank = below + (sum(equal) + 1) / 2
        omega = rank / (len(ids) + 1)
        logits.append(math.log(omega / (1 - omega)))
    return sum(lg <= 0 for lg in logits) / len(logits), float(np.median(logits))


def test_an_optimization_month_writes_the_daily_matrix_and_its_overfitting(optimized):
    spec, rd, result = optimized
    assert spec.confidence and {"policy_daily", "overfitting"} <= set(rd.manifest()["artifacts"])
    matrix = rd.read_artifact("policy_daily").frame
    row = rd.read_artifact("overfitting").frame
    frontier = rd.read_artifact("frontier").frame
    assert matrix.schema == DAILY_SCHEMA and row.schema == OVERFITTING_SCHEMA
    grid = frontier.filter(pl.col("caller_name").is_null()).get_column("policy_id").to_list()
    stored = row.row(0, named=True)
    benchmark = stored["benchmark_policy_id"]
    assert benchmark not in grid  # holding to the 5d horizon: not one of the grid's policies
    assert set(matrix.get_column("policy_id")) == {*grid, benchmark}
    # every policy trades every entry: the same trades per day for each of them
    per_day = matrix.group_by("day").agg(pl.col("trades").n_unique().alias("n"), pl.len().alias("rows"))
    assert per_day.get_column("n").to_list() == [1] * per_day.height
    assert set(per_day.get_column("rows")) == {len(grid) + 1}
    assert matrix.group_by("policy_id").agg(pl.col("trades").sum()).get_column("trades").unique().to_list() == [
        rd.read_artifact("paths").frame.height
    ]

    # PBO recomputed from the stored matrix by the definition, split by split
    pbo, logit_median = pbo_by_definition(matrix, grid, 4)
    assert (stored["n_policies"], stored["n_days"], stored["cscv_blocks"], stored["cscv_splits"]) == (
        len(grid),
        matrix.get_column("day").n_unique(),
        4,
        6,
    )
    assert stored["pbo"] == pbo and stored["logit_median"] == pytest.approx(logit_median)

    # SPA: arch called directly on the same matrix
    days = sorted(matrix.get_column("day").unique().to_list())
    wide = matrix.pivot(on="day", index="policy_id", values="mean_return_bps").select("policy_id", *map(str, days))
    values = {r[0]: np.array(r[1:], dtype=np.float64) for r in wide.fill_null(0.0).iter_rows()}
    test = arch_bootstrap.SPA(
        -values[benchmark], -np.array([values[p] for p in sorted(grid)]).T, reps=1000, bootstrap="stationary", seed=0
    )
    test.compute()
    got = (stored["spa_pvalue_lower"], stored["spa_pvalue"], stored["spa_pvalue_upper"])
    assert got == tuple(test.pvalues[["lower", "consistent", "upper"]])

    # the 10 best rows of each group have intervals around their figures, the others none
    ci = ["median_return_bps_ci_low", "median_return_bps_ci_high", "avg_return_bps_ci_low", "avg_return_bps_ci_high"]
    best, rest = frontier.filter(pl.col("rank") <= BEST_ROWS), frontier.filter(pl.col("rank") > BEST_ROWS)
    assert rest.height and rest.select(pl.col(ci).is_null().all()).row(0) == (True,) * 4
    traded = best.filter(pl.col("trades_count") > 0)
    assert traded.height > BEST_ROWS  # the all-callers group's and each caller's
    assert (
        traded.filter(
            (pl.col("median_return_bps_ci_low") <= pl.col("median_return_bps"))
            & (pl.col("median_return_bps") <= pl.col("median_return_bps_ci_high"))
            & (pl.col("avg_return_bps_ci_low") <= pl.col("avg_return_bps_ci_high"))
        ).height
        == traded.height
    )

    # where people look: the headline, the step's log, the warning check's metadata
    sentence = result.headline["overfitting"]["sentence"]
    assert sentence.startswith(f"PBO {stored['pbo']:.2f}") and "against holding to the horizon" in sentence
    assert sentence in (rd.path / "logs/stdout.txt").read_text()
    assert "(95 % CI)" in result.headline["frontier"]["headline"]

    # the catalog lists the month's PBO and SPA p-value with the run
    catalog = rd.runs_dir.parent / "catalog.duckdb"
    sync_catalog(catalog, rd.runs_dir)
    (registered,) = query_runs(catalog, run_type="optimization")
    assert (registered["pbo"], registered["spa_pvalue"]) == (stored["pbo"], stored["spa_pvalue"])


def test_the_best_policys_daily_matrix_and_intervals_equal_a_policy_run_of_it(
    optimized, sample_db, runs_dir, dagster_instance
):
    spec, rd, _ = optimized
    frontier = rd.read_artifact("frontier").frame.filter(pl.col("caller_name").is_null() & (pl.col("rank") == 1))
    best = frontier.row(0, named=True)
    policy = spec_of(
        sample_db, "policy", policy_id="best", policy=best["policy_params"], portfolio=False, features=False
    )
    create_run(policy, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    ran = materialize_month(policy, "2024-01", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert ran.status == "completed", ran.error
    policy_dir = RunDirectory(runs_dir, "2024-01", policy.run_id)
    trades = policy_dir.read_artifact("trades").frame.with_columns(pl.lit(best["policy_id"]).alias("policy_id"))
    expected = daily_matrix_of_trades(trades, run_id=spec.run_id)
    stored = rd.read_artifact("policy_daily").frame.filter(pl.col("policy_id") == best["policy_id"])
    assert stored.select("run_id", "policy_id", "day", "trades").equals(expected.drop("mean_return_bps"))
    assert stored.get_column("mean_return_bps").to_list() == pytest.approx(
        expected.get_column("mean_return_bps").to_list(), rel=1e-12
    )
    # the same trades in the same order: the same resamples, the same intervals
    summary = policy_dir.read_artifact("summary").frame.row(0, named=True)
    for column in ("median_return_bps", "avg_return_bps"):
        for end in ("ci_low", "ci_high"):
            assert best[f"{column}_{end}"] == summary[f"{column}_{end}"]


def test_a_month_read_in_parts_writes_the_same_confidence_artifacts(optimized, runs_dir, dagster_instance):
    spec, rd, _ = optimized
    before = {a: rd.read_artifact(a).frame for a in ("frontier", "policy_daily", "overfitting")}
    job = build_defs(Settings(ProjectPaths(runs_dir=runs_dir))).resolve_job_def("optimization_job")
    result = job.execute_in_process(
        instance=dagster_instance,
        partition_key=month_run_key(spec, "2024-01"),
        run_config={"resources": {"candle_store": {"config": {"max_chunk_candles": 15_000}}}},
    )
    assert result.success and (rd.path / "logs/stdout.txt").read_text().count("candles for") > 3
    # the means of a month read in parts add its trades in another order (the last bits may differ)
    means = ["avg_return_bps", "avg_tail_capture"]
    frontier = rd.read_artifact("frontier").frame
    assert frontier.drop(means).equals(before["frontier"].drop(means))  # ranks and intervals included
    for column in means:
        assert frontier.get_column(column).to_list() == pytest.approx(
            before["frontier"].get_column(column).to_list(), rel=1e-12, nan_ok=True
        )
    assert before["overfitting"].equals(rd.read_artifact("overfitting").frame)
    after = rd.read_artifact("policy_daily").frame
    assert after.drop("mean_return_bps").equals(before["policy_daily"].drop("mean_return_bps"))
    assert after.get_column("mean_return_bps").to_list() == pytest.approx(
        before["policy_daily"].get_column("mean_return_bps").to_list(), rel=1e-12
    )


def test_a_spec_written_before_confidence_is_complete_with_its_frontier_alone(sample_db):
    spec = spec_of(sample_db, "optimization")
    assert {"policy_daily", "overfitting"} <= set(required_artifacts("optimization", spec.to_dict()))
    old = {k: v for k, v in spec.to_dict().items() if k != "confidence"}
    assert not RunSpec.from_dict(old).confidence
    assert required_artifacts("optimization", old) == ("alerts", "paths", "frontier")
    with pytest.raises(Exception, match="confidence: only optimization runs"):
        RunSpec.from_dict({**spec_of(sample_db, "path-only").to_dict(), "confidence": True})


@pytest.mark.parametrize(("pbo", "passed"), [(0.62, False), (0.5, True), (0.0, True), (None, True)])
def test_a_pbo_above_one_half_is_a_warning_not_a_failure(pbo, passed):
    (check, _) = ARTIFACT_CHECKS["overfitting"]
    assert (check.name, check.blocking) == ("pbo_at_most_half", False)
    row = {"pbo": pbo, "cscv_splits": 70, "n_policies": 96, "n_days": 31, "spa_pvalue": 0.31}
    subject = type("Subject", (), {"frame": pl.DataFrame([row])})()
    result = check.evaluate(subject)  # type: ignore[arg-type]
    assert result.passed is passed and result.severity == AssetCheckSeverity.WARN


@pytest.mark.slow
def test_backtest_optimize_end_to_end_writes_both_and_says_it(workdir):
    (workdir / "grid.json").write_text(json.dumps(GRID))
    out = run_cli(
        [
            "backtest",
            "optimize",
            "--calls-from-duckdb",
            "data/alerts.duckdb",
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-31",
            "--sweep",
            "@grid.json",
        ],
        workdir,
        env_extra={"QUANTLAB_WARM_SERVER": "off"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (run_dir,) = (workdir / "runs" / "2024-01").glob("run_id=*")
    row = pl.read_parquet(run_dir / "results/overfitting.parquet").row(0, named=True)
    assert pl.read_parquet(run_dir / "results/policy_daily.parquet").height > 0
    closing = " ".join(out.stdout.split())  # the table wraps the sentence
    assert f"PBO {row['pbo']:.2f}: the in-sample winner" in closing and "against holding to the horizon" in closing
