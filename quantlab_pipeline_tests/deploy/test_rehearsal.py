"""The deploy rehearsal (docs/deployment.md "Running on a cluster"): what can be rehearsed on one machine.

A real PostgreSQL server, the daemon and the webserver on `deploy/dagster.yaml` (month limit 2),
a 4-month backtest submitted to the queue, a UI-style backfill, and a killed run worker that run
monitoring detects. Skipped, with the reason, only when no PostgreSQL server can be started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from dagster import DagsterRunStatus

from quantlab_pipeline.orchestration.partitions import run_month_keys
from quantlab_pipeline.orchestration.run_launcher import run_worker
from quantlab_pipeline.storage.specs import read_spec
from quantlab_pipeline_tests.deploy.cluster import (
    MONTH_LIMIT,
    Cluster,
    max_in_flight,
    running_cluster,
    runs_where,
    submit_backtest,
    wait_for,
    wait_until_finished,
)
from quantlab_pipeline_tests.deploy.postgres import ServerUnavailable, temporary_postgres

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

MONTHS = ["2024-01", "2024-02", "2024-03", "2024-04"]
WINDOW = ["--from", "2024-01-01", "--to", "2024-04-30"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    if sys.platform == "win32":
        pytest.skip("the deploy rehearsal manages POSIX process groups; run it on Linux or macOS")
    pytest.importorskip(
        "dagster_postgres", reason="the deploy extra is not installed (pip install -e '.[deploy-test]')"
    )
    with ExitStack() as stack:
        try:
            postgres = stack.enter_context(temporary_postgres())
        except ServerUnavailable as exc:
            pytest.skip(f"deploy rehearsal: no PostgreSQL server: {exc}")
        running = stack.enter_context(running_cluster(postgres, tmp_path_factory.mktemp("deploy")))
        made = running.quantlab(
            "sample-data", "--out", "data/alerts.duckdb", "--months", "2024-01..2024-04", "--alerts-per-month", "40"
        )
        assert made.returncode == 0, made.stderr
        yield running


def _alerts(cluster: Cluster) -> list[str]:
    return ["--calls-from-duckdb", str(cluster.work / "data" / "alerts.duckdb")]


def _catalog_rows(cluster: Cluster, run_id: str) -> list[dict] | None:
    """The catalog's rows for `run_id`, or None while the CLI cannot read it (a sync holds the file)."""
    got = cluster.quantlab("backtest", "catalog-query", "--run-id", run_id, "--format", "json", "--limit", "100")
    return json.loads(got.stdout) if got.returncode == 0 and got.stdout.strip() else None


