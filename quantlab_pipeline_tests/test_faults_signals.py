"""Interruptions at chosen points of a `--parallel 1` backtest (docs/architecture.md
"Interruptions"): SIGINT or SIGTERM sent by the process to itself (`QUANTLAB_FAULT`) between steps,
where no step's recording catches it, or at the start of the next month. Each month's fate is
recorded and named exactly in the closing line; nothing is left `running`; no traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest

from quantlab_pipeline_tests.helpers import BIN, child_env, run_cli

pytestmark = pytest.mark.slow

POLICY = ["--policy-id", "p", "--policy", '{"kind":"fixed_stop","stop_loss_bps":500}']
TWO_MONTHS = ["--interval", "5m", "--from", "2024-01-01", "--to", "2024-02-29", "--parallel", "1"]


def _backtest(workdir, fault: str):
    args = ["backtest", "policy", "--calls-from-duckdb", "data/alerts.duckdb", *TWO_MONTHS, *POLICY, "--no-features"]
    return run_cli(args, workdir, {"QUANTLAB_FAULT": fault})


def _states(workdir, run_id: str) -> dict[str, str]:
    proc = run_cli(["runs", "status", run_id, "--format", "json"], workdir)
    assert proc.returncode == 0, proc.stderr
    return {m["month"]: m["state"] for m in json.loads(proc.stdout)}


@pytest.mark.parametrize(
    ("fault", "code", "fates"),
    [
        # Between January's steps: outside any step's recording, Dagster catches it; recorded here.
        ("TERM:step.paths", 143, {"2024-01": "interrupted", "2024-02": "missing"}),
        ("INT:step.trades", 130, {"2024-01": "interrupted", "2024-02": "missing"}),
        # February's first step, before it wrote anything: January stays completed.
        ("TERM:step.alerts#2", 143, {"2024-01": "completed", "2024-02": "missing"}),
    ],
)
def test_a_signal_between_steps_leaves_each_month_recorded_and_named(workdir, fault, code, fates):
    proc = _backtest(workdir, fault)
    assert proc.returncode == code, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    [closing] = [line for line in proc.stderr.splitlines() if line.startswith("interrupted")]
    signame = "SIGTERM" if code == 143 else "SIGINT"
    named = ", ".join(f"{month} {state}" for month, state in fates.items())
    assert closing.startswith(f"interrupted ({signame}): {named}; finish the run with `quantlab runs resume "), closing
    run_id = re.search(r"runs resume ([0-9a-f-]+)", closing).group(1)  # type: ignore[union-attr]
    assert _states(workdir, run_id) == fates  # as the closing line said, and nothing `running`
    if fates["2024-01"] == "interrupted":
        manifest = json.loads((workdir / "runs" / "2024-01" / f"run_id={run_id}" / "run.json").read_text())
        assert manifest["status"] == "failed" and manifest["error"]["reason"] == "interrupted"
    resumed = run_cli(["runs", "resume", run_id], workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert set(_states(workdir, run_id).values()) == {"completed"}


def test_ctrl_c_to_the_process_group_prints_no_traceback(workdir):
    """Ctrl-C at a terminal signals the whole foreground group: the command and, while a step's
    output is mirrored, Dagster's `tail` and `watch_orphans.py` processes (which used to print a
    `KeyboardInterrupt` traceback each). Sent here once a month's first step has printed."""
    args = ["backtest", "policy", "--calls-from-duckdb", "data/alerts.duckdb", *TWO_MONTHS, *POLICY]
    env = child_env(DAGSTER_HOME=str(workdir / ".dagster_home"), NO_COLOR="1", COLUMNS="200", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [str(BIN / "quantlab"), *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as a terminal's foreground job
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if " alerts " in line:  # inside the month's steps, their output mirrored
            break
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    [closing] = [line for line in err.splitlines() if line.startswith("interrupted (SIGINT): 2024-01 ")]
    assert "2024-02 missing" in closing and "running" not in closing, closing


def test_a_signal_inside_a_duckdb_query_counts_as_an_interruption(tmp_path):
    """DuckDB reports a signal that lands in its query as its own error, reaching Python either as
    DuckDB's InterruptException or, through Arrow's reader, as Arrow's error with DuckDB's text;
    the sources may wrap either in a one-line input error. Each is recorded as `interrupted`."""
    import duckdb
    import pyarrow as pa

    from quantlab_pipeline.core.errors import InputError
    from quantlab_pipeline.orchestration.steps import recording_failures
    from quantlab_pipeline.storage.lifecycle import month_status
    from quantlab_pipeline.storage.run_dir import RunDirectory
    from quantlab_pipeline_tests.test_run_dir import make_spec

    def wrapped() -> Exception:
        try:
            raise duckdb.InterruptException("INTERRUPT Error: Interrupted!")
        except duckdb.Error:
            try:
                raise InputError("candles database x.duckdb: the read failed") from None
            except InputError as exc:
                return exc

    spec = make_spec()
    cases = [
        (duckdb.InterruptException("INTERRUPT Error: Interrupted!"), "interrupted"),
        (pa.ArrowException("Query interrupted"), "interrupted"),
        (wrapped(), "interrupted"),
        (ValueError("a real failure"), "failed"),
    ]
    for i, (exc, state) in enumerate(cases):
        run_dir = RunDirectory(tmp_path / f"runs{i}", "2024-01", spec.run_id)
        with pytest.raises(type(exc)), recording_failures(run_dir, spec, "truth", "dagster-run"):
            raise exc
        assert month_status(run_dir).state == state, (exc, month_status(run_dir))
