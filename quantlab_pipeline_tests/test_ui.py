"""The Dagster surface as its users meet it: `dg` commands, and the UI in a real browser.

The UI tests start `dg dev` on a temporary project state (instance, runs directory, catalog, sample
data, one policy backtest of 2024-01 done with the CLI) and assert through the webserver's GraphQL
API what a researcher must find there: one lineage graph, checks with results, run tags, column
descriptions, the summary's headline and report link. Headless Chromium then opens the pages: they must render
with no console error, and screenshots of the lineage, the Checks tab of `paths`, the summary's
headline and the `new_backtest_job` launchpad are kept (`QUANTLAB_UI_SCREENSHOTS=DIR` to keep them
elsewhere than the test's temporary folder). Last, a backtest is started as a UI user would: a
launch of `new_backtest_job`, whose month run the daemon then queues and runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    build_run_status_sensor_context,
)

from quantlab_pipeline.orchestration import launchpad
from quantlab_pipeline.orchestration.defs import build_defs
from quantlab_pipeline.orchestration.resources import RunStoreResource
from quantlab_pipeline.orchestration.settings import Settings
from quantlab_pipeline.storage.paths import ProjectPaths
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import read_spec
from quantlab_pipeline_tests.browser import Browser, chromium_or_skip
from quantlab_pipeline_tests.helpers import BIN, child_env, run_cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]  # the dg project: pyproject.toml's [tool.dg]
POLICY = '{"kind":"fixed_stop","stop_loss_bps":500}'
BACKTEST_ASSETS = {
    "run_spec",
    "alerts",
    "paths",
    "features",
    "trades",
    "summary",
    "frontier",
    "policy_daily",
    "overfitting",
    "walkforward",
    "equity",
    "positions",
    "portfolio",
}
# An instance without telemetry: the UI would otherwise load a script from the internet.
INSTANCE_YAML = "telemetry:\n  enabled: false\n"


def instance_home(workdir: Path) -> Path:
    """run_cli's DAGSTER_HOME, configured like the project's dagster.yaml where the UI cares."""
    home = workdir / ".dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    return home


@pytest.fixture
def workdir(tmp_path, sample_db) -> Path:
    (tmp_path / "data").mkdir()
    shutil.copy(sample_db, tmp_path / "data" / "alerts.duckdb")
    return tmp_path


def dg(args: list[str], cwd: Path):
    """`dg` pointed at this repository's project from another folder, so runs land in `cwd`."""
    instance_home(cwd)
    return run_cli([*args, "--target-path", str(REPO)], cwd=cwd, exe="dg")


# -- dg -------------------------------------------------------------------------------------------


