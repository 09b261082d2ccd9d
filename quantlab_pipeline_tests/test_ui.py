"""The Dagster surface as its users meet it: `dg` commands, and the UI in a real browser.

The UI test starts `dg dev` on a temporary project state (instance, runs directory, catalog, sample
data, one policy backtest of 2024-01 done with the CLI), asserts through the webserver's GraphQL API
what a researcher must find there, and opens the pages in headless Chromium: they must render with
no console error, and three screenshots are kept (`QUANTLAB_UI_SCREENSHOTS=DIR` to keep them
elsewhere than the test's temporary folder).
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

from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline_tests.browser import Browser, chromium_or_skip
from quantlab_pipeline_tests.helpers import BIN, run_cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]  # the dg project: pyproject.toml's [tool.dg]
POLICY = '{"kind":"fixed_stop","stop_loss_bps":500}'
BACKTEST_ASSETS = {"run_spec", "alerts", "paths", "trades", "summary", "frontier"}
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
    assert {"path_only_job", "policy_job", "optimization_job", "catalog_sync_job"} <= {j["name"] for j in defs["jobs"]}
    assert {"paths:no_look_ahead", "backtest_catalog:catalog_artifacts_verified"} <= {
        c["key"] for c in defs["asset_checks"]
    }
    assert [s["name"] for s in defs["sensors"]] == ["catalog_sync_sensor"]


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

    proc = dg(["launch", "--assets", "alerts,paths", "--partition", f"2024-01|{run_id}"], cwd=workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rd = workdir / "runs" / "2024-01" / f"run_id={run_id}"
    assert (rd / "_SUCCESS").exists()
    manifest = RunDirectory.read_manifest(rd)
    assert manifest["status"] == "completed" and set(manifest["artifacts"]) >= {"alerts", "paths"}


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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "QUANTLAB_"))}
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
  results { jobName status tags { key value } } } } }"""


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
    ... on MarkdownMetadataEntry { mdStr } } } } } }"""


def latest_metadata(ui: UI, asset: str) -> dict[str, dict[str, Any]]:
    (mat,) = ui.graphql(MATERIALIZATION, key=[asset])["assetOrError"]["assetMaterializations"]
    assert mat["partition"] == f"2024-01|{ui.run_id}"
    return {e["label"]: e for e in mat["metadataEntries"]}


def test_materializations_describe_their_columns(ui):
    for asset, some in (("paths", {"hit_2x", "peak_multiple", "p0"}), ("trades", {"exit_reason", "stop_out"})):
        columns = latest_metadata(ui, asset)["dagster/column_schema"]["schema"]["columns"]
        assert some <= {c["name"] for c in columns}
        assert all(c["description"] for c in columns), [c["name"] for c in columns if not c["description"]]


def test_summary_headline_is_a_markdown_table_with_charts(ui):
    markdown = latest_metadata(ui, "summary")["headline"]["mdStr"]
    assert re.search(r"^\| calls \|.*\| win rate \|", markdown, re.M)
    assert len(re.findall(r"!\[[^\]]+\]\(data:image/png;base64,", markdown)) == 5


# -- in the browser -------------------------------------------------------------------------------

CLICK = """(() => {
  const hit = Array.from(document.querySelectorAll('*')).filter(e => e.textContent.trim() === %s).pop();
  if (hit) hit.click();
  return Boolean(hit);
})()"""
DIALOG_IMAGES = """Array.from(document.querySelectorAll('[role=dialog] img'))
  .filter(i => i.complete && i.naturalWidth > 100).length"""


def text_shown(*texts: str) -> str:
    return " && ".join(f"document.body && document.body.innerText.includes({json.dumps(t)})" for t in texts)


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_or_skip()


def test_the_pages_render_without_errors(ui, chromium, tmp_path):
    shots = Path(os.environ.get("QUANTLAB_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    browser = Browser(chromium, tmp_path / "profile", timeout_s=150, window=(1400, 1000))
    try:
        tab = browser.open_page()

        def show(path: str, ready: str) -> None:
            browser.navigate(ui.url + path, tab)
            shown = browser.wait_until(ready, tab, timeout_s=30)
            assert shown, (path, browser.evaluate("document.body.innerText.slice(0, 2000)", tab))

        show("/locations/quantlab_pipeline/asset-groups/backtest/lineage", text_shown(*sorted(BACKTEST_ASSETS)))
        browser.screenshot(tab, shots / "1-lineage.png")

        show("/assets/paths?view=checks", text_shown("manifest_consistent", "no_look_ahead", "Succeeded"))
        browser.screenshot(tab, shots / "2-paths-checks.png")

        show(f"/runs?q%5B%5D=tag%3Aquantlab%2Frun_id%3D{ui.run_id}", text_shown("policy_job", ui.run_id[:8]))

        show("/assets/summary?view=events", text_shown("[Show Markdown]"))
        assert browser.evaluate(CLICK % json.dumps("[Show Markdown]"), tab)
        assert browser.wait_until(f"{DIALOG_IMAGES} >= 5", tab, timeout_s=20)
        time.sleep(0.5)  # the dialog's opening transition
        browser.screenshot(tab, shots / "3-summary-headline.png")
    finally:
        browser.close()
    assert browser.errors(allowed_origins=(ui.url, "data:", "blob:")) == []
    for png in shots.glob("*.png"):
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 20_000, png
