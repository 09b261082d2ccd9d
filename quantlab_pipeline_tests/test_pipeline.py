"""The Dagster layer against a real instance: partitions, assets, IO managers, completion."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetCheckKey, AssetCheckSeverity, AssetKey, DagsterEventType, EventRecordsFilter

from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.spec_builder import SpecRequest
from quantlab_pipeline.orchestration.defs import build_defs
from quantlab_pipeline.orchestration.launch import create_run
from quantlab_pipeline.orchestration.month_runs import materialize_month
from quantlab_pipeline.orchestration.partitions import RUN_MONTH_PARTITIONS_NAME, month_run_key, run_month_keys
from quantlab_pipeline.orchestration.settings import Settings
from quantlab_pipeline.storage.layout import report_path
from quantlab_pipeline.storage.paths import ProjectPaths
from quantlab_pipeline.storage.run_creation import create_run_spec
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import read_spec
from quantlab_pipeline_tests.builders import SEED_PATHS_COLUMNS


def new_spec(sample_db, run_type="path-only", **extra):
    request = SpecRequest(
        run_type=run_type,
        alerts=str(sample_db),
        window_from="2024-01-05",
        window_to="2024-02-10",
        interval="5m",
        **extra,
    )
    return create_run_spec(request)


@pytest.fixture
def defs(runs_dir):
    """The project's definitions with the test's runs directory (what the CLI builds from its flags)."""
    return build_defs(Settings(ProjectPaths(runs_dir=runs_dir)))


def ms(day: str) -> int:
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp() * 1000)


def test_path_only_month_completes(sample_db, runs_dir, dagster_instance):
    spec = new_spec(sample_db)
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert dagster_instance.get_dynamic_partitions(RUN_MONTH_PARTITIONS_NAME) == run_month_keys(spec)

    result = materialize_month(spec, "2024-01", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert result.status == "completed", result.error
    rd = RunDirectory(runs_dir, "2024-01", spec.run_id)
    manifest = rd.manifest()
    assert manifest["status"] == "completed"
    assert manifest["dataset"]["from"] == "2024-01-05" and manifest["dataset"]["to"] == "2024-01-31"
    assert set(manifest["provenance"]["dagster_runs"]) >= {"alerts", "paths"}
    assert (rd.path / "_SUCCESS").stat().st_mtime >= (rd.path / "run.json").stat().st_mtime
    assert "wrote truth/paths.parquet" in (rd.path / "logs/stdout.txt").read_text()

    alerts = pl.read_parquet(rd.path / "inputs/alerts.parquet")
    assert alerts.columns == ["call_id", "mint", "caller_name", "chain", "alert_ts_ms", "created_at"]
    assert alerts.height == manifest["dataset"]["calls_count"] > 0
    ts = alerts.get_column("alert_ts_ms")
    assert ts.min() >= ms("2024-01-05") and ts.max() < ms("2024-02-01")

    paths = pl.read_parquet(rd.path / "truth/paths.parquet")
    assert paths.columns[: len(SEED_PATHS_COLUMNS)] == SEED_PATHS_COLUMNS
    assert paths.columns[len(SEED_PATHS_COLUMNS) :] == ["entry_ts_ms", "t_peak_ms", "n_candles"]
    assert set(paths.get_column("call_id")) <= set(alerts.get_column("call_id"))

    # The sample data has alerts without candles: they are excluded and recorded.
    errors = pl.read_parquet(rd.path / "errors/errors.parquet")
    assert "no_entry" in errors.get_column("reason").to_list()

    event = dagster_instance.get_latest_materialization_event(AssetKey("paths"))
    mat = event.asset_materialization
    assert mat.partition == month_run_key(spec, "2024-01")
    assert mat.metadata["dagster/row_count"].value == paths.height
    # Readable: a rate as a percentage with one decimal, a multiple with two.
    assert mat.metadata["hit_2x_pct"].value == round(100 * paths.get_column("hit_2x").mean(), 1)
    assert mat.metadata["median_peak_multiple"].value == round(paths.get_column("peak_multiple").median(), 2)
    columns = {c.name: c.description for c in mat.metadata["dagster/column_schema"].value.columns}
    assert (
        columns["p0"].startswith("Entry price") and columns["hit_2x"] == "Whether a window candle's high reached 2x p0."
    )
    assert "run_status" not in mat.metadata


def test_policy_month_completes_with_four_artifacts(sample_db, runs_dir, dagster_instance):
    spec = new_spec(  # without its portfolio, a month completes on its own (docs/portfolio.md)
        sample_db,
        "policy",
        policy_id="fixed-stop-5pct",
        policy={"kind": "fixed_stop", "stop_loss_bps": 500},
        portfolio=False,
    )
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    result = materialize_month(spec, "2024-02", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert result.status == "completed", result.error
    rd = RunDirectory(runs_dir, "2024-02", spec.run_id)
    assert set(rd.manifest()["artifacts"]) >= {"alerts", "paths", "trades", "summary"}
    paths = pl.read_parquet(rd.path / "truth/paths.parquet")
    trades = pl.read_parquet(rd.path / "policy/trades.parquet")
    summary = pl.read_parquet(rd.path / "results/summary.parquet")
    assert trades.height == paths.height
    row = summary.row(0, named=True)
    source_rows = int(RunDirectory(runs_dir, "2024-02", spec.run_id).read_artifact("alerts").metadata["source_rows"])
    assert row["calls_processed"] == paths.height
    assert row["calls_processed"] + row["calls_excluded"] == source_rows
    assert row["trades_count"] == trades.height
    assert row["median_return_bps"] == pytest.approx(trades.get_column("realized_return_bps").median())
    assert_report_linked(dagster_instance, "summary", runs_dir, spec.run_id)


def assert_report_linked(instance, asset: str, runs_dir, run_id: str) -> None:
    """The materialization names the run's HTML report and its command, and carries no picture (docs/reports.md)."""
    metadata = instance.get_latest_materialization_event(AssetKey(asset)).asset_materialization.metadata
    assert metadata["report"].value == str(report_path(runs_dir, run_id).resolve())
    assert metadata["report_command"].value == f"quantlab report {run_id} --runs-dir {Path(runs_dir).resolve()}"
    text = repr({k: v.value for k, v in metadata.items()})
    assert "data:image" not in text and "<svg" not in text


