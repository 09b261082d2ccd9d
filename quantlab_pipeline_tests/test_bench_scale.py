"""`bench/scale.py` at a tiny size: 3 real CLI runs and 10 synthesised copies, measured end to end
(one UI page, replayed from the saved browser requests, on a cold webserver).

Numbers are never asserted (the machine is shared); what is checked is that every figure exists,
and that the synthesised runs are what the UI and the CLI read as runs: their partition keys,
Dagster runs, events and run directories.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, RunsFilter

from quantlab_pipeline_tests.helpers import child_env

REPO = Path(__file__).resolve().parents[1]


def test_scale_bench_builds_synthesised_runs_and_reports_every_figure(tmp_path, monkeypatch):
    out = tmp_path / "rows.json"
    env = child_env(("DAGSTER_", "QUANTLAB_"))
    argv = [sys.executable, str(REPO / "bench" / "scale.py"), "--sizes", "13", "--real", "3"]
    argv += ["--data-dir", str(tmp_path), "--pages", "Partitions tab", "--repeat", "1", "--json", str(out)]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    # 3 real, 10 synthesised, and the one real run whose catalog sync is timed.
    assert (row["runs"], row["real"], row["synthesised"]) == (13, 3, 10)
    for figure in ("backtest_s", "instance_bytes_per_run_month", "sync_step_s", "catalog_query_s", "runs_status_s"):
        assert math.isfinite(row[figure]) and row[figure] > 0, figure
    page = row["pages"]["Partitions tab"]
    assert page["how"] == "replay" and page["wall_s"] > 0 and page["peak_rss_mb"] > 50
    assert "PartitionHealthQuery" in page["queries"]
    assert "Partitions tab" in proc.stdout

    root = tmp_path / "sqlite"
    state = json.loads((root / "state.json").read_text())
    monkeypatch.chdir(root)  # the instance's paths are relative to the project
    monkeypatch.setenv("DAGSTER_HOME", str(root))
    with DagsterInstance.get() as instance:
        keys = instance.get_dynamic_partitions("run_month")
        assert len(keys) == 14 and len(set(keys)) == 14
        real_ids = {r["run_id"] for r in state["real"]}
        synthesised = [k for k in keys if k[-36:] not in real_ids]
        assert len(synthesised) == 10
        for key in synthesised:
            run_id = key[-36:]
            (run,) = instance.get_runs(RunsFilter(tags={"quantlab/run_id": run_id}))
            assert run.tags["dagster/partition"] == key and run.is_success
            for asset in ("run_spec", "alerts", "paths"):
                records = instance.fetch_materializations(
                    AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[key]), limit=1
                ).records
                assert records, (asset, key)
            manifest = json.loads((root / "runs" / key[:7] / f"run_id={run_id}" / "run.json").read_text())
            assert manifest["run_id"] == run_id and manifest["status"] == "completed"
    # The catalog's full sync before the timed one accepted every synthesised directory.
    query = subprocess.run(
        [
            str(Path(sys.executable).parent / "quantlab"),
            "backtest",
            "catalog-query",
            "--format",
            "json",
            "--limit",
            "100",
        ],
        cwd=root,
        env={**env, "DAGSTER_HOME": str(root)},
        capture_output=True,
        text=True,
    )
    assert query.returncode == 0, query.stderr
    assert len(json.loads(query.stdout)) == 14
