"""The deploy rehearsal's cluster on one machine (docs/deployment.md "Running on a cluster").

`deploy/dagster.yaml` pointed at a temporary PostgreSQL server, with `dagster-daemon run` and
`dagster-webserver` started from the project root on `workspace.yaml`, as a platform engineer
runs them; the test process talks to them the way a UI/CI user does (the `quantlab` CLI and the
webserver's GraphQL API), and reads the run records back through that API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from unittest.mock import patch

import yaml
from dagster import DagsterInstance

from quantlab_pipeline.orchestration.jobs import JOB_BY_RUN_TYPE
from quantlab_pipeline.orchestration.partitions import month_run_key
from quantlab_pipeline.storage.specs import read_spec
from quantlab_pipeline_tests.deploy.postgres import Postgres, free_port
from quantlab_pipeline_tests.helpers import child_env

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = PROJECT_ROOT / "deploy"
BIN = Path(sys.executable).parent

# The rehearsal's limit: 4 months, at most 2 at once, so both "concurrently" and "never above
# the limit" are visible.
MONTH_LIMIT = 2

T = TypeVar("T")


def rehearsal_instance_config() -> dict[str, Any]:
    """`deploy/dagster.yaml` as shipped, with the rehearsal's month limit and short monitoring intervals."""
    config = yaml.safe_load((DEPLOY_DIR / "dagster.yaml").read_text())
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    (month_limit,) = [limit for limit in limits if limit["key"] == "dagster/partition"]
    month_limit["limit"] = MONTH_LIMIT
    config["run_coordinator"]["config"] = {"dequeue_interval_seconds": 1}
    config["run_monitoring"].update(poll_interval_seconds=2, free_slots_after_run_end_seconds=2)
    return config


def wait_for(what: str, check: Callable[[], T | None], *, timeout_s: float, every_s: float = 0.5) -> T:
    """Poll `check` until it returns something truthy; a `TimeoutError` naming `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


@dataclass
class Cluster:
    home: Path
    work: Path
    env: dict[str, str]
    webserver_port: int
    logs: dict[str, Path]

    @property
    def runs_dir(self) -> Path:
        return Path(self.env["QUANTLAB_RUNS_DIR"])

    def log_tails(self, chars: int = 1500) -> str:
        """The end of each service's log, for failure messages."""
        return "\n".join(
            f"--- {name} ({path}):\n{path.read_text(errors='replace')[-chars:]}" for name, path in self.logs.items()
        )

    def quantlab(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        """The `quantlab` CLI against the shared instance, as a user on another machine runs it."""
        return subprocess.run(
            [str(BIN / "quantlab"), *args],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    @contextmanager
    def instance(self) -> Iterator[DagsterInstance]:
        """The shared instance as a user's Python session opens it (the cluster's environment):
        what GraphQL does not show, such as a run's hidden tags."""
        with patch.dict(os.environ, self.env):
            instance = DagsterInstance.get()
            try:
                yield instance
            finally:
                instance.dispose()

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.webserver_port}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the service's process group (it and its code servers and run workers), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    # Children outlive a parent that exited on SIGTERM; the group is ours alone.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=20)


def _location_loaded(cluster: Cluster) -> bool:
    try:
        data = cluster.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } }"
        )
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    entries = data["workspaceOrError"].get("locationEntries") or []
    return any((e["locationOrLoadError"] or {}).get("__typename") == "RepositoryLocation" for e in entries)


