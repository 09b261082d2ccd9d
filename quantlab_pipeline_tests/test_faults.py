"""The fault-injection suite (docs/lifecycle.md "When a run is interrupted"): real `quantlab` and `dagster`
processes killed or interrupted at chosen writes (`QUANTLAB_FAULT`), then seen with
`quantlab runs status` and finished with `quantlab runs resume`.

Every case ends in a state the user can see and recover from with one command: no hang, no
live run deleted, no incomplete run in the catalog, and no row lost (a resumed run holds exactly
the rows of an uninterrupted one).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time

import polars as pl
import pytest

from quantlab_pipeline_tests.helpers import BIN, child_env, run_cli

pytestmark = pytest.mark.slow

POLICY = ["--policy-id", "p", "--policy", '{"kind":"fixed_stop","stop_loss_bps":500,"take_profit_bps":10000}']
WINDOW = ["--interval", "5m", "--from", "2024-01-01", "--to", "2024-01-31"]


def backtest(workdir, fault: str | None = None, *extra: str):
    env = {"QUANTLAB_FAULT": fault} if fault else None
    return run_cli(
        ["backtest", "policy", "--calls-from-duckdb", "data/alerts.duckdb", *WINDOW, *POLICY, *extra], workdir, env
    )


def only_run_id(workdir) -> str:
    [spec] = (workdir / "runs" / "_specs").glob("*.json")
    return spec.stem


def status(workdir, run_id: str) -> list[dict]:
    proc = run_cli(["runs", "status", run_id, "--format", "json"], workdir)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def trades_rows(workdir, run_id: str) -> int:
    return pl.read_parquet(workdir / "runs" / "2024-01" / f"run_id={run_id}" / "policy/trades.parquet").height


@pytest.fixture(scope="module")
def clean_trades(tmp_path_factory, sample_db) -> int:
    """The rows an uninterrupted run writes: what every resumed run must hold too."""
    workdir = tmp_path_factory.mktemp("clean")
    (workdir / "data").mkdir()
    shutil.copy(sample_db, workdir / "data" / "alerts.duckdb")
    proc = backtest(workdir)
    assert proc.returncode == 0, proc.stderr
    return trades_rows(workdir, only_run_id(workdir))


@pytest.mark.parametrize("point", ["alerts.parquet", "paths.parquet", "trades.parquet", "summary.parquet", "_SUCCESS"])
def test_kill_9_at_each_write_is_seen_as_interrupted_and_resumed(workdir, point, clean_trades):
    killed = backtest(workdir, f"KILL:{point}")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    run_id = only_run_id(workdir)
    run_dir = workdir / "runs" / "2024-01" / f"run_id={run_id}"
    [month] = status(workdir, run_id)
    assert month["state"] == "interrupted", month  # the writer is gone: not "running" for ever
    assert not (run_dir / "_SUCCESS").exists()

    resumed = run_cli(["runs", "resume", run_id], workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [m["state"] for m in status(workdir, run_id)] == ["completed"]
    assert not [p for p in run_dir.rglob("*.tmp")]  # temp leftovers are cleaned, never archived
    assert (run_dir / "logs" / "stderr.txt").exists()
    assert trades_rows(workdir, run_id) == clean_trades  # no row lost

    synced = run_cli(["backtest", "catalog-sync"], workdir)
    assert synced.returncode == 0 and "Registered 1 run" in synced.stdout, synced.stdout + synced.stderr
    # The killed attempt's Dagster run no longer claims to be running.
    statuses = _dagster_run_statuses(workdir)
    assert "STARTED" not in statuses, statuses


def _dagster_run_statuses(workdir) -> list[str]:
    """Statuses of every Dagster run of the instance (SQLite, read-only)."""
    db = workdir / ".dagster" / "storage" / "history" / "runs.db"  # the project config's state folder
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return [row[0] for row in con.execute("SELECT status FROM runs")]


def test_sigterm_is_recorded_as_interrupted_with_exit_143_and_one_line(workdir, clean_trades):
    proc = backtest(workdir, "TERM:paths.parquet")
    assert proc.returncode == 143, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted (SIGTERM)" in lines[0] and "quantlab runs resume" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    run_id = only_run_id(workdir)
    run_dir = workdir / "runs" / "2024-01" / f"run_id={run_id}"
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"]["reason"] == "interrupted"
    errors = pl.read_parquet(run_dir / "errors/errors.parquet").filter(pl.col("level") == "error")
    assert errors.get_column("reason").to_list() == ["interrupted"]
    assert "interrupted" in (run_dir / "logs/stderr.txt").read_text().lower()
    assert [m["state"] for m in status(workdir, run_id)] == ["interrupted"]
    assert "FAILURE" in _dagster_run_statuses(workdir)

    resumed = run_cli(["runs", "resume", run_id], workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # only what was missing
    assert "(paths, trades, summary, equity, features, portfolio, positions)" in resumed.stdout
    assert trades_rows(workdir, run_id) == clean_trades


def test_a_killed_catalog_sync_never_blocks_the_next(workdir):
    assert backtest(workdir).returncode == 0
    materialize = [str(BIN / "dagster"), "asset", "materialize", "-m", "quantlab_pipeline.definitions"]
    materialize += ["--select", "backtest_catalog"]
    env = child_env()
    env.update(DAGSTER_HOME=str(workdir / ".dagster_home"), QUANTLAB_RUNS_DIR=str(workdir / "runs"))
    killed = subprocess.run(
        materialize, cwd=workdir, env={**env, "QUANTLAB_FAULT": "KILL:catalog.sync"}, capture_output=True, timeout=300
    )
    assert killed.returncode == -9, killed.stderr
    started = time.monotonic()
    again = subprocess.run(materialize, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert time.monotonic() - started < 120
    query = run_cli(["backtest", "catalog-query", "--format", "json"], workdir)
    assert [r["status"] for r in json.loads(query.stdout)] == ["completed"]


def test_archive_refuses_a_month_with_a_live_run_and_keeps_its_files(workdir):
    from quantlab_pipeline.core.spec_builder import SpecRequest
    from quantlab_pipeline.storage.run_creation import create_run_spec
    from quantlab_pipeline.storage.run_dir import RunDirectory
    from quantlab_pipeline.storage.specs import write_spec

    assert backtest(workdir).returncode == 0
    live_spec = create_run_spec(
        SpecRequest(
            run_type="path-only", alerts="data/alerts.duckdb", window_from="2024-01-01", window_to="2024-01-31"
        ),
        base_dir=str(workdir),
    )
    write_spec(workdir / "runs", live_spec)
    live = RunDirectory(workdir / "runs", "2024-01", live_spec.run_id)
    live.begin(live_spec, artifact="alerts", phase="inputs")  # this test process is its live writer
    before = sorted(p.relative_to(workdir) for p in (workdir / "runs" / "2024-01").rglob("*"))
    proc = run_cli(["backtest", "catalog-archive", "--month", "2024-01", "--to", "a.tar.gz"], workdir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert live_spec.run_id in proc.stderr and "still being written" in proc.stderr
    assert sorted(p.relative_to(workdir) for p in (workdir / "runs" / "2024-01").rglob("*")) == before
    assert not (workdir / "a.tar.gz").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--from", "2008-12-01", "--to", "2008-12-31"], "outside the months a run may cover, 2009-01"),
        (["--from", "2024-01-01", "--to", "2024-01-31", "--fee-bps", "nan"], "fee_bps"),
        (["--from", "2024-01-01", "--to", "2024-01-31", "--runs-dir", "data/alerts.duckdb"], "not a directory"),
    ],
)
def test_bad_values_are_one_line_and_create_nothing(workdir, args, needle):
    proc = run_cli(["backtest", "policy", "--calls-from-duckdb", "data/alerts.duckdb", *POLICY, *args], workdir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (workdir / "runs").exists()


def test_a_broken_dagster_home_is_one_line_exit_1(workdir):
    (workdir / ".dagster_home" / "dagster.yaml").write_text("storage: [unclosed\n")
    proc = backtest(workdir)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "dagster.yaml" in lines[0] and "Traceback" not in proc.stderr, proc.stderr


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs for the runs directory: room for a spec and a manifest, not for a run."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}): ENOSPC is not rehearsed")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_exit_1_and_nothing_incomplete_is_catalogued(workdir, tiny_disk):
    runs = tiny_disk / "runs"
    proc = backtest(workdir, None, "--runs-dir", str(runs))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no space left on device" in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    synced = run_cli(["backtest", "catalog-sync", "--runs-dir", str(runs)], workdir)
    assert synced.returncode == 0 and "Registered 0 runs" in synced.stdout, synced.stdout + synced.stderr
