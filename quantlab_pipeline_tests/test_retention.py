"""`quantlab runs delete | prune` (docs/lifecycle.md "Deleting and pruning runs"): what a run is
made of, which runs a prune selects, the refusals, and end to end with real CLI processes."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import tarfile
import time
from pathlib import Path

import dagster as dg
import pytest

from quantlab_pipeline.core.errors import QuantlabError, SpecError
from quantlab_pipeline.orchestration.partitions import RUN_MONTH_PARTITIONS_NAME, month_run_key, partition_keys_of
from quantlab_pipeline.orchestration.retention import plan_removal
from quantlab_pipeline.storage.retention import disk_usage, run_files, select_runs
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import write_spec
from quantlab_pipeline_tests.helpers import BIN, child_env, run_cli
from quantlab_pipeline_tests.test_lifecycle import dead_pid, set_writer
from quantlab_pipeline_tests.test_run_dir import complete_path_only, make_spec

NOW = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
IDS = {
    "old_done": "00000000-0000-4000-8000-000000000001",
    "old_failed": "00000000-0000-4000-8000-000000000002",
    "old_policy": "00000000-0000-4000-8000-000000000003",
    "recent": "00000000-0000-4000-8000-000000000004",
    "old_live": "00000000-0000-4000-8000-000000000005",
}


@pytest.fixture
def runs(tmp_path) -> Path:
    """Five runs (created 2024-02-01 unless `recent`: 2024-05-31 12:00), one month each."""
    root = tmp_path / "runs"
    for name, run_id in IDS.items():
        created = "2024-05-31T12:00:00.000Z" if name == "recent" else "2024-02-01T00:00:00.000Z"
        spec = make_spec("policy" if name == "old_policy" else "path-only", run_id=run_id, created_at=created)
        write_spec(root, spec)
        rd = RunDirectory(root, "2024-01", run_id)
        if name == "old_failed":
            rd.record_failure(spec, phase="truth", exc=RuntimeError("boom"))
        elif name == "old_live":
            rd.begin(spec)  # this process is its live writer
        elif name == "old_policy":
            rd.begin(spec)
            set_writer(rd, pid=dead_pid())  # interrupted
        else:
            complete_path_only(rd, spec)
    return root


def chosen(runs: Path, **kwargs) -> list[str]:
    return [next(k for k, v in IDS.items() if v == f.run_id) for f in select_runs(runs, now=NOW, **kwargs)]


def test_prune_selects_by_age_type_and_state_never_a_live_run(runs):
    day = dt.timedelta(days=1)
    assert chosen(runs, older_than=90 * day) == ["old_done", "old_failed", "old_policy"]  # 121 days old
    assert chosen(runs, older_than=dt.timedelta(hours=6)) == ["old_done", "old_failed", "old_policy", "recent"]
    assert chosen(runs, older_than=dt.timedelta(hours=13)) == ["old_done", "old_failed", "old_policy"]  # recent: 12 h
    assert chosen(runs, older_than=122 * day) == []
    assert chosen(runs, older_than=day, run_type="policy") == ["old_policy"]
    assert chosen(runs, older_than=day, status="failed") == ["old_failed", "old_policy"]  # interrupted counts
    assert chosen(runs, older_than=dt.timedelta(hours=6), status="completed") == ["old_done", "recent"]
    with pytest.raises(QuantlabError, match="--status: expected one of completed, failed, got 'done'"):
        select_runs(runs, older_than=day, status="done")
    with pytest.raises(QuantlabError, match="--run-type"):
        select_runs(runs, older_than=day, run_type="paths")


def test_a_runs_files_are_its_month_directories_and_its_spec(runs):
    files = run_files(runs, IDS["old_done"])
    assert [m.month for m in files.months] == ["2024-01"] and files.state == "completed"
    assert files.spec_file == runs / "_specs" / f"{IDS['old_done']}.json"
    assert files.bytes == disk_usage(runs / "2024-01" / f"run_id={IDS['old_done']}") + disk_usage(files.spec_file)
    assert run_files(runs, IDS["old_live"]).state == "running"
    with pytest.raises(QuantlabError, match="no spec and no run directory"):
        run_files(runs, "00000000-0000-4000-8000-0000000000ff")
    with pytest.raises(SpecError, match="run_id: expected a lowercase UUID4"):
        run_files(runs, "../../etc")


def test_a_run_with_a_dagster_run_in_flight_is_refused(runs):
    files = run_files(runs, IDS["old_done"])
    key = month_run_key(files.spec, "2024-01")
    assert partition_keys_of(files.spec) == [
        (RUN_MONTH_PARTITIONS_NAME, month_run_key(files.spec, month)) for month in files.spec.months()
    ]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(RUN_MONTH_PARTITIONS_NAME, [key])
        finished = instance.add_run(
            dg.DagsterRun(job_name="j", status=dg.DagsterRunStatus.SUCCESS, tags={"quantlab/run_id": IDS["old_done"]})
        )
        backfilled = instance.add_run(  # a UI launch of one of its partitions: found by the partition tag
            dg.DagsterRun(job_name="j", status=dg.DagsterRunStatus.FAILURE, tags={"dagster/partition": key})
        )
        [plan] = plan_removal(instance, [files])
        assert set(plan.dagster_runs) == {finished.run_id, backfilled.run_id}
        assert plan.partitions == [(RUN_MONTH_PARTITIONS_NAME, key)]  # the keys the instance holds
        running = instance.add_run(
            dg.DagsterRun(job_name="j", status=dg.DagsterRunStatus.STARTED, tags={"quantlab/run_id": IDS["old_done"]})
        )
        with pytest.raises(QuantlabError, match=f"Dagster run {running.run_id} is STARTED") as info:
            plan_removal(instance, [files])
        assert "\n" not in str(info.value)
        with pytest.raises(QuantlabError, match=f"run {IDS['old_live']} is live: 2024-01 is being written"):
            plan_removal(instance, [run_files(runs, IDS["old_live"])])


# -- end to end -------------------------------------------------------------------------------------


def backtest(workdir: Path, run_type: str, *extra: str) -> str:
    before = set((workdir / "runs" / "_specs").glob("*.json")) if (workdir / "runs").exists() else set()
    args = ["backtest", run_type, "--calls-from-duckdb", "data/alerts.duckdb", "--interval", "5m"]
    proc = run_cli([*args, "--from", "2024-01-01", "--to", "2024-01-31", "--no-features", *extra], workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [spec] = set((workdir / "runs" / "_specs").glob("*.json")) - before
    return spec.stem


def instance_runs(workdir: Path, run_id: str) -> list[str]:
    """What the UI's Runs page, filtered by the run's tag, finds (the same query on the instance)."""
    script = (
        "import json, sys; from dagster import DagsterInstance, RunsFilter; i = DagsterInstance.get(); "
        "print(json.dumps([r.dagster_run.run_id for r in i.get_run_records(RunsFilter(tags={'quantlab/run_id': sys.argv[1]}))]"
        " + [any(k.endswith(sys.argv[1]) for k in i.get_dynamic_partitions('run_month'))]))"
    )
    env = child_env(DAGSTER_HOME=str(workdir / ".dagster_home"))
    out = subprocess.run(
        [str(BIN / "python"), "-c", script, run_id], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    *runs, partition = json.loads(out.stdout)
    return runs if partition else [*runs, "(no partition key)"]


@pytest.mark.slow
def test_delete_and_prune_remove_runs_completely_end_to_end(workdir):
    policy = backtest(workdir, "policy", "--policy-id", "p", "--policy", '{"kind":"fixed_stop","stop_loss_bps":500}')
    path_only = backtest(workdir, "path-only")
    kept = backtest(workdir, "path-only")
    assert run_cli(["backtest", "catalog-sync"], workdir).returncode == 0
    instance_dir, runs = workdir / ".dagster", workdir / "runs"
    size = disk_usage(instance_dir)
    assert len(instance_runs(workdir, policy)) == 1

    dry = run_cli(["runs", "delete", policy, "--dry-run"], workdir)
    assert dry.returncode == 0 and "1 run(s) would be deleted" in dry.stdout and "1 Dagster run(s)" in dry.stdout
    assert (runs / "2024-01" / f"run_id={policy}").is_dir()
    env = child_env(DAGSTER_HOME=str(workdir / ".dagster_home"), NO_COLOR="1")
    unasked = subprocess.run(
        [str(BIN / "quantlab"), "runs", "delete", policy], cwd=workdir, env=env, stdin=subprocess.DEVNULL, text=True,
        capture_output=True,
    )  # fmt: skip
    assert unasked.returncode == 2 and unasked.stderr.count("\n") == 1 and "pass --yes" in unasked.stderr
    assert (runs / "2024-01" / f"run_id={policy}").is_dir()

    deleted = run_cli(["runs", "delete", policy, "--yes", "--archive", "policy.tar.gz"], workdir)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert "Deleted 1 run(s): runs shrank by" in deleted.stdout and "the Dagster instance" in deleted.stdout
    assert not (runs / "2024-01" / f"run_id={policy}").exists() and not (runs / "_specs" / f"{policy}.json").exists()
    assert instance_runs(workdir, policy) == ["(no partition key)"]  # no Dagster run, no partition key left
    assert len(instance_runs(workdir, kept)) == 1
    assert disk_usage(instance_dir) < size  # the run's events (pages given back) and compute logs are gone
    with tarfile.open(workdir / "policy.tar.gz") as tar:
        names = tar.getnames()
    assert f"_specs/{policy}.json" in names and f"2024-01/run_id={policy}/run.json" in names
    synced = run_cli(["backtest", "catalog-sync"], workdir)
    assert "Removed 1 run" in synced.stdout, synced.stdout + synced.stderr
    rows = json.loads(run_cli(["backtest", "catalog-query", "--format", "json"], workdir).stdout)
    assert sorted(r["run_id"] for r in rows) == sorted([path_only, kept])

    # a live run is refused in one line, and nothing of it is touched
    live = make_spec(run_id="00000000-0000-4000-8000-0000000000aa", created_at="2020-01-01T00:00:00.000Z")
    write_spec(runs, live)
    RunDirectory(runs, "2024-01", live.run_id).begin(live)  # this test process is its live writer
    refused = run_cli(["runs", "delete", live.run_id, "--yes"], workdir)
    assert refused.returncode == 2 and "is live" in refused.stderr and refused.stderr.count("\n") == 1
    assert (runs / "2024-01" / f"run_id={live.run_id}").is_dir()

    bad = run_cli(["runs", "prune", "--older-than", "90x"], workdir)
    assert bad.returncode == 2 and "--older-than: expected a duration" in bad.stderr
    assert "No run matches" in run_cli(["runs", "prune", "--older-than", "90d", "--yes"], workdir).stdout
    time.sleep(1.5)  # every run above is now older than the bound, however fast the machine
    pruned = run_cli(["runs", "prune", "--older-than", "1s", "--run-type", "path-only", "--yes"], workdir)
    assert pruned.returncode == 0 and "Deleted 2 run(s)" in pruned.stdout, pruned.stdout + pruned.stderr
    assert (runs / "2024-01" / f"run_id={live.run_id}").is_dir()  # live: never selected
    assert instance_runs(workdir, kept) == ["(no partition key)"]
    assert "Removed 2 runs" in run_cli(["backtest", "catalog-sync"], workdir).stdout
