"""The `quantlab` CLI and the `dagster asset materialize` route, as real subprocesses."""

from __future__ import annotations

import json
import re
import shutil

import duckdb
import pytest

from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline_tests.helpers import run_cli

pytestmark = pytest.mark.slow

RUN_ID_RE = re.compile(r"run_id\S*:?\s+([0-9a-f-]{36})")


@pytest.fixture
def workdir(tmp_path, sample_db):
    (tmp_path / "data").mkdir()
    shutil.copy(sample_db, tmp_path / "data" / "alerts.duckdb")
    return tmp_path


def backtest(workdir, kind: str, *extra: str):
    return run_cli(
        [
            "backtest",
            kind,
            "--calls-from-duckdb",
            "data/alerts.duckdb",
            "--interval",
            "5m",
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-31",
            *extra,
        ],
        cwd=workdir,
    )


def run_id_of(stdout: str) -> str:
    match = RUN_ID_RE.search(stdout)
    assert match, stdout
    return match.group(1)


def test_path_only_backtest_end_to_end_and_seed_sql(workdir):
    proc = backtest(workdir, "path-only")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = run_id_of(proc.stdout)
    assert "2024-01" in proc.stdout and "paths" in proc.stdout  # progress per month and step
    rd = workdir / "runs" / "2024-01" / f"run_id={run_id}"
    assert (rd / "_SUCCESS").exists()
    assert RunDirectory.read_manifest(rd)["status"] == "completed"

    # The seed's analysis SQL runs unchanged over paths.parquet.
    paths = rd / "truth" / "paths.parquet"
    con = duckdb.connect()
    best_callers = con.execute(f"""
        SELECT caller_name, COUNT(*) as calls,
          AVG(CASE WHEN hit_2x THEN 1 ELSE 0 END) as hit_rate_2x,
          AVG(peak_multiple) as avg_peak_multiple, AVG(dd_bps) as avg_drawdown_bps
        FROM read_parquet('{paths}') GROUP BY caller_name HAVING calls >= 1
        ORDER BY hit_rate_2x DESC LIMIT 20""").fetchall()
    assert best_callers
    series = con.execute(f"""
        SELECT DATE_TRUNC('day', TIMESTAMP 'epoch' + alert_ts_ms * INTERVAL '1 millisecond') as day,
          COUNT(*) as calls, AVG(CASE WHEN hit_2x THEN 1 ELSE 0 END) as hit_rate_2x,
          AVG(peak_multiple) as avg_peak_multiple
        FROM read_parquet('{paths}') GROUP BY day ORDER BY day""").fetchall()
    assert series and all(row[0].month == 1 for row in series)