@contextmanager
def running_cluster(postgres: Postgres, tmp: Path, *, timeout_s: float = 120) -> Iterator[Cluster]:
    """Write DAGSTER_HOME, start the daemon and the webserver; yield once the code location is loaded."""
    home, work = tmp / "dagster_home", tmp / "work"
    for folder in (home, work):
        folder.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(rehearsal_instance_config(), sort_keys=False))
    env = child_env()
    env.update(postgres.env())
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "DAGSTER_ARTIFACTS_DIR": str(home / "storage"),
            "DAGSTER_COMPUTE_LOGS_DIR": str(home / "compute_logs"),
            "QUANTLAB_RUNS_DIR": str(work / "runs"),
            "QUANTLAB_CATALOG": str(work / "data" / "backtest_catalog.duckdb"),
            "QUANTLAB_CATALOG_SENSOR_INTERVAL": "5",
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
    )
    port = free_port()
    cluster = Cluster(home=home, work=work, env=env, webserver_port=port, logs={})
    commands = {
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        "webserver": [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
    }
    procs: dict[str, subprocess.Popen] = {}

    def location_loaded() -> bool:
        exited = [f"{name} exited with {p.returncode}" for name, p in procs.items() if p.poll() is not None]
        if exited:
            raise RuntimeError(f"{'; '.join(exited)}\n{cluster.log_tails()}")
        return _location_loaded(cluster)

    with ExitStack() as stack:
        for name, command in commands.items():
            log = tmp / f"{name}.log"
            cluster.logs[name] = log
            with open(log, "w") as log_file:
                proc = subprocess.Popen(
                    command,
                    cwd=PROJECT_ROOT,
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            procs[name] = proc
            stack.callback(_stop, proc)
        try:
            wait_for("the webserver to load the code location", location_loaded, timeout_s=timeout_s)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{cluster.log_tails()}") from exc
        yield cluster


def submit_backtest(
    cluster: Cluster, run_type: str, months: list[str], create_args: list[str]
) -> tuple[str, list[str]]:
    """Submit a backtest to the instance's run queue: the run id and one queued Dagster run per month.

    `quantlab runs create` stores the spec and its run-month partitions; each month is then launched
    through the webserver like the UI's launchpad, as job `<type>_job` with the month's partition
    key. This is the one place `quantlab backtest … --submit` replaces.
    """
    from dagster_graphql import DagsterGraphQLClient

    created = cluster.quantlab("runs", "create", "--run-type", run_type, *create_args)
    assert created.returncode == 0, f"quantlab runs create failed: {created.stderr.strip()}"
    run_id = created.stdout.strip().splitlines()[-1]
    spec = read_spec(cluster.runs_dir, run_id)
    client = DagsterGraphQLClient("127.0.0.1", port_number=cluster.webserver_port)
    dagster_run_ids = []
    for month in months:
        tags = {"dagster/partition": month_run_key(spec, month)}
        dagster_run_ids.append(client.submit_job_execution(JOB_BY_RUN_TYPE[run_type], tags=tags))
    return run_id, dagster_run_ids


_RUNS_QUERY = """
query Runs($filter: RunsFilter!) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status startTime endTime tags { key value } } }
    ... on PythonError { message }
  }
}
"""
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def runs_where(cluster: Cluster, *, run_ids: list[str] | None = None, tags: dict[str, str] | None = None) -> list[dict]:
    """Run records from the shared instance, each with its tags as a dict."""
    flt: dict[str, Any] = {}
    if run_ids is not None:
        flt["runIds"] = run_ids
    if tags:
        flt["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
    result = cluster.graphql(_RUNS_QUERY, {"filter": flt})["runsOrError"]
    assert result["__typename"] == "Runs", f"runsOrError: {result}"
    return [{**r, "tags": {t["key"]: t["value"] for t in r["tags"]}} for r in result["results"]]


def wait_until_finished(
    cluster: Cluster, what: str, fetch: Callable[[], list[dict]], count: int, timeout_s: float
) -> list[dict]:
    """Wait until `count` runs exist and are all terminal; the statuses and service logs if not."""
    last: list[dict] = []

    def finished() -> list[dict] | None:
        nonlocal last
        last = fetch()
        return last if len(last) == count and all(r["status"] in TERMINAL for r in last) else None

    try:
        return wait_for(what, finished, timeout_s=timeout_s, every_s=1)
    except TimeoutError as exc:
        statuses = sorted(r["status"] for r in last)
        raise TimeoutError(f"{exc}; {len(last)}/{count} runs, statuses {statuses}\n{cluster.log_tails()}") from exc


def max_in_flight(runs: list[dict]) -> int:
    """The most runs between their start and end at any instant (an end before a start at a tie)."""
    edges = sorted([(r["startTime"], 1) for r in runs] + [(r["endTime"], -1) for r in runs])
    in_flight = peak = 0
    for _, step in edges:
        in_flight += step
        peak = max(peak, in_flight)
    return peak
