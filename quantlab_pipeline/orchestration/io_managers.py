"""IO managers: the only place Dagster touches the run directory layout (via `storage`)."""

# No `from __future__ import annotations`: Dagster must see the resource type of `run_store` to
# accept the launch-configurable run store `build_defs` binds.
from pathlib import Path
from typing import Any

from dagster import (
    ConfigurableIOManager,
    InputContext,
    MetadataValue,
    OutputContext,
)

from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.orchestration.columns import column_schema
from quantlab_pipeline.orchestration.partitions import split_month_run_key
from quantlab_pipeline.orchestration.resources import RunStoreResource
from quantlab_pipeline.orchestration.steps import ArtifactOutput, progress_logger, recording_failures
from quantlab_pipeline.storage.artifact_files import LoadedArtifact
from quantlab_pipeline.storage.layout import ARTIFACT_PHASES, artifact_applies, spec_path
from quantlab_pipeline.storage.specs import write_spec


class RunDirectoryIOManager(ConfigurableIOManager):
    """Writes run-month artifacts into `runs/YYYY-MM/run_id=<uuid>/` and reads them back."""

    run_store: RunStoreResource

    def handle_output(self, context: OutputContext, obj: ArtifactOutput) -> None:
        month, run_id = split_month_run_key(context.partition_key)
        artifact = context.asset_key.path[-1]
        spec = self.run_store.spec(context.partition_key)
        run_dir = self.run_store.directory(month, run_id)
        with recording_failures(run_dir, spec, obj.phase, context.run_id):
            record = run_dir.write_artifact(
                artifact,
                obj.frame,
                spec,
                inputs=obj.inputs,
                dagster_run_id=context.run_id,
                elapsed_ms=obj.compute_ms,
                parquet_metadata=obj.parquet_metadata,
                errors=(obj.phase, obj.errors),
            )
        manifest = run_dir.manifest() or {}
        line = f"wrote {record['path']}: {record['rows']} rows, {record['bytes']} bytes"
        progress_logger.info(line, extra={"month": month, "step": artifact})
        context.add_output_metadata(
            {
                "dagster/row_count": record["rows"],
                "path": MetadataValue.path(str((run_dir.path / record["path"]).resolve())),
                "dagster/column_schema": column_schema(obj.frame),
                "sha256": record["sha256"],
                "bytes": record["bytes"],
                # The step that completes the month says so; earlier steps' status would go stale.
                **({"month_completed": True} if manifest.get("status") == "completed" else {}),
                **obj.headline,
            }
        )

    def load_input(self, context: InputContext) -> LoadedArtifact:
        """The upstream artifact as the step will use it. A missing or unreadable one fails the
        step that needed it, recorded in the run directory like any other failure of that step."""
        key = _run_month(context)
        month, run_id = split_month_run_key(key)
        run_dir = self.run_store.directory(month, run_id)
        step = context.op_def.name
        spec = self.run_store.spec(key)
        if step not in ARTIFACT_PHASES or not artifact_applies(spec.run_type, step):
            return run_dir.read_artifact(context.asset_key.path[-1])
        with recording_failures(run_dir, spec, ARTIFACT_PHASES[step], context.step_context.run_id):
            return run_dir.read_artifact(context.asset_key.path[-1])


def _run_month(context: InputContext) -> str:
    """The run-month an input is read for: the run's `dagster/partition` tag, which every run of a
    run-month carries (docs/dagster.md). A check-only run (the UI's *Execute checks*) has no
    partition of its own, the checks not being partitioned, so its inputs span every key."""
    return context.step_context.run_tags.get("dagster/partition") or context.asset_partition_key


def spec_metadata(runs_dir: Path, spec: RunSpec) -> dict[str, Any]:
    """What a `run_spec` materialization records, however it was written."""
    return {
        "path": MetadataValue.path(str(spec_path(runs_dir, spec.run_id).resolve())),
        "run_type": spec.run_type,
        "spec": MetadataValue.json(spec.to_dict()),
    }


class RunSpecIOManager(ConfigurableIOManager):
    """Stores run specs as immutable JSON at `runs/_specs/<run_id>.json`."""

    run_store: RunStoreResource

    def handle_output(self, context: OutputContext, obj: RunSpec) -> None:
        context.add_output_metadata(spec_metadata(self.run_store.root, write_spec(self.run_store.root, obj)))

    def load_input(self, context: InputContext) -> RunSpec:
        return self.run_store.spec(_run_month(context))