def test_two_policy_runs_and_the_compare_policies_sql(workdir):
    a = backtest(
        workdir, "policy", "--policy-id", "fixed-stop-5pct", "--policy", '{"kind":"fixed_stop","stop_loss_bps":500}'
    )
    assert a.returncode == 0, a.stdout + a.stderr
    (workdir / "trail.json").write_text(
        json.dumps({"kind": "trailing_stop", "activation_bps": 2000, "trail_bps": 1500})
    )
    b = backtest(workdir, "policy", "--policy-id", "trail-20-15", "--policy", "@trail.json")
    assert b.returncode == 0, b.stdout + b.stderr
    ta = workdir / "runs/2024-01" / f"run_id={run_id_of(a.stdout)}" / "policy/trades.parquet"
    tb = workdir / "runs/2024-01" / f"run_id={run_id_of(b.stdout)}" / "policy/trades.parquet"
    rows = (
        duckdb.connect()
        .execute(f"""
        WITH policy_a AS (SELECT * FROM read_parquet('{ta}')),
        policy_b AS (SELECT * FROM read_parquet('{tb}'))
        SELECT 'Policy A' as policy, AVG(realized_return_bps) as avg_return,
          AVG(CASE WHEN stop_out THEN 1 ELSE 0 END) as stop_out_rate FROM policy_a
        UNION ALL
        SELECT 'Policy B' as policy, AVG(realized_return_bps) as avg_return,
          AVG(CASE WHEN stop_out THEN 1 ELSE 0 END) as stop_out_rate FROM policy_b""")
        .fetchall()
    )
    assert [r[0] for r in rows] == ["Policy A", "Policy B"]
    assert all(r[1] is not None for r in rows)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--calls-from-duckdb", "data/nope.duckdb"], "nope.duckdb"),
        (["--calls-from-duckdb", "data/alerts.duckdb", "--alerts-table", "calls"], "calls"),
        (["--calls-from-duckdb", "data/alerts.duckdb", "--alerts-table", "x; DROP TABLE alerts"], "alerts_table"),
        (["--calls-from-duckdb", "data/alerts.duckdb", "--candles-from", "data/none.parquet"], "none.parquet"),
        (["--calls-from-duckdb", "data/alerts.duckdb", "--interval", "fast"], "interval"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(workdir, args, needle):
    proc = run_cli(["backtest", "path-only", *args, "--from", "2024-01-01", "--to", "2024-01-31"], cwd=workdir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workdir / "runs").exists()


def test_bad_window_and_bad_policy_are_refused(workdir):
    proc = backtest(workdir, "policy", "--policy-id", "x", "--policy", '{"kind":"fixed_stop","stop_loss_bps":-5}')
    assert proc.returncode == 2 and "stop_loss_bps" in proc.stderr
    proc = run_cli(["backtest", "path-only", "--from", "2024-02-01", "--to", "2024-01-01"], cwd=workdir)
    assert proc.returncode == 2 and "window" in proc.stderr
    assert not (workdir / "runs").exists()


def test_runs_create_then_dagster_asset_materialize(workdir):
    created = run_cli(
        [
            "runs",
            "create",
            "--run-type",
            "policy",
            "--calls-from-duckdb",
            "data/alerts.duckdb",
            "--policy-id",
            "fixed-5",
            "--policy",
            '{"kind":"fixed_stop","stop_loss_bps":500}',
            "--from",
            "2024-01-10",
            "--to",
            "2024-01-20",
        ],
        cwd=workdir,
    )
    assert created.returncode == 0, created.stderr
    run_id = created.stdout.strip().splitlines()[-1]
    assert "dagster asset materialize" in created.stderr
    assert not (workdir / "runs" / "2024-01").exists()  # spec + partition only

    proc = run_cli(
        [
            "asset",
            "materialize",
            "-m",
            "quantlab_pipeline.definitions",
            "--select",
            "alerts,paths,trades,summary,features,equity,portfolio,positions",  # what `runs create` printed
            "--partition",
            f"2024-01.policy.fixed-5.{run_id}",
        ],
        cwd=workdir,
        exe="dagster",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rd = workdir / "runs" / "2024-01" / f"run_id={run_id}"
    assert (rd / "_SUCCESS").exists()
    manifest = RunDirectory.read_manifest(rd)
    assert manifest["status"] == "completed"
    assert set(manifest["artifacts"]) >= {"alerts", "paths", "trades", "summary", "equity", "portfolio", "positions"}


def test_dagster_definitions_validate(tmp_path):
    proc = run_cli(["definitions", "validate", "-m", "quantlab_pipeline.definitions"], cwd=tmp_path, exe="dagster")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_optimize_lists_the_best_ranked_policies_of_a_large_grid(workdir):
    """A grid larger than the closing table: its 20 best ranked, every policy in the Parquet file."""
    grid = [
        {
            "kind": "fixed_stop",
            "stop_loss_bps": [500, 1000, 2000, 3000, 5000],
            "take_profit_bps": [2000, 5000, 10000, 20000, 50000, None],
        }
    ]
    proc = backtest(workdir, "optimize", "--sweep", json.dumps(grid))
    assert proc.returncode == 0, proc.stderr
    assert "the 20 best ranked of 30 policies (all callers); every policy: results/frontier.parquet" in proc.stdout
    ranks = re.findall(r"^│\s+(\d+) │ \{", proc.stdout, flags=re.MULTILINE)
    assert ranks == [str(r) for r in range(1, 21)], proc.stdout
    run_dir = RunDirectory(workdir / "runs", "2024-01", run_id_of(proc.stdout))
    assert run_dir.read_artifact("frontier").frame.height == 30
