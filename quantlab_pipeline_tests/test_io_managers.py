"""The IO managers on their own: throwaway assets materialized with `dagster.materialize`.

What the pipeline tests reach only through whole backtests is pinned here directly: where an
artifact lands, what its manifest records, what a downstream asset is handed, and the spec's
immutability.
"""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest

from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.core.spec_builder import SpecRequest
from quantlab_pipeline.orchestration.io_managers import RunDirectoryIOManager, RunSpecIOManager
from quantlab_pipeline.orchestration.partitions import (
    RUN_MONTH_PARTITIONS_NAME,
    month_run_key,
    run_month_keys,
    run_month_partitions,
)
from quantlab_pipeline.orchestration.resources import RunStoreResource
from quantlab_pipeline.orchestration.steps import ArtifactOutput
from quantlab_pipeline.storage.artifact_files import LoadedArtifact
from quantlab_pipeline.storage.run_creation import create_run_spec
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import write_spec

ALERTS = pl.DataFrame(
    {
        "call_id": ["c1", "c2"],
        "mint": ["M1", "M2"],
        "caller_name": ["a", "b"],
        "chain": ["solana", "solana"],
        "alert_ts_ms": [1_704_067_200_000, 1_704_153_600_000],
        "created_at": ["2024-01-01T00:00:00.000Z", "2024-01-02T00:00:00.000Z"],
    }
)


@pytest.fixture
def spec(tmp_path) -> RunSpec:
    request = SpecRequest(  # no features: the throwaway assets stand for alerts and paths only
        run_type="path-only", alerts="alerts.duckdb", window_from="2024-01-01", window_to="2024-01-31", features=False
    )
    return create_run_spec(request, base_dir=str(tmp_path))


@pytest.fixture
def resources(tmp_path):
    store = RunStoreResource(runs_dir=str(tmp_path / "runs"))
    return {
        "run_store": store,
        "run_io_manager": RunDirectoryIOManager(run_store=store),
        "spec_io_manager": RunSpecIOManager(run_store=store),
    }


@pytest.fixture
def instance(spec):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(RUN_MONTH_PARTITIONS_NAME, run_month_keys(spec))
        yield instance


@dg.asset(name="alerts", partitions_def=run_month_partitions, io_manager_key="run_io_manager")
def throwaway_alerts() -> ArtifactOutput:
    return ArtifactOutput(frame=ALERTS, phase="inputs", inputs={}, errors=[], headline={"source_rows": 2})


seen: dict[str, LoadedArtifact] = {}


@dg.asset(name="paths", partitions_def=run_month_partitions, io_manager_key="run_io_manager")
def throwaway_paths(alerts: LoadedArtifact) -> ArtifactOutput:
    seen["alerts"] = alerts
    frame = alerts.frame.select("call_id", "mint").with_columns(pl.lit(1.5).alias("peak_multiple"))
    return ArtifactOutput(frame=frame, phase="truth", inputs={"alerts": alerts.sha256}, errors=[])


def test_artifacts_land_in_the_layout_and_complete_the_run(tmp_path, spec, resources, instance):
    write_spec(tmp_path / "runs", spec)
    key = month_run_key(spec, "2024-01")
    result = dg.materialize(
        [throwaway_alerts, throwaway_paths], partition_key=key, resources=resources, instance=instance
    )
    assert result.success

    rd = RunDirectory(tmp_path / "runs", "2024-01", spec.run_id)
    assert (rd.path / "inputs/alerts.parquet").is_file() and (rd.path / "truth/paths.parquet").is_file()
    manifest = rd.manifest()
    assert manifest["status"] == "completed" and (rd.path / "_SUCCESS").is_file()
    assert manifest["dataset"]["calls_count"] == 2
    assert manifest["artifacts"]["paths"]["inputs"] == {"alerts": manifest["artifacts"]["alerts"]["sha256"]}
    assert manifest["provenance"]["dagster_runs"]["paths"] == result.run_id

    # The downstream asset was handed the very bytes on disk: frame and sha256 agree with them.
    loaded = seen["alerts"]
    assert loaded.sha256 == manifest["artifacts"]["alerts"]["sha256"]
    assert loaded.frame.equals(ALERTS)

    [event] = result.asset_materializations_for_node("paths")
    meta = {k: v.value for k, v in event.metadata.items()}
    assert meta["dagster/row_count"] == 2
    assert meta["path"] == str((rd.path / "truth/paths.parquet").resolve())
    assert [c.name for c in meta["dagster/column_schema"].columns] == ["call_id", "mint", "peak_multiple"]


def test_a_run_store_configured_at_launch_reaches_the_io_managers(tmp_path, spec, instance):
    """The CLI's `--runs-dir` arrives as run config; the IO managers must write there too."""
    elsewhere = tmp_path / "elsewhere"
    write_spec(elsewhere, spec)
    store = RunStoreResource.configure_at_launch(runs_dir=str(tmp_path / "runs"))
    defs = dg.Definitions(
        assets=[throwaway_alerts],
        jobs=[dg.define_asset_job("j", [throwaway_alerts], partitions_def=run_month_partitions)],
        resources={"run_store": store, "run_io_manager": RunDirectoryIOManager(run_store=store)},
    )
    result = defs.resolve_job_def("j").execute_in_process(
        instance=instance,
        partition_key=month_run_key(spec, "2024-01"),
        run_config={"resources": {"run_store": {"config": {"runs_dir": str(elsewhere)}}}},
    )
    assert result.success
    assert (elsewhere / "2024-01" / f"run_id={spec.run_id}" / "inputs/alerts.parquet").is_file()
    assert not (tmp_path / "runs" / "2024-01").exists()


def test_the_spec_io_manager_stores_once_and_refuses_a_change(tmp_path, spec, resources, instance):
    changed = RunSpec.from_dict({**spec.to_dict(), "horizon": "1d"})

    def spec_asset(value: RunSpec):
        @dg.asset(
            name="run_spec",
            partitions_def=dg.DynamicPartitionsDefinition(name=RUN_MONTH_PARTITIONS_NAME),
            io_manager_key="spec_io_manager",
        )
        def run_spec() -> RunSpec:
            return value

        return run_spec

    assert dg.materialize(
        [spec_asset(spec)], partition_key=month_run_key(spec, "2024-01"), resources=resources, instance=instance
    ).success
    stored = tmp_path / "runs" / "_specs" / f"{spec.run_id}.json"
    assert json.loads(stored.read_text())["run_id"] == spec.run_id
    before = stored.read_bytes()
    again = dg.materialize(
        [spec_asset(changed)],
        partition_key=month_run_key(spec, "2024-01"),
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    assert not again.success
    error = again.get_step_failure_events()[0].step_failure_data.error
    assert error.cause is not None and "specs are immutable" in error.cause.message
    assert stored.read_bytes() == before
