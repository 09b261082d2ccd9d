"""Walk-forward optimization (docs/research.md "Walk-forward optimization") and the features artifact in
runs: selection on the months before, evaluation on the month, and what completes a run."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from quantlab_pipeline.core.confidence import cscv
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.frontier import FRONTIER_SCHEMA
from quantlab_pipeline.core.spec_builder import SpecRequest
from quantlab_pipeline.core.walkforward import WALKFORWARD_SCHEMA, training_pbo, walk_forward, window_gap
from quantlab_pipeline.orchestration.launch import create_run
from quantlab_pipeline.orchestration.month_runs import materialize_month
from quantlab_pipeline.sources.sample_db import generate_sample_data
from quantlab_pipeline.storage.catalog import query_artifacts, sync_catalog
from quantlab_pipeline.storage.layout import required_artifacts
from quantlab_pipeline.storage.paths import ProjectPaths
from quantlab_pipeline.storage.run_creation import create_run_spec
from quantlab_pipeline.storage.run_dir import RunDirectory

# Six policies, all feasible when they trade: enough for a ranking, fast enough for a test.
GRID = {
    "templates": [{"kind": "fixed_stop", "stop_loss_bps": [1000, 3000, 5000], "take_profit_bps": [5000, None]}],
    "constraints": {"max_stop_out_rate": None, "min_p95_mae_bps": None, "max_avg_time_exposed": None},
}


def frontier_rows(rows: list[tuple]) -> pl.DataFrame:
    """(caller, policy, feasible, score, trades, avg, rank) → frontier rows (other metrics derived)."""
    return pl.DataFrame(
        [
            {
                "run_id": "r",
                "caller_name": caller,
                "policy_id": policy,
                "policy_params": f'{{"p":"{policy}"}}',
                "meets_constraints": feasible,
                "objective_score": score,
                "avg_return_bps": avg,
                "median_return_bps": score,
                "stop_out_rate": 0.1,
                "p95_mae_bps": -1000.0,
                "avg_tail_capture": 0.5,
                "trades_count": trades,
                "pareto": False,
                "rank": rank,
            }
            for caller, policy, feasible, score, trades, avg, rank in rows
        ],
        schema=FRONTIER_SCHEMA,
    )


def test_selection_is_the_feasible_rank_one_and_is_scored_out_of_sample():
    in_sample = frontier_rows(
        [
            (None, "a", True, 50.0, 10, 60.0, 1),
            (None, "b", True, 40.0, 10, 45.0, 2),
            ("bob", "b", False, 90.0, 3, 95.0, 1),  # bob's best is infeasible: nothing selected
            ("bob", "a", False, 10.0, 3, 12.0, 2),
        ]
    )
    out_of_sample = frontier_rows(
        [
            (None, "b", True, 35.0, 12, 30.0, 1),
            (None, "a", False, -20.0, 12, -5.0, 2),
            ("bob", "a", True, 5.0, 4, 6.0, 1),
        ]
    )
    frame = walk_forward(
        in_sample, out_of_sample, run_id="r", month="2024-02", train_months=("2024-01",), objective="median_return_bps"
    )
    assert frame.schema == WALKFORWARD_SCHEMA
    overall, bob = frame.row(0, named=True), frame.row(1, named=True)
    assert (overall["caller_name"], overall["policy_id"], overall["train_months"]) == (None, "a", "2024-01")
    assert (overall["is_objective_score"], overall["oos_objective_score"], overall["score_gap"]) == (50.0, -20.0, 70.0)
    assert (overall["is_trades_count"], overall["oos_trades_count"], overall["oos_meets_constraints"]) == (
        10,
        12,
        False,
    )
    assert bob["caller_name"] == "bob" and bob["policy_id"] is None and bob["score_gap"] is None


def test_the_training_months_pbo_is_cscv_over_their_days_a_shared_day_merged():
    # month 1: days 1-3; month 2: day 3 (an alert of month 1's last minutes entering on it) to 5
    day = [dt.date(2024, 1, d) for d in range(1, 6)]

    def matrix(rows: list[tuple[str, int, int, float]]) -> pl.DataFrame:
        return pl.DataFrame(
            [("r", p, day[d], n, v) for p, d, n, v in rows],
            schema=["run_id", "policy_id", "day", "trades", "mean_return_bps"],
            orient="row",
        )

    first = matrix([("a", 0, 1, 5.0), ("a", 1, 1, 1.0), ("a", 2, 1, 10.0), ("b", 0, 1, 1.0), ("b", 1, 1, 4.0)])
    second = matrix([("a", 2, 3, 2.0), ("a", 3, 1, 0.0), ("b", 2, 4, -1.0), ("b", 3, 1, 6.0), ("b", 4, 2, 2.0)])
    # merged day 3: a (10·1 + 2·3) / 4 = 4, b (0 + -1·4) / 4 = -1 (b did not trade it in month 1)
    values = np.array([[5.0, 1.0, 4.0, 0.0, 0.0], [1.0, 4.0, -1.0, 6.0, 2.0]])
    assert training_pbo([first, second], ["b", "a"], 2) == cscv(values, 2).pbo
    assert training_pbo([first, second], ["a", "b"], 4) == cscv(values, 4).pbo
    assert training_pbo([first, second], ["a", "b"], 6) is None  # 5 days: too few for 6 blocks
    assert training_pbo([first, None], ["a", "b"], 2) is None  # a month written before confidence


def test_window_gap_compares_average_monthly_scores():
    walkforward = pl.concat(
        [
            walk_forward(
                frontier_rows([(None, "a", True, 50.0, 10, 60.0, 1)]),
                frontier_rows([(None, "a", True, s, 12, 0.0, 1), (None, "b", True, h, 12, 0.0, 2)]),
                run_id="r",
                month=month,
                train_months=("x",),
                objective="median_return_bps",
            )
            for month, s, h in (("2024-02", 10.0, 40.0), ("2024-03", 30.0, 20.0))
        ]
    )
    frontiers = pl.concat(
        [
            frontier_rows([(None, "a", True, 10.0, 12, 0.0, 2), (None, "b", True, 40.0, 12, 0.0, 1)]).with_columns(
                month=pl.lit("2024-02")
            ),
            frontier_rows([(None, "a", True, 30.0, 12, 0.0, 1), (None, "b", True, 20.0, 12, 0.0, 2)]).with_columns(
                month=pl.lit("2024-03")
            ),
        ]
    )
    gap = window_gap(walkforward, frontiers)
    assert gap.tested_months == ("2024-02", "2024-03")
    assert (gap.walk_forward_score, gap.walk_forward_trades) == (20.0, 24)
    assert (gap.hindsight_policy_id, gap.hindsight_score, gap.hindsight_trades) == ("b", 30.0, 24)
    assert gap.gap == 10.0


def test_flags_the_run_type_does_not_use_are_refused(sample_db):
    with pytest.raises(SpecError, match=r"features: not used by an? optimization run"):
        create_run_spec(SpecRequest("optimization", str(sample_db), "2024-01-01", "2024-01-31", features=False))
    with pytest.raises(SpecError, match="train_months: not used"):
        create_run_spec(SpecRequest("path-only", str(sample_db), "2024-01-01", "2024-01-31", train_months=1))
    with pytest.raises(SpecError, match=r"walk_forward\.train_months"):
        create_run_spec(
            SpecRequest(
                "optimization", str(sample_db), "2024-01-01", "2024-01-31", sweep={"walk_forward": {"train_months": 0}}
            )
        )


def test_features_complete_path_only_runs_unless_turned_off(sample_db, runs_dir, dagster_instance):
    for features in (True, False):
        spec = create_run_spec(SpecRequest("path-only", str(sample_db), "2024-01-05", "2024-01-31", features=features))
        assert ("features" in required_artifacts("path-only", spec.to_dict())) is features
        create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
        result = materialize_month(spec, "2024-01", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
        assert result.status == "completed", result.error
        rd = RunDirectory(runs_dir, "2024-01", spec.run_id)
        recorded = rd.manifest()["artifacts"]
        assert ("features" in recorded) is features
        assert (rd.path / "features/features.parquet").is_file() is features
        if features:
            frame = rd.read_artifact("features").frame
            alerts = rd.read_artifact("alerts").frame
            assert frame.get_column("call_id").to_list() == alerts.get_column("call_id").to_list()
            assert set(recorded["features"]["inputs"]) == {"alerts", "paths"}
            # the sample tokens trade before their first call: most calls have a day of history
            assert frame.get_column("ret_24h_bps").is_not_null().mean() > 0.5
    catalog = runs_dir.parent / "catalog.duckdb"
    sync_catalog(catalog, runs_dir)
    (registered,) = query_artifacts(catalog, "features", limit=None)
    assert registered["path"].endswith("features/features.parquet") and registered["rows"] == frame.height
    # a spec written before features existed is complete without them
    assert "features" not in required_artifacts("path-only", {"run_type": "path-only"})


@pytest.fixture(scope="module")
def three_months(tmp_path_factory):
    out = tmp_path_factory.mktemp("wf") / "alerts.duckdb"
    generate_sample_data(out, months=["2024-01", "2024-02", "2024-03"], alerts_per_month=40, seed=3)
    return out


@pytest.mark.parametrize("train_months", [1, 2])
def test_walk_forward_selects_on_the_months_before(three_months, runs_dir, dagster_instance, train_months):
    spec = create_run_spec(
        SpecRequest(
            "optimization", str(three_months), "2024-01-01", "2024-03-31", sweep=GRID, train_months=train_months
        )
    )
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    months = ["2024-01", "2024-02", "2024-03"]
    for month in months:
        result = materialize_month(spec, month, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
        assert result.status == "completed", result.error
    dirs = {m: RunDirectory(runs_dir, m, spec.run_id) for m in months}
    frontier = {m: d.read_artifact("frontier").frame.filter(pl.col("caller_name").is_null()) for m, d in dirs.items()}
    walkforward = {m: d.read_artifact("walkforward").frame for m, d in dirs.items()}
    assert walkforward["2024-01"].height == 0
    for i, month in enumerate(months):
        if i < train_months:
            assert walkforward[month].height == 0
            continue
        row = walkforward[month].row(0, named=True)
        train = months[i - train_months : i]
        assert row["train_months"] == ",".join(train)
        tested = frontier[month].filter(pl.col("policy_id") == row["policy_id"]).row(0, named=True)
        assert row["oos_median_return_bps"] == tested["median_return_bps"]
        assert row["oos_trades_count"] == tested["trades_count"]
        if train_months == 1:  # the best feasible policy of the month before, with its metrics
            best = frontier[train[0]].row(0, named=True)
            assert best["meets_constraints"] and row["policy_id"] == best["policy_id"]
            assert row["is_median_return_bps"] == best["median_return_bps"]
        else:  # the union of the training months' trades: counts add, averages are trade-weighted
            parts = [frontier[m].filter(pl.col("policy_id") == row["policy_id"]).row(0, named=True) for m in train]
            trades = sum(p["trades_count"] for p in parts)
            assert row["is_trades_count"] == trades
            weighted = sum(p["avg_return_bps"] * p["trades_count"] for p in parts) / trades
            assert row["is_avg_return_bps"] == pytest.approx(weighted)
        assert row["score_gap"] == pytest.approx(row["is_objective_score"] - row["oos_objective_score"])
        # the training months' PBO, from their stored daily matrices (docs/confidence.md)
        matrices = [dirs[m].read_artifact("policy_daily").frame for m in train]
        grid = frontier[month].get_column("policy_id").to_list()
        assert walkforward[month].get_column("train_pbo").unique().to_list() == [training_pbo(matrices, grid, 8)]
        days = pl.concat(matrices).get_column("day").n_unique()
        assert (row["train_pbo"] is None) == (days < 8)
    assert dirs["2024-03"].manifest()["artifacts"]["walkforward"]["inputs"] == {
        "frontier": dirs["2024-03"].manifest()["artifacts"]["frontier"]["sha256"]
    }


def test_walk_forward_month_before_its_training_months_fails_with_one_line(three_months, runs_dir, dagster_instance):
    spec = create_run_spec(
        SpecRequest("optimization", str(three_months), "2024-01-01", "2024-02-29", sweep=GRID, train_months=1)
    )
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    result = materialize_month(spec, "2024-02", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert result.status == "failed"
    assert "month 2024-01" in result.error and "not completed" in result.error