def _launch_ui_backfill(cluster: Cluster, run_id: str, assets: list[str]) -> str:
    """What the UI's *Materialize* over a run's run-month partitions sends; the backfill id."""
    launched = cluster.graphql(
        """
        mutation Backfill($params: LaunchBackfillParams!) {
          launchPartitionBackfill(backfillParams: $params) {
            __typename
            ... on LaunchBackfillSuccess { backfillId }
            ... on PythonError { message }
            ... on UnauthorizedError { message }
          }
        }
        """,
        {
            "params": {
                "partitionNames": run_month_keys(read_spec(cluster.runs_dir, run_id)),
                "assetSelection": [{"path": [asset]} for asset in assets],
            }
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def test_a_submitted_backtest_and_a_ui_backfill_share_the_month_limit_complete_and_are_catalogued(cluster):
    """A UI backfill of a path-only run and a submitted policy backtest, 4 months each, at once."""
    created = cluster.quantlab("runs", "create", "--run-type", "path-only", *_alerts(cluster), *WINDOW)
    assert created.returncode == 0, created.stderr
    backfill_run_id = created.stdout.strip().splitlines()[-1]
    backfill_id = _launch_ui_backfill(cluster, backfill_run_id, ["alerts", "paths", "features"])
    policy = ["--policy-id", "fixed-stop-5pct", "--policy", '{"kind":"fixed_stop","stop_loss_bps":500}']
    run_id, dagster_run_ids = submit_backtest(cluster, "policy", MONTHS, [*_alerts(cluster), *WINDOW, *policy])

    submitted = wait_until_finished(
        cluster, "the 4 months of the policy backtest", lambda: runs_where(cluster, run_ids=dagster_run_ids), 4, 180
    )
    assert {r["status"] for r in submitted} == {"SUCCESS"}, [
        (r["tags"]["dagster/partition"], r["status"]) for r in submitted
    ]
    assert sorted(r["tags"]["dagster/partition"][:7] for r in submitted) == MONTHS
    for month in MONTHS:
        assert (cluster.runs_dir / month / f"run_id={run_id}" / "_SUCCESS").is_file(), month

    # The backfill (the daemon picks it up within 30 s): one run per run-month partition, each
    # with the partition tag the queue limits.
    backfilled = wait_until_finished(
        cluster, "the backfill's 4 runs", lambda: runs_where(cluster, tags={"dagster/backfill": backfill_id}), 4, 180
    )
    assert {r["status"] for r in backfilled} == {"SUCCESS"}
    assert sorted(r["tags"]["dagster/partition"] for r in backfilled) == run_month_keys(
        read_spec(cluster.runs_dir, backfill_run_id)
    )
    for month in MONTHS:
        assert (cluster.runs_dir / month / f"run_id={backfill_run_id}" / "_SUCCESS").is_file(), month

    # Queued, then dequeued up to the limit across both: months overlapped, never more than 2.
    spans = sorted((r["startTime"], r["endTime"], r["tags"]["dagster/partition"]) for r in submitted + backfilled)
    print("month runs (start, end, partition):", *spans, sep="\n  ")
    assert max_in_flight(submitted + backfilled) == MONTH_LIMIT, spans

    # The catalog sensor (every 5 s here) sees the new terminal directories and a sync registers them.
    def four_rows() -> list[dict] | None:
        rows = _catalog_rows(cluster, run_id)
        return rows if rows and len(rows) == 4 else None

    rows = wait_for("the catalog sensor to register the 4 months", four_rows, timeout_s=90, every_s=2)
    assert sorted(r["month"] for r in rows) == MONTHS
    assert {r["status"] for r in rows} == {"completed"}


_STARTED_PID = re.compile(r"Started process for run \(pid: (\d+)\)")


def _messages(cluster: Cluster, dagster_run_id: str) -> list[str]:
    """The run's event log messages, oldest first."""
    data = cluster.graphql(
        """
        query Logs($runId: ID!) {
          logsForRun(runId: $runId) { ... on EventConnection { events { ... on MessageEvent { message } } } }
        }
        """,
        {"runId": dagster_run_id},
    )
    return [e.get("message") or "" for e in (data["logsForRun"] or {}).get("events", [])]


def _worker_pid(cluster: Cluster, dagster_run_id: str) -> int | None:
    """The run worker's pid, from the engine event it logs when it starts."""
    for message in _messages(cluster, dagster_run_id):
        match = _STARTED_PID.search(message)
        if match:
            return int(match.group(1))
    return None


def _parent(pid: int) -> tuple[int, str]:
    """The parent of process `pid`: its pid and command line."""
    ppid = int(subprocess.run(["ps", "-o", "ppid=", "-p", str(pid)], capture_output=True, text=True).stdout)
    args = subprocess.run(["ps", "-o", "args=", "-p", str(ppid)], capture_output=True, text=True).stdout.strip()
    return ppid, args


def test_a_killed_run_worker_is_detected_by_run_monitoring_and_its_run_marked_failed(cluster):
    # An optimization month (a grid of policies) runs long enough to be killed mid-way.
    run_id, (dagster_run_id,) = submit_backtest(cluster, "optimization", ["2024-02"], [*_alerts(cluster), *WINDOW])

    def identified_worker() -> dict | None:
        run = instance.get_run_by_id(dagster_run_id)  # its worker's tag is hidden from GraphQL
        assert run is not None and not run.is_finished, (
            f"the run ended ({run and run.status}) before it could be killed"
        )
        return run_worker(run) if run.status == DagsterRunStatus.STARTED else None

    with cluster.instance() as instance:
        worker = wait_for("the optimization run's worker to name itself", identified_worker, timeout_s=90, every_s=0.2)
    pid, host = worker["pid"], worker["host"]
    assert pid == _worker_pid(cluster, dagster_run_id)  # the process the code server started for the run
    # The worker's parent, the daemon's code server, would report the exit itself within a second.
    # Frozen, it cannot (as when it hangs, or died before its worker): only run monitoring can.
    code_server, args = _parent(pid)
    assert "grpc" in args, f"the worker's parent is not a code server: {args}"
    os.kill(code_server, signal.SIGSTOP)
    try:
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        (run,) = wait_until_finished(
            cluster, "the killed run to be marked failed", lambda: runs_where(cluster, run_ids=[dagster_run_id]), 1, 60
        )
        detected_s = time.monotonic() - killed_at
    finally:
        os.kill(code_server, signal.SIGCONT)
    assert run["status"] == "FAILURE"
    print(f"killed worker detected by run monitoring after {detected_s:.1f} s")
    # The failure is run monitoring's and says why: the worker, named by pid and host, is gone.
    messages = _messages(cluster, dagster_run_id)
    expected = f"Detected run worker status FAILED: 'run worker died: writer pid {pid} on {host} is gone'"
    assert any(m.startswith(expected) for m in messages), messages[-5:]
    assert not any("was terminated by signal" in m for m in messages), messages[-5:]
    assert not (Path(cluster.runs_dir) / "2024-02" / f"run_id={run_id}" / "_SUCCESS").exists()