def test_month_outside_the_window_fails_and_writes_nothing(defs, sample_db, runs_dir, dagster_instance):
    spec = new_spec(sample_db)
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    with pytest.raises(SpecError, match="outside run"):  # no partition: refused before any Dagster run
        materialize_month(spec, "2024-03", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    # A key added by hand for a month outside the window: the step refuses before any write.
    key = month_run_key(spec, "2024-03")
    dagster_instance.add_dynamic_partitions(RUN_MONTH_PARTITIONS_NAME, [key])
    result = defs.resolve_job_def("path_only_job").execute_in_process(
        instance=dagster_instance, partition_key=key, raise_on_error=False
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "outside run" in failure.message and "nothing was written" in failure.message
    assert not (runs_dir / "2024-03").exists()


def test_assets_materialized_in_separate_runs_complete_the_run(defs, sample_db, runs_dir, dagster_instance):
    spec = new_spec(sample_db)
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    job = defs.resolve_job_def("path_only_job")
    key = month_run_key(spec, "2024-01")
    rd = RunDirectory(runs_dir, "2024-01", spec.run_id)

    job.execute_in_process(instance=dagster_instance, partition_key=key, asset_selection=[AssetKey("alerts")])
    assert rd.manifest()["status"] == "running" and not (rd.path / "_SUCCESS").exists()
    job.execute_in_process(instance=dagster_instance, partition_key=key, asset_selection=[AssetKey("paths")])
    assert not (rd.path / "_SUCCESS").exists()  # a path-only month also needs its features
    job.execute_in_process(instance=dagster_instance, partition_key=key, asset_selection=[AssetKey("features")])
    assert (rd.path / "_SUCCESS").exists()
    first = rd.manifest()["artifacts"]["paths"]["sha256"]

    # Re-materializing alerts with identical input keeps paths consistent: complete again.
    job.execute_in_process(instance=dagster_instance, partition_key=key, asset_selection=[AssetKey("alerts")])
    assert (rd.path / "_SUCCESS").exists()
    assert rd.manifest()["artifacts"]["paths"]["sha256"] == first


def test_a_failed_step_is_recorded_and_recovered(defs, sample_db, runs_dir, dagster_instance, tmp_path):
    candles = tmp_path / "candles.duckdb"
    shutil.copy(sample_db, candles)
    spec = new_spec(sample_db, candles=str(candles))
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    job = defs.resolve_job_def("path_only_job")
    key = month_run_key(spec, "2024-01")
    rd = RunDirectory(runs_dir, "2024-01", spec.run_id)
    job.execute_in_process(instance=dagster_instance, partition_key=key, asset_selection=[AssetKey("alerts")])

    candles.rename(tmp_path / "moved.duckdb")
    result = job.execute_in_process(
        instance=dagster_instance, partition_key=key, asset_selection=[AssetKey("paths")], raise_on_error=False
    )
    assert not result.success
    manifest = rd.manifest()
    assert manifest["status"] == "failed" and manifest["error"]["phase"] == "truth"
    assert str(candles) in manifest["error"]["message"]
    errors = pl.read_parquet(rd.path / "errors/errors.parquet").filter(pl.col("level") == "error")
    assert errors.get_column("reason").to_list() == ["failure"]
    assert (rd.path / "logs/stderr.txt").read_text()
    assert not (rd.path / "_SUCCESS").exists()

    (tmp_path / "moved.duckdb").rename(candles)
    steps = [AssetKey("paths"), AssetKey("features")]
    job.execute_in_process(instance=dagster_instance, partition_key=key, asset_selection=steps)
    manifest = rd.manifest()
    assert manifest["status"] == "completed" and "error" not in manifest
    assert pl.read_parquet(rd.path / "errors/errors.parquet").filter(pl.col("level") == "error").height == 0


def test_a_bad_source_fails_before_any_run_directory(sample_db, runs_dir, dagster_instance, tmp_path):
    spec = new_spec(sample_db, candles=str(tmp_path / "missing.duckdb"))
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    result = materialize_month(spec, "2024-01", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert result.status != "completed"
    assert "missing.duckdb" in result.error
    assert not (runs_dir / "2024-01").exists()


def test_run_spec_is_immutable_through_dagster(defs, sample_db, runs_dir, dagster_instance):
    spec = new_spec(sample_db)
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    job = defs.resolve_job_def("run_spec_job")
    same = job.execute_in_process(instance=dagster_instance, partition_key=month_run_key(spec, "2024-01"))
    assert same.success
    changed = job.execute_in_process(
        instance=dagster_instance,
        partition_key=month_run_key(spec, "2024-01"),
        run_config={"ops": {"run_spec": {"config": {"horizon": "1d"}}}},
        raise_on_error=False,
    )
    assert not changed.success


def test_the_launchpad_form_can_leave_the_features_out(defs, sample_db, runs_dir, dagster_instance):
    from quantlab_pipeline.orchestration.assets import RunSpecConfig

    assert RunSpecConfig().is_empty() and RunSpecConfig(features=True).is_empty()  # the defaults
    assert not RunSpecConfig(features=False).is_empty()
    form = {"run_type": "path_only", "alerts": str(sample_db), "window_from": "2024-01-01", "window_to": "2024-01-31"}
    run_id = "3e1f0c2a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
    key = f"2024-01.path-only.{run_id}"  # a run-month key added by hand in the UI
    dagster_instance.add_dynamic_partitions(RUN_MONTH_PARTITIONS_NAME, [key])
    result = defs.resolve_job_def("run_spec_job").execute_in_process(
        instance=dagster_instance,
        partition_key=key,
        run_config={"ops": {"run_spec": {"config": {**form, "features": False}}}},
    )
    assert result.success
    assert read_spec(runs_dir, run_id).features is False


def test_a_policy_partition_reads_its_candles_once(sample_db, runs_dir, dagster_instance, monkeypatch):
    from quantlab_pipeline.orchestration import resources

    calls = []
    real = resources.read_candles

    def counting(*args, **kwargs):
        calls.append(kwargs["interval"])
        return real(*args, **kwargs)

    monkeypatch.setattr(resources, "read_candles", counting)
    spec = new_spec(sample_db, "policy", policy_id="p", policy={"kind": "fixed_stop", "stop_loss_bps": 500})
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert (
        materialize_month(spec, "2024-01", paths=ProjectPaths.of(runs_dir), instance=dagster_instance).status
        == "completed"
    )
    assert calls == ["5m"]  # paths and trades shared one read


def test_optimization_month_completes_with_a_ranked_frontier(sample_db, runs_dir, dagster_instance):
    grid = {
        "templates": [{"kind": "fixed_stop", "stop_loss_bps": [300, 1000], "take_profit_bps": [5000, 20000]}],
        "per_caller": True,
    }
    spec = new_spec(sample_db, "optimization", sweep=grid)
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    result = materialize_month(spec, "2024-01", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert result.status == "completed", result.error
    rd = RunDirectory(runs_dir, "2024-01", spec.run_id)
    assert set(rd.manifest()["artifacts"]) >= {"alerts", "paths", "frontier"}
    frontier = pl.read_parquet(rd.path / "results/frontier.parquet")
    overall = frontier.filter(pl.col("caller_name").is_null())
    assert overall.height == 4  # 2 stops × 2 targets
    assert sorted(overall.get_column("rank").to_list()) == [1, 2, 3, 4]
    callers = pl.read_parquet(rd.path / "truth/paths.parquet").get_column("caller_name").n_unique()
    assert frontier.height == 4 * (1 + callers)
    assert result.headline["frontier"]["policies"] == 4
    assert_report_linked(dagster_instance, "frontier", runs_dir, spec.run_id)


def test_a_month_streamed_in_parts_writes_the_same_artifacts(defs, sample_db, runs_dir, dagster_instance):
    spec = new_spec(
        sample_db, "policy", policy_id="p", policy={"kind": "trailing_stop", "activation_bps": 2000, "trail_bps": 1500}
    )
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert (
        materialize_month(spec, "2024-01", paths=ProjectPaths.of(runs_dir), instance=dagster_instance).status
        == "completed"
    )
    rd = RunDirectory(runs_dir, "2024-01", spec.run_id)
    before = {k: v["sha256"] for k, v in rd.manifest()["artifacts"].items() if k != "errors"}
    errors_before = pl.read_parquet(rd.path / "errors/errors.parquet").drop("ts").sort(pl.all())

    # ~10 alerts' worth of candles per part (1,440 each): the month is read in several parts.
    job = defs.resolve_job_def("policy_job")
    result = job.execute_in_process(
        instance=dagster_instance,
        partition_key=month_run_key(spec, "2024-01"),
        run_config={"resources": {"candle_store": {"config": {"max_chunk_candles": 15_000}}}},
    )
    assert result.success
    assert "read " in (rd.path / "logs/stdout.txt").read_text()
    assert (rd.path / "logs/stdout.txt").read_text().count("candles for") > 3
    after = {k: v["sha256"] for k, v in rd.manifest()["artifacts"].items() if k != "errors"}
    assert after == before  # byte-identical artifacts, so the run is complete again
    # The same exclusions and data-quality rows (only their write time differs).
    assert pl.read_parquet(rd.path / "errors/errors.parquet").drop("ts").sort(pl.all()).equals(errors_before)
    assert (rd.path / "_SUCCESS").exists()


def test_creating_a_run_records_the_spec_materialization(sample_db, runs_dir, dagster_instance):
    spec = new_spec(sample_db)
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    records = dagster_instance.fetch_materializations(AssetKey("run_spec"), limit=10).records
    assert sorted(r.partition_key for r in records) == run_month_keys(spec)  # one per month of the window
    mat = records[0].asset_materialization
    assert mat.metadata["run_type"].value == "path-only"
    assert mat.metadata["spec"].value["run_id"] == spec.run_id
    assert (runs_dir / "_specs" / f"{spec.run_id}.json").exists()


def test_dagster_home_defaults_to_the_project_folder(tmp_path, monkeypatch):
    from quantlab_pipeline.core.errors import QuantlabError
    from quantlab_pipeline.orchestration import launch

    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (project / "workspace.yaml").write_text("load_from: []\n")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(project / "sub")
    assert launch.ensure_dagster_home() == str(project)
    assert launch.os.environ["DAGSTER_HOME"] == str(project)

    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.setattr(launch, "project_root", lambda: None)
    with pytest.raises(QuantlabError, match="DAGSTER_HOME is unset"):
        launch.ensure_dagster_home()


POLICY_CHECKS = {
    *((a, "manifest_consistent") for a in ("alerts", "paths", "trades", "summary", "equity", "positions", "portfolio")),
    ("alerts", "call_id_unique"),
    ("paths", "no_look_ahead"),
    ("paths", "excluded_share"),
    ("trades", "trades_match_paths"),
    ("summary", "summary_matches_trades"),
    ("portfolio", "curve_ends_at_equity_end"),
    ("portfolio", "cash_never_negative"),
    ("portfolio", "calls_add_up"),
}


def test_every_check_of_a_policy_month_runs_and_passes(defs, sample_db, runs_dir, dagster_instance):
    spec = new_spec(sample_db, "policy", policy_id="p", policy={"kind": "fixed_stop", "stop_loss_bps": 500})
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    result = defs.resolve_job_def("policy_job").execute_in_process(
        instance=dagster_instance, partition_key=month_run_key(spec, "2024-01")
    )
    evaluations = {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == POLICY_CHECKS
    assert all(e.passed for e in evaluations.values()), {k: e.metadata for k, e in evaluations.items() if not e.passed}
    assert evaluations[("paths", "no_look_ahead")].metadata["p0_not_the_entry_open"].value == 0
    # Plotted by the UI across every run and month: only what each check measures is numeric.
    numeric = {
        (artifact, check, key)
        for (artifact, check), e in evaluations.items()
        for key, value in e.metadata.items()
        if isinstance(value.value, (int, float)) and not isinstance(value.value, bool)
    }
    assert {(check, key) for _, check, key in numeric} == {
        ("call_id_unique", "repeated_call_ids"),
        ("no_look_ahead", "entries_outside_the_entry_window"),
        ("no_look_ahead", "p0_not_the_entry_open"),
        ("excluded_share", "excluded_share_pct"),
        ("excluded_share", "threshold_pct"),
        ("trades_match_paths", "paths_without_trade"),
        ("trades_match_paths", "trades_without_path"),
        ("trades_match_paths", "repeated_trades"),
        ("cash_never_negative", "points_with_negative_cash"),
        ("calls_add_up", "calls_unaccounted"),
    }
    assert evaluations[("portfolio", "calls_add_up")].metadata["calls_unaccounted"].value == 0


def _steps_started(result) -> list[str]:
    return [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]


def test_a_policy_month_runs_one_step_per_artifact_and_evaluates_every_check_in_it(
    defs, sample_db, runs_dir, dagster_instance
):
    """Checks are evaluated in their asset's step: 6 steps (the portfolio's writes three assets),
    15 evaluations. A warning (here
    `excluded_share` with no exclusion allowed) is recorded, shown and does not stop the month."""
    spec = new_spec(sample_db, "policy", policy_id="p", policy={"kind": "fixed_stop", "stop_loss_bps": 500})
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    key = month_run_key(spec, "2024-01")
    result = defs.resolve_job_def("policy_job").execute_in_process(
        instance=dagster_instance,
        partition_key=key,
        run_config={"ops": {"paths": {"config": {"max_excluded_share": 0.0}}}},
    )
    assert result.success
    assert sorted(_steps_started(result)) == ["alerts", "features", "paths", "portfolio", "summary", "trades"]
    assert _steps_started(result)[-1] == "portfolio"  # may wait for the month before: runs last
    evaluations = {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == POLICY_CHECKS
    warned = evaluations.pop(("paths", "excluded_share"))
    assert not warned.passed and warned.severity == AssetCheckSeverity.WARN and not warned.blocking
    assert warned.metadata["threshold_pct"].value == 0.0 and warned.metadata["excluded_share_pct"].value > 0
    assert all(e.passed for e in evaluations.values()), {k: e.metadata for k, e in evaluations.items() if not e.passed}
    assert evaluations[("alerts", "call_id_unique")].blocking
    assert not evaluations[("summary", "summary_matches_trades")].blocking
    # Each evaluation belongs to the materialization its step just recorded, the partition's (the
    # UI's Checks tab); the checks themselves are not partitioned (docs/dagster.md "Checks").
    assert all(e.partition is None for e in result.get_asset_check_evaluations())
    for (artifact, name), evaluation in evaluations.items():
        [latest] = dagster_instance.fetch_materializations(AssetKey(artifact), limit=1).records
        assert evaluation.target_materialization_data.storage_id == latest.storage_id, (artifact, name)
        assert latest.partition_key == key, (artifact, name)

    rd = RunDirectory(runs_dir, "2024-01", spec.run_id)
    assert rd.manifest()["status"] == "completed"
    log = (rd.path / "logs/stdout.txt").read_text()
    assert "[paths] checks: no_look_ahead passed, excluded_share failed (warning)" in log
    assert "[trades] checks: trades_match_paths passed" in log


def test_checks_run_alone_read_the_stored_artifact_and_write_nothing(defs, sample_db, runs_dir, dagster_instance):
    """The UI's "Execute checks": the asset's step runs for its checks only."""
    spec = new_spec(sample_db, "policy", policy_id="p", policy={"kind": "fixed_stop", "stop_loss_bps": 500})
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    key = month_run_key(spec, "2024-01")
    assert defs.resolve_job_def("policy_job").execute_in_process(instance=dagster_instance, partition_key=key).success
    rd = RunDirectory(runs_dir, "2024-01", spec.run_id)
    before = {p: p.stat().st_mtime_ns for p in rd.path.rglob("*")}
    paths_checks = {
        AssetCheckKey(AssetKey("paths"), n) for n in ("no_look_ahead", "excluded_share", "manifest_consistent")
    }
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(), asset_check_selection=paths_checks
    )
    # A check-only subset has no partitioned asset to take the partition from: the run's tag gives it.
    result = job.execute_in_process(instance=dagster_instance, tags={"dagster/partition": key})
    assert result.success
    assert _steps_started(result) == ["paths"]
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {
        "no_look_ahead": True,
        "excluded_share": True,
        "manifest_consistent": True,
    }
    assert not result.get_asset_materialization_events()
    assert {p: p.stat().st_mtime_ns for p in rd.path.rglob("*")} == before


def test_a_look_ahead_blocks_the_trades(defs, sample_db, runs_dir, dagster_instance, monkeypatch):
    """Paths whose p0 is not the entry open fail the blocking check: no trades are simulated."""
    from quantlab_pipeline.orchestration import assets

    real = assets.compute_paths

    def peeking(*args, **kwargs):
        result = real(*args, **kwargs)
        return dataclasses.replace(result, paths=result.paths.with_columns(pl.col("p0") * 1.01))

    monkeypatch.setattr(assets, "compute_paths", peeking)
    spec = new_spec(sample_db, "policy", policy_id="p", policy={"kind": "fixed_stop", "stop_loss_bps": 500})
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    result = defs.resolve_job_def("policy_job").execute_in_process(
        instance=dagster_instance, partition_key=month_run_key(spec, "2024-01"), raise_on_error=False
    )
    assert not result.success
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "no_look_ahead"]
    assert not check.passed and check.metadata["p0_not_the_entry_open"].value > 0
    # The check fails the paths step (its artifact written, its other checks evaluated): nothing
    # downstream of paths runs.
    assert sorted(_steps_started(result)) == ["alerts", "paths"]
    assert [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"] == ["paths"]
    assert {(e.asset_key.path[-1], e.check_name) for e in result.get_asset_check_evaluations()} == {
        ("alerts", "call_id_unique"),
        ("alerts", "manifest_consistent"),
        ("paths", "no_look_ahead"),
        ("paths", "excluded_share"),
        ("paths", "manifest_consistent"),
    }
    rd = RunDirectory(runs_dir, "2024-01", spec.run_id)
    assert not (rd.path / "policy/trades.parquet").exists() and not (rd.path / "_SUCCESS").exists()


def test_a_month_run_is_tagged_with_what_it_is(sample_db, runs_dir, dagster_instance):
    spec = new_spec(sample_db, "policy", policy_id="p", policy={"kind": "fixed_stop", "stop_loss_bps": 500})
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    result = materialize_month(spec, "2024-01", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    tags = dagster_instance.get_run_by_id(result.dagster_run_id).tags
    assert {k: tags[k] for k in tags if k.startswith("quantlab/")} == {
        "quantlab/run_id": spec.run_id,
        "quantlab/run_type": "policy",
        "quantlab/policy_id": "p",
        "quantlab/month": "2024-01",
    }
    assert tags["dagster/partition"] == month_run_key(spec, "2024-01") == f"2024-01.policy.p.{spec.run_id}"


def test_a_month_run_plans_only_the_artifacts_its_spec_asks_for(sample_db, runs_dir, dagster_instance):
    """An asset planned and never materialized is a "failed or in progress" partition Dagster
    looks up on every status rebuild: a run without features must not plan `features`."""
    spec = new_spec(sample_db, features=False)
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    result = materialize_month(spec, "2024-01", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert result.status == "completed", result.error
    run = dagster_instance.get_run_by_id(result.dagster_run_id)
    assert run.asset_selection == {AssetKey("alerts"), AssetKey("paths")}
    planned = dagster_instance.get_event_records(
        EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION_PLANNED, asset_key=AssetKey("features"))
    )
    assert planned == []
    assert dagster_instance.get_latest_materialization_event(AssetKey("paths")) is not None


def test_a_missing_upstream_is_recorded_against_the_step_that_needed_it(defs, sample_db, runs_dir, dagster_instance):
    spec = new_spec(sample_db, "policy", policy_id="p", policy={"kind": "fixed_stop", "stop_loss_bps": 500})
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    selection = [AssetKey("alerts"), AssetKey("trades"), AssetKey("summary")]  # no paths yet
    result = defs.resolve_job_def("policy_job").execute_in_process(
        instance=dagster_instance,
        partition_key=month_run_key(spec, "2024-01"),
        asset_selection=selection,
        raise_on_error=False,
    )
    assert not result.success
    rd = RunDirectory(runs_dir, "2024-01", spec.run_id)
    manifest = rd.manifest()
    assert manifest["status"] == "failed" and manifest["error"]["phase"] == "policy"
    assert "has not been materialized" in manifest["error"]["message"]
    assert "paths" in (rd.path / "logs/stderr.txt").read_text()


def test_materializing_an_artifact_of_another_run_type_leaves_a_completed_run_alone(
    defs, sample_db, runs_dir, dagster_instance
):
    spec = new_spec(sample_db)
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert (
        materialize_month(spec, "2024-01", paths=ProjectPaths.of(runs_dir), instance=dagster_instance).status
        == "completed"
    )
    rd = RunDirectory(runs_dir, "2024-01", spec.run_id)
    before = (rd.path / "run.json").read_bytes()
    result = defs.resolve_job_def("policy_job").execute_in_process(
        instance=dagster_instance,
        partition_key=month_run_key(spec, "2024-01"),
        asset_selection=[AssetKey("trades")],
        raise_on_error=False,
    )
    assert not result.success
    assert (rd.path / "run.json").read_bytes() == before and (rd.path / "_SUCCESS").exists()