def test_dg_list_defs_loads_the_project(tmp_path):
    proc = dg(["list", "defs", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.strip() == ""  # no venv-mismatch or supersession warning
    defs = json.loads(proc.stdout)
    assert {a["asset_key"] for a in defs["assets"]} == {*BACKTEST_ASSETS, "backtest_catalog"}
    assert {j["name"] for j in defs["jobs"]} == {
        "run_spec_job",
        "path_only_job",
        "policy_job",
        "optimization_job",
        "catalog_sync_job",
        "new_backtest_job",
    }
    assert {"paths:no_look_ahead", "backtest_catalog:catalog_artifacts_verified"} <= {
        c["key"] for c in defs["asset_checks"]
    }
    assert {s["name"] for s in defs["sensors"]} == {"catalog_sync_sensor", "new_backtest_months_sensor"}


def test_runs_create_then_dg_launch(workdir):
    created = run_cli(
        [
            "runs",
            "create",
            "--run-type",
            "path-only",
            "--calls-from-duckdb",
            "data/alerts.duckdb",
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-31",
        ],
        cwd=workdir,
    )
    assert created.returncode == 0, created.stderr
    run_id = created.stdout.strip().splitlines()[-1]

    proc = dg(
        ["launch", "--assets", "alerts,paths,features", "--partition", f"2024-01.path-only.{run_id}"], cwd=workdir
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rd = workdir / "runs" / "2024-01" / f"run_id={run_id}"
    assert (rd / "_SUCCESS").exists()
    manifest = RunDirectory.read_manifest(rd)
    assert manifest["status"] == "completed" and set(manifest["artifacts"]) >= {"alerts", "paths"}


# -- the launchpad job ---------------------------------------------------------------------------


def launch_new_backtest(instance: DagsterInstance, runs: Path, config: dict[str, Any]):
    """`new_backtest_job` as the launchpad runs it; its run store named in the run config (the
    code location's default points elsewhere, so the months must inherit it)."""
    defs = Definitions.merge(
        build_defs(Settings(ProjectPaths(runs_dir=runs.parent / "elsewhere"))), launchpad.LAUNCHPAD
    )
    run_config = {
        "ops": {"create_backtest": {"config": config}},
        "resources": {"run_store": {"config": {"runs_dir": str(runs)}}},
    }
    result = defs.resolve_job_def("new_backtest_job").execute_in_process(
        instance=instance, run_config=run_config, raise_on_error=False
    )
    return defs, result


def test_new_backtest_job_creates_the_run_and_its_months_follow(sample_db, tmp_path, dagster_instance):
    runs = tmp_path / "runs"
    config = {"run_type": "path_only", "alerts": str(sample_db), "window_from": "2024-01-20", "window_to": "2024-02-10"}
    defs, result = launch_new_backtest(dagster_instance, runs, config)
    assert result.success
    run_id = result.output_for_node("create_backtest")
    assert read_spec(runs, run_id).months() == ["2024-01", "2024-02"]
    keys = [f"{month}.path-only.{run_id}" for month in ("2024-01", "2024-02")]
    assert dagster_instance.get_dynamic_partitions("run_month") == keys
    spec_event = dagster_instance.get_latest_materialization_event(AssetKey("run_spec"))
    assert spec_event is not None and spec_event.dagster_event.partition == keys[-1]
    launcher = dagster_instance.get_run_by_id(result.run_id)
    assert launcher.tags["quantlab/run_id"] == run_id

    success = next(e for e in result.all_events if e.event_type == DagsterEventType.RUN_SUCCESS)
    sensor = defs.resolve_sensor_def("new_backtest_months_sensor")
    context = build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=success,
        dagster_instance=dagster_instance,
        dagster_run=launcher,
        resources={"run_store": RunStoreResource(runs_dir=str(runs.parent / "elsewhere"))},
    )
    requests = list(sensor(context))
    assert [(r.job_name, r.partition_key, r.run_key, r.tags["quantlab/month"]) for r in requests] == [
        ("path_only_job", key, key, key[:7]) for key in keys
    ]
    assert all(r.run_config == {"resources": {"run_store": {"config": {"runs_dir": str(runs)}}}} for r in requests)

    first = requests[0]
    month = defs.resolve_job_def(first.job_name).execute_in_process(
        instance=dagster_instance, partition_key=first.partition_key, run_config=first.run_config, tags=first.tags
    )
    assert month.success
    assert (runs / "2024-01" / f"run_id={run_id}" / "_SUCCESS").exists()
    assert not (runs.parent / "elsewhere").exists()


def test_the_launcher_run_lists_its_months_with_links_to_their_runs(sample_db, tmp_path, dagster_instance):
    config = {"run_type": "path_only", "alerts": str(sample_db), "window_from": "2024-01-20", "window_to": "2024-02-10"}
    _, result = launch_new_backtest(dagster_instance, tmp_path / "runs", config)
    run_id = result.output_for_node("create_backtest")
    [output] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_OUTPUT]
    metadata = {k: v.value for k, v in output.step_output_data.metadata.items()}
    assert metadata["quantlab_run_id"] == run_id
    assert metadata["all_month_runs"] == f"/runs?q%5B%5D=tag%3Aquantlab%2Frun_id%3D{run_id}"
    table = metadata["month_runs"].splitlines()
    assert table[:2] == ["| month | partition | runs |", "| --- | --- | --- |"]
    assert table[2:] == [
        f"| {month} | `{month}.path-only.{run_id}` | [path_only_job runs]"
        f"(/runs?q%5B%5D=tag%3Adagster%2Fpartition%3D{month}.path-only.{run_id}) |"
        for month in ("2024-01", "2024-02")
    ]


def test_new_backtest_job_refuses_an_incomplete_form_and_creates_nothing(sample_db, tmp_path, dagster_instance):
    runs = tmp_path / "runs"
    _, result = launch_new_backtest(dagster_instance, runs, {"run_type": "policy", "alerts": str(sample_db)})
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "window" in failure.step_failure_data.error.message.splitlines()[0]
    assert not runs.exists()
    assert dagster_instance.get_dynamic_partitions("run") == []


# -- the UI ---------------------------------------------------------------------------------------


@dataclass
class UI:
    url: str
    workdir: Path
    run_id: str
    log: Path

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            answer = json.load(reply)
        assert "errors" not in answer, answer["errors"]
        return answer["data"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """`dg dev` and its webserver, daemon and code servers share its process group: Ctrl-C, then kill."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def ui(tmp_path_factory, sample_db) -> Iterator[UI]:
    workdir = tmp_path_factory.mktemp("ui")
    (workdir / "data").mkdir()
    shutil.copy(sample_db, workdir / "data" / "alerts.duckdb")
    home = instance_home(workdir)
    proc = run_cli(
        [
            "backtest",
            "policy",
            "--calls-from-duckdb",
            "data/alerts.duckdb",
            "--policy-id",
            "fixed-stop-5pct",
            "--policy",
            POLICY,
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-31",
        ],
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"run_id\S*:?\s+([0-9a-f-]{36})", proc.stdout)
    assert match, proc.stdout

    port = free_port()
    env = child_env()
    env.update(
        DAGSTER_HOME=str(home),
        # `dg dev` runs from the project root: the state it shows is named absolutely.
        QUANTLAB_RUNS_DIR=str(workdir / "runs"),
        QUANTLAB_CATALOG=str(workdir / "data" / "backtest_catalog.duckdb"),
        QUANTLAB_CATALOG_SENSOR_INTERVAL="5",
    )
    log = workdir / "dg-dev.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(BIN / "dg"), "dev", "--target-path", str(REPO), "--port", str(port)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        handle = UI(f"http://127.0.0.1:{port}", workdir, match.group(1), log)
        wait_for_code_location(handle, server)
        handle.graphql("mutation { setNuxSeen }")  # the one-time "join the community" dialog
        yield handle
    finally:
        stop(server)


def wait_for_code_location(ui: UI, server: subprocess.Popen, timeout_s: float = 120) -> None:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        assert server.poll() is None, f"dg dev exited: {ui.log.read_text()[-3000:]}"
        try:
            if ui.graphql("{ assetNodes { id } }")["assetNodes"]:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(1)
    raise AssertionError(f"the UI did not load the project in {timeout_s:.0f} s: {ui.log.read_text()[-3000:]}")


def components(nodes: list[dict[str, Any]]) -> list[set[str]]:
    """The lineage graph's connected pieces (edges taken both ways), largest first."""
    edges: dict[str, set[str]] = {}
    for node in nodes:
        key = node["assetKey"]["path"][-1]
        for dep in node["dependencyKeys"]:
            edges.setdefault(key, set()).add(dep["path"][-1])
            edges.setdefault(dep["path"][-1], set()).add(key)
        edges.setdefault(key, set())
    pieces: list[set[str]] = []
    for start in edges:
        if any(start in piece for piece in pieces):
            continue
        piece, todo = set(), [start]
        while todo:
            key = todo.pop()
            if key not in piece:
                piece.add(key)
                todo.extend(edges[key] - piece)
        pieces.append(piece)
    return sorted(pieces, key=len, reverse=True)


ASSET_NODES = "{ assetNodes { assetKey { path } groupName dependencyKeys { path } } }"


def test_one_lineage_graph_of_the_backtest_group_and_the_catalog(ui):
    nodes = ui.graphql(ASSET_NODES)["assetNodes"]
    groups = {n["assetKey"]["path"][-1]: n["groupName"] for n in nodes}
    assert {k for k, g in groups.items() if g == "backtest"} == BACKTEST_ASSETS
    assert groups["backtest_catalog"] == "catalog"
    assert components(nodes) == [{*BACKTEST_ASSETS, "backtest_catalog"}]
    # It reads as the pipeline: the spec feeds alerts only (no configuration edge to every
    # artifact), and the catalog follows the last artifact of each run type's chain.
    upstream = {n["assetKey"]["path"][-1]: {d["path"][-1] for d in n["dependencyKeys"]} for n in nodes}
    assert [k for k, deps in upstream.items() if "run_spec" in deps] == ["alerts"]
    assert upstream["backtest_catalog"] == {"features", "summary", "portfolio", "frontier", "walkforward"}


CHECKS = """query ($key: [String!]!) { assetNodeOrError(assetKey: {path: $key}) { ... on AssetNode {
  assetChecksOrError { ... on AssetChecks { checks { name blocking
    executionForLatestMaterialization { status evaluation { success } } } } } } } }"""


def check_results(ui: UI, asset: str) -> dict[str, str | None]:
    checks = ui.graphql(CHECKS, key=[asset])["assetNodeOrError"]["assetChecksOrError"]["checks"]
    return {c["name"]: (c["executionForLatestMaterialization"] or {}).get("status") for c in checks}


def test_every_materialized_backtest_asset_has_passing_checks(ui):
    for asset in ("alerts", "paths", "trades", "summary"):
        results = check_results(ui, asset)
        assert results and set(results.values()) == {"SUCCEEDED"}, (asset, results)
    assert {"manifest_consistent", "no_look_ahead", "excluded_share"} <= set(check_results(ui, "paths"))
    # The sensor (every 5 s here) catalogues the run; the sync's verification check runs with it.
    until = time.monotonic() + 90
    while check_results(ui, "backtest_catalog")["catalog_artifacts_verified"] != "SUCCEEDED":
        assert time.monotonic() < until, check_results(ui, "backtest_catalog")
        time.sleep(2)


RUNS = """query ($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { ... on Runs {
  results { runId jobName status tags { key value } } } } }"""


def test_cli_runs_carry_the_quantlab_tags(ui):
    runs = ui.graphql(RUNS, tags=[{"key": "quantlab/run_id", "value": ui.run_id}])["runsOrError"]["results"]
    assert [(r["jobName"], r["status"]) for r in runs] == [("policy_job", "SUCCESS")]
    tags = {t["key"]: t["value"] for t in runs[0]["tags"]}
    assert {k: tags.get(k) for k in ("quantlab/run_type", "quantlab/policy_id", "quantlab/month")} == {
        "quantlab/run_type": "policy",
        "quantlab/policy_id": "fixed-stop-5pct",
        "quantlab/month": "2024-01",
    }
    by_type = ui.graphql(RUNS, tags=[{"key": "quantlab/run_type", "value": "policy"}])["runsOrError"]["results"]
    assert len(by_type) == 1


MATERIALIZATION = """query ($key: [String!]!) { assetOrError(assetKey: {path: $key}) { ... on Asset {
  assetMaterializations(limit: 1) { partition metadataEntries { label
    ... on TableSchemaMetadataEntry { schema { columns { name description } } }
    ... on PathMetadataEntry { path } ... on TextMetadataEntry { text }
    ... on MarkdownMetadataEntry { mdStr } } } } } }"""


def latest_metadata(ui: UI, asset: str) -> dict[str, dict[str, Any]]:
    (mat,) = ui.graphql(MATERIALIZATION, key=[asset])["assetOrError"]["assetMaterializations"]
    assert mat["partition"] == f"2024-01.policy.fixed-stop-5pct.{ui.run_id}"
    return {e["label"]: e for e in mat["metadataEntries"]}


def test_materializations_describe_their_columns(ui):
    for asset, some in (("paths", {"hit_2x", "peak_multiple", "p0"}), ("trades", {"exit_reason", "stop_out"})):
        columns = latest_metadata(ui, asset)["dagster/column_schema"]["schema"]["columns"]
        assert some <= {c["name"] for c in columns}
        assert all(c["description"] for c in columns), [c["name"] for c in columns if not c["description"]]


def test_summary_headline_is_a_markdown_table_and_links_the_report(ui):
    metadata = latest_metadata(ui, "summary")
    markdown = metadata["headline"]["mdStr"]
    assert re.search(r"^\| calls \|.*\| win rate \|", markdown, re.M)
    assert "data:image" not in markdown  # the charts are the report's (docs/reports.md)
    assert metadata["report"]["path"] == str(ui.workdir / "runs" / "reports" / f"{ui.run_id}.html")
    assert metadata["report_command"]["text"] == f"quantlab report {ui.run_id} --runs-dir {ui.workdir / 'runs'}"


# -- in the browser -------------------------------------------------------------------------------


def dagster_ui_noise(error: str, ws_url: str) -> bool:
    """What Dagster 1.13's own front end logs whatever the project: its Apollo client's deprecation
    notice for `useLazyQuery(variables)` (Apollo error 103); and Chromium's report that a page being
    left closed its GraphQL subscription socket while it was still opening (the UI opens it on load;
    the test moves on as soon as a page's text is drawn, which on a loaded machine can be first)."""
    if error.startswith("console.warning:") and "go.apollo.dev/c/err" in error and "useLazyQuery" in error:
        return True
    return (
        error == f"WebSocket connection to '{ws_url}' failed: WebSocket is closed before the connection is established."
    )


def test_only_a_left_pages_socket_is_noise():
    ws = "ws://127.0.0.1:3000/graphql"
    closed = "failed: WebSocket is closed before the connection is established."
    assert dagster_ui_noise(f"WebSocket connection to '{ws}' {closed}", ws)
    assert not dagster_ui_noise(f"WebSocket connection to 'ws://elsewhere:80/graphql' {closed}", ws)
    assert not dagster_ui_noise(f"WebSocket connection to '{ws}' failed: Error during WebSocket handshake: 502", ws)
    assert not dagster_ui_noise("console.error: Uncaught TypeError", ws)


def text_shown(*texts: str) -> str:
    return " && ".join(f"document.body && document.body.innerText.includes({json.dumps(t)})" for t in texts)


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_or_skip()


def test_the_pages_render_without_errors(ui, chromium, tmp_path):
    shots = Path(os.environ.get("QUANTLAB_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    browser = Browser(
        chromium, tmp_path / "profile", timeout_s=150, window=(1400, 2000)
    )  # tall: the group graph has 11 assets
    try:
        tab = browser.open_page()

        def show(path: str, ready: str) -> None:
            browser.navigate(ui.url + path, tab)
            shown = browser.wait_until(ready, tab, timeout_s=30)
            assert shown, (path, browser.evaluate("document.body.innerText.slice(0, 2000)", tab))

        # The group's graph, with the catalog drawn as its downstream neighbour in group `catalog`.
        lineage = text_shown(*sorted(BACKTEST_ASSETS), "backtest_catalog")
        show("/locations/quantlab_pipeline/asset-groups/backtest/lineage", lineage)
        browser.screenshot(tab, shots / "1-lineage.png")

        show("/assets/paths?view=checks", text_shown("manifest_consistent", "no_look_ahead", "Succeeded"))
        browser.screenshot(tab, shots / "2-paths-checks.png")

        # The headline table is drawn in place (small, no pictures), beside the report's path and command.
        show("/assets/summary?view=events", text_shown("tail capture", f"reports/{ui.run_id}.html", "quantlab report"))
        browser.screenshot(tab, shots / "3-summary-headline.png")

        show("/locations/quantlab_pipeline/jobs/new_backtest_job/playground", text_shown("create_backtest"))
        browser.screenshot(tab, shots / "4-new-backtest-launchpad.png")

        show(f"/runs?q%5B%5D=tag%3Aquantlab%2Frun_id%3D{ui.run_id}", text_shown("policy_job", ui.run_id[:8]))
    finally:
        browser.close()
    ws_url = ui.url.replace("http://", "ws://", 1).rstrip("/") + "/graphql"
    errors = [e for e in browser.errors(allowed_origins=(ui.url, "data:", "blob:")) if not dagster_ui_noise(e, ws_url)]
    assert errors == [], "\n".join(errors)
    for png in shots.glob("*.png"):
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 20_000, png


# -- the launchpad, end to end (last: it adds a run the tests above do not expect) ---------------


LAUNCH = """mutation ($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
RUN = "query ($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } } } }"


def wait_for_run(ui: UI, run_id: str, timeout_s: float) -> dict[str, str]:
    """The tags of Dagster run `run_id` once it succeeded (queued, launched by the daemon)."""
    until = time.monotonic() + timeout_s
    while True:
        run = ui.graphql(RUN, id=run_id)["runOrError"]
        assert run["status"] not in ("FAILURE", "CANCELED"), (run, ui.log.read_text()[-3000:])
        if run["status"] == "SUCCESS":
            return {t["key"]: t["value"] for t in run["tags"]}
        assert time.monotonic() < until, run
        time.sleep(1)


def test_a_backtest_started_from_the_launchpad_runs_its_month(ui):
    config = {
        "run_type": "path_only",
        "alerts": str(ui.workdir / "data" / "alerts.duckdb"),
        "window_from": "2024-02-01",
        "window_to": "2024-02-29",
    }
    params = {
        "selector": {
            "repositoryLocationName": "quantlab_pipeline",
            "repositoryName": "__repository__",
            "jobName": "new_backtest_job",
        },
        "runConfigData": {"ops": {"create_backtest": {"config": config}}},
    }
    launched = ui.graphql(LAUNCH, params=params)["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = wait_for_run(ui, launched["run"]["runId"], timeout_s=120)["quantlab/run_id"]
    # new_backtest_months_sensor (every 5 s) requests the month; the daemon launches it.
    until = time.monotonic() + 60
    while True:
        runs = ui.graphql(RUNS, tags=[{"key": "quantlab/run_id", "value": run_id}])["runsOrError"]["results"]
        months = [r for r in runs if r["jobName"] == "path_only_job"]
        if months:
            break
        assert time.monotonic() < until, f"no month run was requested: {runs}"
        time.sleep(1)
    assert len(months) == 1
    tags = wait_for_run(ui, months[0]["runId"], timeout_s=180)
    assert tags["dagster/partition"] == f"2024-02.path-only.{run_id}" and tags["quantlab/month"] == "2024-02"
    rd = ui.workdir / "runs" / "2024-02" / f"run_id={run_id}"
    assert RunDirectory.read_manifest(rd)["status"] == "completed" and (rd / "_SUCCESS").exists()
