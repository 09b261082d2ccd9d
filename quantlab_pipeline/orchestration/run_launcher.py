"""The run launcher of local and single-host deployments: Dagster's default one plus a worker health check.

Dagster's `DefaultRunLauncher` starts each run worker as a subprocess of a code server and has no
health check, so run monitoring never looks at a started run: a worker that dies while its code
server is gone or hung (restarted, killed, frozen) leaves its run `STARTED` for good. Here the
worker names itself on its run (`record_run_worker`, called when a run's resources are set up)
and the daemon's run monitoring asks `LocalRunLauncher.check_run_worker_health`, which judges
it by the process table as `runs resume` judges a run directory's writer (docs/deployment.md "Running on a
cluster", run monitoring).
"""

from __future__ import annotations

import json
import socket
from typing import Any

from dagster import DagsterInstance, DagsterRun, DefaultRunLauncher

from quantlab_pipeline.orchestration.dagster_adapter import CheckRunHealthResult, WorkerStatus
from quantlab_pipeline.storage.writer import writer_gone, writer_record

# The worker's identity: host, pid, the process's start time and boot id (a pid reused later
# belongs to a process with another start time), and the Dagster run it was recorded for (a
# re-execution copies its parent's tags; those describe the parent's worker, not this run's).
# Not under `quantlab/`: those tags say what a run is (docs/running.md "Months as Dagster runs"). Under
# Dagster's hidden prefix `.dagster/`, so the Runs page does not show it on every run.
RUN_WORKER_TAG = ".dagster/quantlab_run_worker"
_IDENTITY = ("host", "pid", "process_start", "boot_id", "dagster_run_id")


def record_run_worker(instance: DagsterInstance | None, run: DagsterRun | None) -> None:
    """Tag `run` with this process, the worker executing it: the same record run.json's writer holds."""
    if instance is None or run is None:  # resources built outside a run (a sensor, a test)
        return
    record = writer_record(run.run_id)
    identity = {key: record[key] for key in _IDENTITY}
    instance.add_run_tags(run.run_id, {RUN_WORKER_TAG: json.dumps(identity, separators=(",", ":"))})


def run_worker(run: DagsterRun) -> dict[str, Any] | None:
    """The identity the run's own worker recorded, or None (not recorded yet, or copied from a parent run)."""
    try:
        identity = json.loads(run.tags.get(RUN_WORKER_TAG) or "null")
    except ValueError:
        return None
    if not isinstance(identity, dict) or identity.get("dagster_run_id") != run.run_id:
        return None
    return identity


class LocalRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` whose run workers run monitoring can check (on the daemon's host).

    Dagster fails a started run whose check says anything but RUNNING or SUCCESS, so only a
    worker known to be dead is FAILED: one that has not named itself yet (it does so before its
    first step) and one on another host (its code server's host; only that host's process table
    can tell) are RUNNING, left to the code server that started them, as without this check.
    """

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = run_worker(run)
        if worker is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, msg="the run worker has not identified itself yet")
        host, pid = worker.get("host"), worker.get("pid")
        worker_id = f"pid {pid} on {host}"
        here = socket.gethostname()
        if host != here:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING,
                msg=f"run worker {worker_id} cannot be checked from {here}",
                run_worker_id=worker_id,
            )
        gone = writer_gone(worker)
        if gone is not None:
            return CheckRunHealthResult(WorkerStatus.FAILED, msg=f"run worker died: {gone}", run_worker_id=worker_id)
        return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=worker_id)
