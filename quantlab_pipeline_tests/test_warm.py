"""The warm server (docs/running.md "The warm server"): commands forked from it behave as if run in their
own process — arguments, working directory, environment, umask, streams, exit status, signals —
one server serves many commands, and nothing outlives a killed command."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from quantlab_pipeline.warm import client, protocol, server
from quantlab_pipeline_tests.helpers import BIN, run_cli


@pytest.fixture
def warm_dir():
    """A server directory of the test's own (short: a socket path holds 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="qlw-", dir="/tmp")
    yield directory
    client.stop_servers(directory)
    shutil.rmtree(directory, ignore_errors=True)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_one_server_serves_every_command_with_the_same_output(tmp_path, warm_dir):
    warm = {"QUANTLAB_WARM_DIR": warm_dir}
    first = run_cli(["--version"], cwd=tmp_path, env_extra=warm)
    (path, pid), *others = client.servers(warm_dir).items()
    second = run_cli(["--version"], cwd=tmp_path, env_extra=warm)
    here = run_cli(["--version"], cwd=tmp_path, env_extra={**warm, "QUANTLAB_WARM_SERVER": "off"})
    assert first.returncode == second.returncode == here.returncode == 0
    assert first.stdout == second.stdout == here.stdout == "quantlab, version 0.1.0\n"
    assert not others and client.servers(warm_dir) == {path: pid}
    assert path == os.path.join(warm_dir, f"{protocol.fingerprint(os.environ)}.sock")


def test_errors_and_exit_codes_pass_through(tmp_path, warm_dir, sample_db):
    args = ["backtest", "policy", "--calls-from-duckdb", str(sample_db), "--from", "2024-01-01", "--to", "2024-01-31"]
    args += ["--policy", "{bad json"]
    warm = run_cli(args, cwd=tmp_path, env_extra={"QUANTLAB_WARM_DIR": warm_dir})
    here = run_cli(args, cwd=tmp_path, env_extra={"QUANTLAB_WARM_DIR": warm_dir, "QUANTLAB_WARM_SERVER": "off"})
    assert warm.returncode == here.returncode == 2
    assert warm.stderr == here.stderr and warm.stderr.startswith("error: --policy") and warm.stderr.count("\n") == 1
    assert client.servers(warm_dir)


