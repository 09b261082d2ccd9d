"""Dagster's private names the project relies on, checked one by one (docs/architecture.md "The
Dagster adapter"): after a Dagster upgrade, a moved, renamed or reshaped name fails here with its
own name, instead of failing a backtest halfway."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from quantlab_pipeline.orchestration import dagster_adapter
from quantlab_pipeline.orchestration.dagster_adapter import PRIVATE, Private

PACKAGE = Path(__file__).resolve().parents[1] / "quantlab_pipeline"


def _label(entry: Private) -> str:
    return f"{entry.module}.{entry.name}" if entry.name else entry.module


@pytest.mark.parametrize("entry", PRIVATE, ids=_label)
def test_each_private_name_still_exists_with_the_parameters_used(entry):
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        pytest.fail(f"Dagster no longer has the module {entry.module} ({exc}); used because: {entry.why}")
    if entry.name is None:
        return
    if not hasattr(module, entry.name):
        pytest.fail(f"Dagster no longer has {_label(entry)}; used because: {entry.why}")
    if entry.parameters:
        target = getattr(module, entry.name)
        if entry.method:
            target = getattr(target, entry.method, None)
            assert target is not None, f"{_label(entry)}.{entry.method} is gone"
        names = list(getattr(target, "_fields", None) or inspect.signature(target).parameters)  # records: fields
        if names and names[0] in ("self", "cls"):
            names = names[1:]
        missing = [p for p in entry.parameters if p not in names]
        assert not missing, f"{_label(entry)} no longer takes {missing} (it takes {names})"
        assert names[: len(entry.parameters)] == list(entry.parameters), (
            f"{_label(entry)}'s parameters changed order: {names}, expected {list(entry.parameters)} first"
        )


def test_the_overridden_private_hooks_are_still_called_by_dagster():
    """`_connect` is the hook every read and write of Dagster's SQLite event log goes through."""
    base = dagster_adapter.ConsolidatedSqliteEventLogStorage
    assert "_connect" in vars(base) or any("_connect" in vars(c) for c in base.__mro__[1:]), (
        "ConsolidatedSqliteEventLogStorage._connect is gone: KeptConnectionSqliteEventLogStorage overrides it"
    )
    assert "self._connect()" in inspect.getsource(base), (
        "ConsolidatedSqliteEventLogStorage no longer opens its connections through _connect"
    )


def _private_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagster._"):
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dagster._"))
    return found


def test_every_private_import_of_the_adapter_is_listed_with_its_reason():
    listed = {_label(entry) for entry in PRIVATE}
    unlisted = _private_imports(PACKAGE / "orchestration" / "dagster_adapter.py") - listed
    assert unlisted == set(), f"imported from dagster._ without a PRIVATE entry saying why: {sorted(unlisted)}"


def test_no_other_module_uses_a_private_dagster_name():
    """Also not as a string (an import by name): only the adapter; dagster.yaml's `module:` lines
    are Dagster's documented way to name a storage class."""
    offenders = sorted(
        str(path.relative_to(PACKAGE.parent))
        for root in (PACKAGE, PACKAGE.parent / "quantlab_pipeline_tests", PACKAGE.parent / "bench")
        for path in root.rglob("*.py")
        if path.name not in ("dagster_adapter.py", "test_dagster_adapter.py")
        and "dagster._" in path.read_text().replace('private("dagster._', "")
    )
    assert offenders == [], offenders


def test_a_name_not_listed_is_refused():
    with pytest.raises(KeyError, match=r"dagster\._core\.nowhere\.thing is not a listed private name"):
        dagster_adapter.private("dagster._core.nowhere", "thing")


def test_a_new_run_keeps_the_assets_partition_status_caches(sample_db, runs_dir, dagster_instance):
    """Dagster keys an asset's partition-status cache by a hash of every run-month key: without
    `add_partition_keys` each new run made the UI rebuild it from every materialization. The
    relabelled cache must say what a rebuild from nothing says."""
    from dagster import AssetKey

    from quantlab_pipeline.core.spec_builder import SpecRequest
    from quantlab_pipeline.orchestration.launch import create_run
    from quantlab_pipeline.orchestration.month_runs import materialize_month
    from quantlab_pipeline.orchestration.partitions import (
        RUN_MONTH_PARTITIONS_NAME,
        month_run_key,
        run_month_partitions,
    )
    from quantlab_pipeline.storage.paths import ProjectPaths
    from quantlab_pipeline.storage.run_creation import create_run_spec

    refresh = dagster_adapter.private(
        "dagster._core.storage.partition_status_cache", "get_and_update_asset_status_cache_value"
    )
    paths = ProjectPaths.of(runs_dir)

    def new_spec():
        return create_run_spec(SpecRequest("path-only", str(sample_db), "2024-01-01", "2024-01-31", features=False))

    first = new_spec()
    create_run(first, paths=paths, instance=dagster_instance)
    assert materialize_month(first, "2024-01", paths=paths, instance=dagster_instance).status == "completed"
    built = refresh(dagster_instance, AssetKey("paths"), run_month_partitions)

    second = new_spec()
    create_run(second, paths=paths, instance=dagster_instance)
    (record,) = dagster_instance.get_asset_records([AssetKey("paths")])
    kept = record.asset_entry.cached_status
    assert kept.partitions_def_id == dagster_instance.get_dynamic_partitions_definition_id(RUN_MONTH_PARTITIONS_NAME)
    assert kept.partitions_def_id != built.partitions_def_id
    assert kept._replace(partitions_def_id=None) == built._replace(partitions_def_id=None)

    current = refresh(dagster_instance, AssetKey("paths"), run_month_partitions)
    dagster_instance.wipe_asset_cached_status([AssetKey("paths")])
    rebuilt = refresh(dagster_instance, AssetKey("paths"), run_month_partitions)
    materialized = run_month_partitions.deserialize_subset(current.serialized_materialized_partition_subset)
    assert set(materialized.get_partition_keys()) == {month_run_key(first, "2024-01")}
    assert materialized == run_month_partitions.deserialize_subset(rebuilt.serialized_materialized_partition_subset)

    create_run(second, paths=paths, instance=dagster_instance)  # keys already there: nothing changes
    assert dagster_instance.get_asset_records([AssetKey("paths")])[0].asset_entry.cached_status == rebuilt
