"""CLI backtests as first-class Dagster runs (docs/running.md "Dagster runs from the CLI"): months in
parallel, queued with `--submit` and followed by `runs wait`, and re-executed from the UI
through the webserver's GraphQL API — real processes against a real instance."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from quantlab_pipeline_tests.helpers import BIN, child_env, run_cli

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path, sample_db):
    (tmp_path / "data").mkdir()
    shutil.copy(sample_db, tmp_path / "data" / "alerts.duckdb")
    (tmp_path / ".dagster_home").mkdir()
    return tmp_path


def _home_config(workdir: Path, *, queued: bool) -> None:
    """The project's instance config, or the same without the run queue (the webserver then
    launches a re-execution itself, no daemon needed)."""
    text = (PROJECT / "dagster.yaml").read_text()
    if not queued:
        text = text.replace("class: QueuedRunCoordinator", "class: DefaultRunCoordinator")
        assert "QueuedRunCoordinator" not in text
    (workdir / ".dagster_home" / "dagster.yaml").write_text(text)


def _env(workdir: Path) -> dict[str, str]:
    env = child_env()
    env.update(DAGSTER_HOME=str(workdir / ".dagster_home"), QUANTLAB_RUNS_DIR=str(workdir / "runs"), NO_COLOR="1")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _service(argv: list[str], workdir: Path):
    """A long-running Dagster process from the project root, ended with its process group."""
    log = open(workdir / f"{Path(argv[0]).name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        argv, cwd=workdir, env=_env(workdir), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield proc
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


BACKTEST = ["backtest", "path-only", "--calls-from-duckdb", "data/alerts.duckdb", "--interval", "5m"]
TWO_MONTHS_PARALLEL = ["--from", "2024-01-01", "--to", "2024-02-29", "--parallel", "2"]


def _backtest(workdir: Path, *extra: str, env: dict[str, str] | None = None):
    return run_cli([*BACKTEST, *extra], workdir, {"QUANTLAB_RUNS_DIR": str(workdir / "runs"), **(env or {})})


def _month_states(workdir: Path, run_id: str) -> list[str]:
    proc = run_cli(["runs", "status", run_id, "--format", "json", "--runs-dir", str(workdir / "runs")], workdir)
    return [m["state"] for m in json.loads(proc.stdout)]


def test_parallel_months_are_tagged_dagster_runs_with_an_origin(workdir):
    _home_config(workdir, queued=True)
    proc = _backtest(workdir, *TWO_MONTHS_PARALLEL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 at a time" in proc.stdout
    assert proc.stdout.count("completed in") == 2
    run_id = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("run_id"))
    assert _month_states(workdir, run_id) == ["completed", "completed"]

    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = str(workdir / ".dagster_home")
    try:
        cwd = os.getcwd()
        os.chdir(workdir)  # the project config keeps instance state under the working directory
        with DagsterInstance.get() as instance:
            from quantlab_pipeline.orchestration.month_runs import latest_month_runs

            runs = latest_month_runs(instance, run_id)
            assert sorted(runs) == ["2024-01", "2024-02"]
            for month, run in runs.items():
                assert run.tags["quantlab/run_type"] == "path-only" and run.tags["quantlab/month"] == month
                assert run.remote_job_origin is not None and run.remote_job_origin.location_name == "quantlab_pipeline"
                assert run.job_code_origin is not None
    finally:
        os.chdir(cwd)
        del os.environ["DAGSTER_HOME"]


def _run_statuses(workdir: Path, run_id: str) -> list[str]:
    os.environ["DAGSTER_HOME"] = str(workdir / ".dagster_home")
    cwd = os.getcwd()
    os.chdir(workdir)  # the project config keeps instance state under the working directory
    try:
        from dagster import DagsterInstance

        from quantlab_pipeline.orchestration.month_runs import latest_month_runs

        with DagsterInstance.get() as instance:
            return [run.status.value for _, run in sorted(latest_month_runs(instance, run_id).items())]
    finally:
        os.chdir(cwd)
        del os.environ["DAGSTER_HOME"]


def _run_id(workdir: Path) -> str:
    [spec] = (workdir / "runs" / "_specs").glob("*.json")
    return spec.stem


def test_a_killed_parallel_worker_is_seen_and_resumed(workdir):
    _home_config(workdir, queued=True)
    killed = _backtest(workdir, *TWO_MONTHS_PARALLEL, env={"QUANTLAB_FAULT": "KILL:paths.parquet"})
    assert killed.returncode == 1, killed.stdout + killed.stderr
    run_id = _run_id(workdir)
    assert _month_states(workdir, run_id) == ["interrupted", "interrupted"]
    # Each worker died by SIGKILL with its Dagster run started: the CLI failed the runs for it.
    assert _run_statuses(workdir, run_id) == ["FAILURE", "FAILURE"]

    resumed = run_cli(["runs", "resume", run_id, "--runs-dir", str(workdir / "runs")], workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _month_states(workdir, run_id) == ["completed", "completed"]


@pytest.fixture
def three_months(tmp_path):
    from quantlab_pipeline.sources.sample_db import generate_sample_data

    (tmp_path / "data").mkdir()
    generate_sample_data(
        tmp_path / "data" / "alerts.duckdb", months=["2024-01", "2024-02", "2024-03"], alerts_per_month=40, seed=5
    )
    (tmp_path / ".dagster_home").mkdir()
    _home_config(tmp_path, queued=True)
    return tmp_path


THREE_MONTHS_PARALLEL = ["--from", "2024-01-01", "--to", "2024-03-31", "--parallel", "2"]


def _writers(workdir: Path) -> dict[str, int]:
    return {
        path.parent.parent.name: json.loads(path.read_text())["writer"]["pid"]
        for path in (workdir / "runs").glob("2024-*/run_id=*/run.json")
    }


def test_each_parallel_worker_runs_the_months_it_takes_one_after_another(three_months):
    proc = _backtest(three_months, *THREE_MONTHS_PARALLEL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("completed in") == 3 and proc.stdout.count("materializing") == 3
    run_id = _run_id(three_months)
    assert _month_states(three_months, run_id) == ["completed"] * 3
    assert _run_statuses(three_months, run_id) == ["SUCCESS"] * 3  # one Dagster run per month
    writers = _writers(three_months)
    assert sorted(writers) == ["2024-01", "2024-02", "2024-03"]
    assert len(set(writers.values())) < 3  # at most two workers: one of them ran two months


def test_a_worker_that_dies_with_months_left_is_replaced(three_months):
    killed = _backtest(three_months, *THREE_MONTHS_PARALLEL, env={"QUANTLAB_FAULT": "KILL:paths.parquet"})
    assert killed.returncode == 1, killed.stdout + killed.stderr
    run_id = _run_id(three_months)
    # Both first workers died in their first month; a third took the month left (and died too).
    assert _month_states(three_months, run_id) == ["interrupted"] * 3
    assert _run_statuses(three_months, run_id) == ["FAILURE"] * 3
    assert len(set(_writers(three_months).values())) == 3

    resumed = run_cli(["runs", "resume", run_id, "--runs-dir", str(three_months / "runs")], three_months)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _month_states(three_months, run_id) == ["completed"] * 3


def test_ctrl_c_stops_the_parallel_workers_with_one_line(workdir):
    _home_config(workdir, queued=True)
    env = child_env()
    env.update(_env(workdir), COLUMNS="200", PYTHONUNBUFFERED="1")  # lines as they are printed
    proc = subprocess.Popen(
        [str(BIN / "quantlab"), *BACKTEST, *TWO_MONTHS_PARALLEL],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    started = 0
    for line in proc.stdout:  # both workers started: each takes over a second for its first step
        started += "materializing" in line
        if started == 2:
            break
    proc.send_signal(2)  # SIGINT, as Ctrl-C at the terminal
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted (SIGINT)" in lines[0] and "quantlab runs resume" in lines[0], err
    run_id = _run_id(workdir)
    # Each month's fate as recorded: interrupted in its step, or missing when its worker had not
    # written anything yet; never "running".
    fates = _month_states(workdir, run_id)
    assert set(fates) <= {"interrupted", "missing"}, "\n".join(
        f"{p.parent.parent.name} {json.loads(p.read_text()).get('status')} {(json.loads(p.read_text()).get('error') or {}).get('reason')} {(json.loads(p.read_text()).get('error') or {}).get('message')}"
        for p in (workdir / "runs").glob("*/run_id=*/run.json")
    ) + str(fates)
    assert f": 2024-01 {fates[0]}, 2024-02 {fates[1]};" in lines[0], lines[0]
    assert "STARTED" not in _run_statuses(workdir, run_id) and "NOT_STARTED" not in _run_statuses(workdir, run_id)

    resumed = run_cli(["runs", "resume", run_id, "--runs-dir", str(workdir / "runs")], workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _month_states(workdir, run_id) == ["completed", "completed"]


def test_a_cli_run_is_re_executed_from_the_ui(workdir):
    _home_config(workdir, queued=False)
    proc = _backtest(workdir, "--from", "2024-01-01", "--to", "2024-01-31")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("run_id"))
    port = _free_port()
    webserver = [
        str(BIN / "dagster-webserver"),
        "-w",
        str(PROJECT / "workspace.yaml"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with _service(webserver, workdir):

        def cli_run():
            try:
                data = _graphql(
                    port,
                    "query($tags:[ExecutionTag!]){runsOrError(filter:{tags:$tags}){... on Runs{results{runId status canTerminate}}}}",
                    {"tags": [{"key": "quantlab/run_id", "value": run_id}]},
                )
            except OSError:
                return None
            return data["runsOrError"]["results"]

        [parent] = _wait_for(cli_run, 120, "the webserver")
        assert parent["status"] == "SUCCESS"
        launched = _graphql(
            port,
            """mutation($p:String!){launchRunReexecution(reexecutionParams:{parentRunId:$p,strategy:ALL_STEPS}){
                __typename ... on LaunchRunSuccess{run{runId}} ... on PythonError{message}
                ... on RunConfigValidationInvalid{errors{message}} ... on InvalidSubsetError{message}}}""",
            {"p": parent["runId"]},
        )["launchRunReexecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        child = launched["run"]["runId"]

        def finished():
            data = _graphql(port, "query($r:ID!){runOrError(runId:$r){... on Run{status}}}", {"r": child})
            status = data["runOrError"]["status"]
            return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

        assert _wait_for(finished, 180, "the re-executed run") == "SUCCESS"
    assert _month_states(workdir, run_id) == ["completed"]
    manifest = json.loads(next((workdir / "runs" / "2024-01").glob("run_id=*/run.json")).read_text())
    assert manifest["provenance"]["dagster_runs"]["paths"] == child  # the UI's run rewrote the month


def test_submit_queues_the_months_and_runs_wait_follows_them(workdir):
    _home_config(workdir, queued=True)
    submitted = _backtest(workdir, "--from", "2024-01-01", "--to", "2024-02-29", "--submit")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    run_id = submitted.stdout.strip().splitlines()[-1]
    assert "runs wait" in submitted.stderr
    assert _month_states(workdir, run_id) == ["missing", "missing"]  # queued, not run by the CLI
    daemon = [str(BIN / "dagster-daemon"), "run", "-w", str(PROJECT / "workspace.yaml")]
    with _service(daemon, workdir):
        waited = run_cli(["runs", "wait", run_id, "--runs-dir", str(workdir / "runs")], workdir, timeout=420)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert waited.stdout.count("completed") >= 2 and "Headline numbers" in waited.stdout
    assert _month_states(workdir, run_id) == ["completed", "completed"]


def test_submit_without_a_queue_is_one_line_and_creates_nothing(workdir):
    _home_config(workdir, queued=False)
    proc = _backtest(workdir, "--from", "2024-01-01", "--to", "2024-01-31", "--submit")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no run queue" in lines[0], proc.stderr
    assert not (workdir / "runs" / "_specs").exists()
