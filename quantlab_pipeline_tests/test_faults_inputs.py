"""Inputs and settings that once ended in a traceback or did something silently (docs/faults.md,
docs/inputs.md): each is now one line and creates nothing, or does what it says."""

from __future__ import annotations

import json

import duckdb
import polars as pl
import pytest

from quantlab_pipeline_tests.conftest import PROJECT_DAGSTER_YAML
from quantlab_pipeline_tests.helpers import run_cli

pytestmark = pytest.mark.slow

POLICY = '{"kind":"fixed_stop","stop_loss_bps":500,"take_profit_bps":10000}'
WINDOW = ["--interval", "5m", "--from", "2024-01-01", "--to", "2024-01-31", "--runs-dir", "runs"]


def _path_only(workdir, *extra: str, table: str | None = None, env=None):
    args = ["backtest", "path-only", "--calls-from-duckdb", "data/alerts.duckdb", *WINDOW, *extra]
    if table:
        args += ["--alerts-table", table]
    return run_cli(args, workdir, env)


def _one_line(proc, code: int, *needles: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _nested(depth: int) -> str:
    policy = POLICY
    for _ in range(depth):
        policy = f'{{"kind":"combo","policies":[{policy}]}}'
    return policy


@pytest.mark.parametrize("depth", [400, 500, 5000])
def test_a_policy_nested_too_deep_is_one_line(workdir, depth):
    (workdir / "deep.json").write_text(_nested(depth))  # 5000 deep is longer than one argument may be
    policy = _nested(depth) if depth < 1000 else "@deep.json"
    proc = run_cli(
        [
            "backtest",
            "policy",
            "--calls-from-duckdb",
            "data/alerts.duckdb",
            *WINDOW,
            "--policy-id",
            "p",
            "--policy",
            policy,
        ],
        workdir,
    )
    _one_line(proc, 2, "--policy")
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("policy_id", ["../../x", "a\nb", "-x", "a/b", "x" * 49, ".hidden"])
def test_a_policy_id_that_could_not_be_a_label_is_one_line(workdir, policy_id):
    proc = run_cli(
        [
            "backtest",
            "policy",
            "--calls-from-duckdb",
            "data/alerts.duckdb",
            *WINDOW,
            "--policy-id",
            policy_id,
            "--policy",
            POLICY,
        ],
        workdir,
    )
    _one_line(proc, 2, "--policy-id")
    assert not (workdir / "runs").exists()


def test_dagster_home_a_file_or_relative_is_one_line_exit_2(workdir):
    (workdir / "home-file").write_text("")
    for home, needle in [(str(workdir / "home-file"), "not a directory"), ("rel/home", "absolute")]:
        proc = _path_only(workdir, env={"DAGSTER_HOME": home})
        _one_line(proc, 2, f"DAGSTER_HOME={home}", needle)
        assert not (workdir / "runs").exists() and not (workdir / "rel").exists()


def test_a_missing_dagster_home_gets_the_projects_queue_and_submit_says_no_daemon_runs(workdir):
    home = workdir / "new" / "home"
    proc = _path_only(workdir, "--submit", env={"DAGSTER_HOME": str(home)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (home / "dagster.yaml").read_text() == PROJECT_DAGSTER_YAML.read_text()
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: ")]
    assert f"note: created DAGSTER_HOME {home} with {PROJECT_DAGSTER_YAML}" in notes, proc.stderr
    assert any(line.startswith("note: --submit: no Dagster daemon") and "dagster-daemon run" in line for line in notes)
    assert len(notes) == 2, proc.stderr
    again = _path_only(workdir, "--submit", env={"DAGSTER_HOME": str(home)})
    assert again.returncode == 0 and "created DAGSTER_HOME" not in again.stderr  # said once


def _copy_table(workdir, name: str, where: str) -> None:
    with duckdb.connect(str(workdir / "data" / "alerts.duckdb")) as con:
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM alerts WHERE {where}")


def test_an_empty_alerts_table_is_refused_in_one_line_and_creates_nothing(workdir):
    _copy_table(workdir, "no_calls", "false")
    proc = _path_only(workdir, table="no_calls")
    _one_line(proc, 2, "table no_calls", "no rows")
    assert not (workdir / "runs").exists() and not (workdir / ".dagster").exists()


def test_a_month_without_calls_of_a_non_empty_table_completes_with_zero(workdir):
    """docs/inputs.md: the table holds calls, none in January: a completed month of 0 calls."""
    _copy_table(workdir, "february", "alert_ts_ms >= 1706745600000")  # 2024-02-01
    with duckdb.connect(str(workdir / "data" / "alerts.duckdb")) as con:
        con.execute("INSERT INTO february SELECT * REPLACE (1707000000000 AS alert_ts_ms) FROM alerts LIMIT 2")
    proc = _path_only(workdir, table="february")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (run_json,) = (workdir / "runs" / "2024-01").glob("run_id=*/run.json")
    assert json.loads(run_json.read_text())["status"] == "completed"
    assert (run_json.parent / "_SUCCESS").exists()
    assert pl.read_parquet(run_json.parent / "truth" / "paths.parquet").height == 0
    synced = run_cli(["backtest", "catalog-sync", "--runs-dir", "runs"], workdir)
    assert synced.returncode == 0, synced.stderr
    query = run_cli(["backtest", "catalog-query", "--format", "json"], workdir)
    ((row,),) = [json.loads(query.stdout)]
    assert (row["status"], row["calls_count"]) == ("completed", 0)