def test_the_command_runs_in_the_callers_directory_environment_and_umask(tmp_path, warm_dir):
    """A relative path lands in the caller's directory, with the caller's umask; the caller's
    QUANTLAB_RUNS_DIR is the one used."""
    env = {"QUANTLAB_WARM_DIR": warm_dir, "QUANTLAB_RUNS_DIR": str(tmp_path / "my-runs")}
    proc = subprocess.run(
        [str(BIN / "quantlab"), "sample-data", "--out", "data/alerts.duckdb", "--months", "2024-01"],
        cwd=tmp_path,
        env={**os.environ, **env, "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(0o077),
    )
    assert proc.returncode == 0, proc.stderr
    made = tmp_path / "data" / "alerts.duckdb"
    assert made.exists() and made.stat().st_mode & 0o077 == 0
    assert client.servers(warm_dir)
    runs = subprocess.run(
        [str(BIN / "quantlab"), "runs", "status", "00000000-0000-4000-8000-000000000000"],
        cwd=tmp_path,
        env={**os.environ, **env, "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert runs.returncode != 0 and "my-runs" in runs.stderr


def _warm_env(tmp_path: Path, warm_dir: str) -> dict[str, str]:
    """The project's dagster.yaml (a run queue) in a Dagster home of the test's own."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).parents[1] / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "QUANTLAB_WARM_DIR": warm_dir, "DAGSTER_HOME": str(home), "NO_COLOR": "1"}
    subprocess.run([str(BIN / "quantlab"), "server", "status"], env=env, cwd=tmp_path, check=True, timeout=120)
    return env


def test_killing_the_command_kills_what_the_server_forked_for_it(tmp_path, warm_dir, sample_db):
    """kill -9 of a `--parallel` backtest whose two months are frozen mid-step: the command and
    both run workers are gone, as they would be if they were the command's own processes."""
    env = _warm_env(tmp_path, warm_dir)
    ((_, server_pid),) = client.servers(warm_dir).items()
    args = ["backtest", "path-only", "--calls-from-duckdb", str(sample_db), "--interval", "5m"]
    args += ["--from", "2024-01-01", "--to", "2024-02-29", "--parallel", "2", "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(
        [str(BIN / "quantlab"), *args],
        cwd=tmp_path,
        env={**env, "QUANTLAB_FAULT": "STOP:paths.parquet"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert _wait_for(lambda: len(_children(server_pid)) == 3, 120)  # the command and its two months
    proc.kill()
    proc.wait()
    assert _wait_for(lambda: not _children(server_pid)), _children(server_pid)


def test_a_signal_is_forwarded_and_a_death_by_signal_passed_on(tmp_path, warm_dir, sample_db):
    """`runs wait` on queued months (no daemon here) waits; SIGTERM to the client ends it."""
    env = _warm_env(tmp_path, warm_dir)
    ((_, server_pid),) = client.servers(warm_dir).items()
    args = ["backtest", "path-only", "--calls-from-duckdb", str(sample_db), "--interval", "5m"]
    args += ["--from", "2024-01-01", "--to", "2024-01-31", "--submit"]
    submitted = subprocess.run([str(BIN / "quantlab"), *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    run_id = submitted.stdout.strip().splitlines()[-1]
    proc = subprocess.Popen(
        [str(BIN / "quantlab"), "runs", "wait", run_id], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL
    )
    assert _wait_for(lambda: len(_children(server_pid)) == 1, 30)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    assert _wait_for(lambda: not _children(server_pid))


def test_server_status_and_stop(tmp_path, warm_dir):
    env = {"QUANTLAB_WARM_DIR": warm_dir}
    status = run_cli(["server", "status"], cwd=tmp_path, env_extra=env)
    ((path, pid),) = client.servers(warm_dir).items()
    assert status.returncode == 0 and f"pid {pid}  {path} (this build)" in status.stdout
    stopped = run_cli(["server", "stop"], cwd=tmp_path, env_extra=env)
    assert stopped.returncode == 0 and "stopped 1 warm server" in stopped.stdout
    assert not Path(path).exists()
    run_cli(["--version"], cwd=tmp_path, env_extra=env)
    assert list(client.servers(warm_dir).values()) != [pid]


def test_an_idle_server_exits(tmp_path, warm_dir):
    run_cli(["--version"], cwd=tmp_path, env_extra={"QUANTLAB_WARM_DIR": warm_dir, "QUANTLAB_WARM_IDLE_S": "1"})
    ((path, _),) = client.servers(warm_dir).items()
    assert _wait_for(lambda: not os.path.exists(path), 15)


def test_off_runs_every_command_in_its_own_process(tmp_path, warm_dir):
    proc = run_cli(
        ["--version"], cwd=tmp_path, env_extra={"QUANTLAB_WARM_DIR": warm_dir, "QUANTLAB_WARM_SERVER": "off"}
    )
    assert proc.returncode == 0 and not os.listdir(warm_dir)


def test_the_fingerprint_follows_code_and_import_time_environment(tmp_path):
    env = dict(os.environ)
    base = protocol.fingerprint(env)
    assert protocol.fingerprint({**env, "NUMBA_CACHE_DIR": str(tmp_path)}) != base
    assert protocol.fingerprint({**env, "PYTHONHASHSEED": "7"}) != base
    assert protocol.fingerprint({**env, "DAGSTER_HOME": str(tmp_path)}) == base  # read when used
    assert protocol.fingerprint({**env, "PYTHON": "/usr/bin/python3"}) == base  # `make PYTHON=…`
    source = Path(protocol.__file__)
    info = source.stat()
    try:
        os.utime(source, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
        assert protocol.fingerprint(env) != base
    finally:
        os.utime(source, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert protocol.fingerprint(env) == base


def test_every_preloaded_module_exists():
    """A renamed module would silently leave the server colder."""
    for name in server.PRELOAD:
        if importlib.util.find_spec(name.partition(".")[0]) is not None:
            assert importlib.util.find_spec(name) is not None, name


def test_an_optimization_runs_in_a_forked_command(tmp_path, sample_db):
    """The sweep's parallel kernel starts an OpenMP pool, which kills a process forked after it:
    the server never loads it, so every forked command can (twice: the server is still usable)."""
    args = ["backtest", "optimize", "--calls-from-duckdb", str(sample_db), "--interval", "5m"]
    args += ["--from", "2024-01-01", "--to", "2024-01-31", "--runs-dir", str(tmp_path / "runs")]
    for _ in range(2):
        proc = run_cli(args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "Best policy" in proc.stdout
