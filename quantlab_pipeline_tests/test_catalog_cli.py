"""`quantlab backtest catalog-sync | catalog-query | catalog-archive` as real subprocesses."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import duckdb
import pytest

from quantlab_pipeline_tests.helpers import run_cli
from quantlab_pipeline_tests.test_catalog import key, make_run

pytestmark = pytest.mark.slow  # every test here runs the CLI as a subprocess

SEED_BLOCK = """\
✓ Initialized catalog tables
✓ Registered 1 run
✓ Updated 0 runs
✓ Removed 0 runs
✓ Rejected 0 runs
✓ Skipped 0 runs

Catalog Statistics:
  Total runs: 1
  Completed: 1
  Failed: 0
  By type: { "path-only": 1 }
  Total artifacts: 2
  By type: { "alerts": 1, "paths": 1 }
"""


def ql(cwd: Path, *args: str, env: dict[str, str] | None = None):
    return run_cli(["backtest", *args], cwd=cwd, env_extra=env)


def one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_seed_flow_sync_stats_then_query(tmp_path):
    run_dir = make_run(tmp_path / "runs")
    run_id = key(run_dir).run_id
    first = ql(tmp_path, "catalog-sync", "--stats")
    assert first.returncode == 0, first.stderr
    assert first.stdout == SEED_BLOCK
    assert (tmp_path / "data" / "backtest_catalog.duckdb").is_file()

    again = ql(tmp_path, "catalog-sync")
    assert again.stdout.splitlines() == [
        "✓ Registered 0 runs",
        "✓ Updated 0 runs",
        "✓ Removed 0 runs",
        "✓ Rejected 0 runs",
        "✓ Skipped 0 runs",
    ]

    listed = ql(tmp_path, "catalog-query", "--limit", "10")
    assert listed.returncode == 0 and run_id in listed.stdout and "path-only" in listed.stdout

    filtered = ql(tmp_path, "catalog-query", "--run-type", "path-only", "--status", "completed", "--format", "json")
    [row] = json.loads(filtered.stdout)
    assert (row["run_id"], row["month"], row["status"]) == (run_id, "2024-01", "completed")
    assert row["created_at"] == "2024-02-01T10:00:00Z" and row["window_from"] == "2024-01-01"

    path = ql(tmp_path, "catalog-query", "--run-id", run_id, "--artifact-type", "paths")
    assert path.stdout == f"{(run_dir / 'truth/paths.parquet').resolve()}\n"


def test_environment_picks_the_runs_dir_and_catalog(tmp_path):
    make_run(tmp_path / "elsewhere")
    env = {"QUANTLAB_RUNS_DIR": str(tmp_path / "elsewhere"), "QUANTLAB_CATALOG": str(tmp_path / "c.duckdb")}
    assert ql(tmp_path, "catalog-sync", env=env).stdout.splitlines()[1] == "✓ Registered 1 run"
    rows = json.loads(ql(tmp_path, "catalog-query", "--format", "json", env=env).stdout)
    assert len(rows) == 1 and not (tmp_path / "data").exists()
    # --runs-dir is an alias of --base-dir; flags beat the environment
    other = tmp_path / "other"
    make_run(other)
    make_run(other)
    out = ql(tmp_path, "catalog-sync", "--runs-dir", str(other), env=env).stdout.splitlines()
    assert out[:3] == ["✓ Registered 2 runs", "✓ Updated 0 runs", "✓ Removed 1 run"]


def test_sync_lists_rejections_with_reasons(tmp_path):
    bad = make_run(tmp_path / "runs")
    (bad / "truth/paths.parquet").unlink()
    make_run(tmp_path / "runs", "2024-02", status="failed")
    out = ql(tmp_path, "catalog-sync", "--stats")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[:5] == [
        "✓ Initialized catalog tables",
        "✓ Registered 1 run",
        "✓ Updated 0 runs",
        "✓ Removed 0 runs",
        "✓ Rejected 1 run",
    ]
    assert lines[5] == f"    2024-01/{bad.name}: artifact paths: truth/paths.parquet is missing"
    assert "  Completed: 0" in lines and "  Failed: 1" in lines and '  By type: { "path-only": 1 }' in lines
    assert "  Total artifacts: 0" in lines and "  By type: {}" in lines


def test_query_formats_filters_and_multi_month_artifacts(tmp_path):
    runs = tmp_path / "runs"
    run_id = str(uuid.uuid4())
    jan = make_run(runs, "2024-01", run_id=run_id, created_at="2024-03-01T08:00:00Z")
    feb = make_run(runs, "2024-02", run_id=run_id, created_at="2024-03-01T08:00:00Z")
    pol = make_run(runs, "2024-02", run_type="policy", policy_id="fixed-stop-5pct", created_at="2024-02-10T00:00:00Z")
    assert ql(tmp_path, "catalog-sync").returncode == 0

    paths = ql(tmp_path, "catalog-query", "--run-id", run_id, "--artifact-type", "paths").stdout.splitlines()
    assert paths == [str((d / "truth/paths.parquet").resolve()) for d in (jan, feb)]  # one per month
    one = ql(tmp_path, "catalog-query", "--run-id", run_id, "--month", "2024-02", "--artifact-type", "alerts")
    assert one.stdout.splitlines() == [str((feb / "inputs/alerts.parquet").resolve())]

    table = ql(tmp_path, "catalog-query", "--policy-id", "fixed-stop-5pct")
    assert key(pol).run_id in table.stdout and run_id not in table.stdout

    text = ql(
        tmp_path, "catalog-query", "--from-date", "2024-03-01", "--to-date", "2024-03-01", "--format", "csv"
    ).stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["run_id"], r["month"]) for r in rows] == [(run_id, "2024-01"), (run_id, "2024-02")]
    assert rows[0]["policy_id"] == "" and rows[0]["calls_count"] == "3"

    trades = json.loads(ql(tmp_path, "catalog-query", "--artifact-type", "trades", "--format", "json").stdout)
    assert [(t["run_id"], t["artifact_type"]) for t in trades] == [(key(pol).run_id, "trades")]
    assert ql(tmp_path, "catalog-query", "--month", "2023-01").stdout.strip() == "No runs match."
    assert json.loads(ql(tmp_path, "catalog-query", "--limit", "1", "--format", "json").stdout)[0]["run_id"] == run_id


@pytest.fixture(scope="module")
def synced(tmp_path_factory) -> tuple[Path, str]:
    """A project directory with one synced path-only run: `(cwd, run_id)`."""
    cwd = tmp_path_factory.mktemp("project")
    run_id = key(make_run(cwd / "runs")).run_id
    assert ql(cwd, "catalog-sync").returncode == 0
    return cwd, run_id


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--status", "bogus"], ["status: expected one of completed, failed", "'bogus'"]),
        (["--run-type", "path_only"], ["run_type: expected one of path-only, policy, optimization"]),
        (["--run-id", "abc"], ["run_id: expected a lowercase UUID4"]),
        (["--month", "2024-1"], ["month: expected YYYY-MM"]),
        (["--from-date", "2024-13-01"], ["from_date: expected a date YYYY-MM-DD"]),
        (["--to-date", "yesterday"], ["to_date: expected a date YYYY-MM-DD"]),
        (["--limit", "0"], ["--limit: expected a positive integer"]),
        (["--limit", "ten"], ["--limit: expected a positive integer"]),
        (["--format", "xml"], ["--format: expected one of table, json, csv"]),
        (["--artifact-type", "candles"], ["artifact_type: expected one of alerts, paths"]),
        (["--run-id", "RUN", "--artifact-type", "trades"], ["has no 'trades' artifact"]),
    ],
)
def test_bad_query_values_are_one_line_errors(synced, args, fragments):
    cwd, run_id = synced
    one_line_error(ql(cwd, "catalog-query", *[run_id if a == "RUN" else a for a in args]), *fragments)


def test_missing_catalog_tells_the_user_to_sync(tmp_path):
    one_line_error(ql(tmp_path, "catalog-query"), "not found", "catalog-sync")
    one_line_error(ql(tmp_path, "catalog-sync", "--base-dir", "nope"), "runs directory nope does not exist")


def test_injection_through_free_text_filters_matches_nothing(tmp_path):
    make_run(tmp_path / "runs")
    assert ql(tmp_path, "catalog-sync").returncode == 0
    for flag in ("--policy-id", "--git-branch"):
        out = ql(tmp_path, "catalog-query", flag, "x'; DROP TABLE runs; --", "--format", "json")
        assert out.returncode == 0 and json.loads(out.stdout) == []
    db = tmp_path / "data" / "backtest_catalog.duckdb"
    with duckdb.connect(str(db), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)


def test_archive_a_month(tmp_path):
    runs = tmp_path / "runs"
    jan = make_run(runs, "2024-01")
    feb = make_run(runs, "2024-02")
    assert ql(tmp_path, "catalog-sync").returncode == 0
    out = ql(tmp_path, "catalog-archive", "--month", "2024-01", "--to", "runs-archive-2024-01.tar.gz")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # 1 run dir: run.json, _SUCCESS, alerts, paths = 4 files
    assert lines[0].startswith("✓ Archived 1 run directory of 2024-01 to runs-archive-2024-01.tar.gz (4 files, ")
    assert lines[1:3] == ["✓ Verified archive: member list and sizes match", "✓ Removed runs/2024-01"]
    assert "✓ Removed 1 run" in lines
    assert not jan.exists() and feb.is_dir() and (tmp_path / "runs-archive-2024-01.tar.gz").is_file()
    rows = json.loads(ql(tmp_path, "catalog-query", "--format", "json").stdout)
    assert [r["month"] for r in rows] == ["2024-02"]
    again = ql(tmp_path, "catalog-archive", "--month", "2024-02", "--to", "runs-archive-2024-01.tar.gz")
    one_line_error(again, "already exists; refusing to overwrite")
    assert feb.is_dir()
    one_line_error(ql(tmp_path, "catalog-archive", "--month", "2024-13", "--to", "x.tar.gz"), "month: expected YYYY-MM")


def test_the_runs_table_fits_80_columns_with_short_run_ids_unless_wide(tmp_path):
    run_id = str(uuid.uuid4())
    make_run(tmp_path / "runs", "2024-01", run_type="policy", run_id=run_id, policy_id="fixed-stop-5pct-long-name")
    assert ql(tmp_path, "catalog-sync").returncode == 0
    narrow = ql(tmp_path, "catalog-query", env={"COLUMNS": "80"})
    lines = narrow.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in narrow.stdout, narrow.stdout
    [row] = [line for line in lines if line.startswith(run_id[:8])]
    assert row.startswith(f"{run_id[:8]}  2024-01  policy  ") and run_id not in narrow.stdout, narrow.stdout
    assert "fixed-" in row and "ng-nam" in narrow.stdout  # the policy id wrapped, whole
    assert lines[-1] == "run ids: first 8 characters (--wide or --format json for the full ones)"
    wide = ql(tmp_path, "catalog-query", "--wide", env={"COLUMNS": "80"})
    assert run_id in wide.stdout and "run ids: first" not in wide.stdout
