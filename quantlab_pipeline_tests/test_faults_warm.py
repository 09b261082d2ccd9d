"""Faults of the warm server (docs/faults.md): a stopped server is bypassed within the hand-off
bound and `server stop` ends it; rejected connections leave no descriptor behind; the number of
connections held is bounded; a directory that is not private is one line."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from quantlab_pipeline.warm import client, protocol, server
from quantlab_pipeline_tests.helpers import run_cli

OFF = {"QUANTLAB_WARM_SERVER": "off"}


@pytest.fixture
def warm_dir():
    """A server directory of the test's own (short: a socket path holds 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="qlw-", dir="/tmp")
    yield directory
    client.stop_servers(directory)
    shutil.rmtree(directory, ignore_errors=True)


def _started(tmp_path, warm_dir) -> tuple[str, int]:
    assert run_cli(["--version"], cwd=tmp_path, env_extra={"QUANTLAB_WARM_DIR": warm_dir}).returncode == 0
    ((path, pid),) = client.servers(warm_dir).items()
    return path, pid


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settled_fds(pid: int) -> int:
    """The server's descriptors once it has closed the connections of the probes that found it."""
    time.sleep(0.5)
    return _fds(pid)


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stopped_server_is_bypassed_in_one_line_and_server_stop_ends_it(tmp_path, warm_dir):
    path, pid = _started(tmp_path, warm_dir)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        proc = run_cli(["--version"], cwd=tmp_path, env_extra={"QUANTLAB_WARM_DIR": warm_dir})
        took = time.monotonic() - started
        here_started = time.monotonic()
        here = run_cli(["--version"], cwd=tmp_path, env_extra={"QUANTLAB_WARM_DIR": warm_dir, **OFF})
        here_took = time.monotonic() - here_started
        assert proc.returncode == 0 and proc.stdout == here.stdout == "quantlab, version 0.1.0\n"
        assert proc.stderr.count("\n") == 1 and f"(pid {pid})" in proc.stderr and "did not answer" in proc.stderr
        # The bound plus a command run in its own process (measured right after, same load).
        assert took < protocol.HANDOFF_TIMEOUT_S + here_took + 3.0, (took, here_took)
        status = run_cli(["server", "status"], cwd=tmp_path, env_extra={"QUANTLAB_WARM_DIR": warm_dir, **OFF})
        assert status.returncode == 0 and f"pid {pid}  {path}" in status.stdout and "not answering" in status.stdout
        stop = run_cli(["server", "stop"], cwd=tmp_path, env_extra={"QUANTLAB_WARM_DIR": warm_dir, **OFF})
        assert stop.returncode == 0 and f"stopped 1 warm server(s)\n  pid {pid}" in stop.stdout, stop.stdout
        assert _wait_for(lambda: not _alive(pid), client.STOP_WAIT_S + 5) and not os.path.exists(path)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_server_woken_after_a_client_gave_up_does_not_run_its_command(tmp_path, warm_dir):
    """The request is sent only after the greeting: the bypassed command is not run twice."""
    _, pid = _started(tmp_path, warm_dir)
    out = tmp_path / "alerts.duckdb"
    os.kill(pid, signal.SIGSTOP)
    args = ["sample-data", "--out", str(out), "--months", "2024-01"]
    proc = run_cli(args, cwd=tmp_path, env_extra={"QUANTLAB_WARM_DIR": warm_dir})
    assert proc.returncode == 0 and "did not answer" in proc.stderr and out.exists()
    out.unlink()
    os.kill(pid, signal.SIGCONT)
    assert client.servers(warm_dir)  # answering again: every connection it had queued is handled
    time.sleep(1.0)
    assert not out.exists()


def _send_raw(path: str, data: bytes, fds: list[int]) -> socket.socket:
    sock = client.connect(path)
    assert sock is not None
    socket.send_fds(sock, [data], fds)
    return sock


def _eof_within(read_fd: int, timeout_s: float = 10.0) -> bool:
    readable, _, _ = select.select([read_fd], [], [], timeout_s)
    return bool(readable) and os.read(read_fd, 1) == b""


@pytest.mark.parametrize(
    "data, nfds",
    [
        (b"{not json", 3),
        (b'{"kind": "command", "argv": ' + b"[" * 100 + b"]" * 100 + b"}", 3),  # nested 101 deep
        (b"[" * 5000 + b"]" * 5000, 3),  # deeper than the JSON parser's recursion
        (json.dumps({"kind": "shell", "cwd": "/", "env": {}, "umask": 18}).encode(), 3),
        (json.dumps({"kind": "command", "argv": ["quantlab"], "cwd": "/", "env": {}, "umask": 18}).encode(), 2),
        (json.dumps({"kind": "command", "argv": ["quantlab"], "cwd": 7, "env": {}, "umask": 18}).encode(), 3),
    ],
    ids=["not-json", "too-deep", "parser-deep", "unknown-kind", "two-fds", "bad-cwd"],
)
def test_a_rejected_request_leaves_no_descriptor_and_its_pipes_see_eof(tmp_path, warm_dir, data, nfds):
    path, pid = _started(tmp_path, warm_dir)
    before = _settled_fds(pid)
    read_fd, write_fd = os.pipe()
    try:
        sock = _send_raw(path, data, [write_fd] * nfds)
        os.close(write_fd)
        reply = protocol.receive(sock)
        assert reply is not None and "error" in reply and "pid" not in reply
        assert protocol.receive(sock) is None  # closed by the server
        sock.close()
        assert _eof_within(read_fd)
    finally:
        os.close(read_fd)
    assert _wait_for(lambda: _fds(pid) == before), (_fds(pid), before)
    assert client.servers(warm_dir) == {path: pid}  # still serving


def test_another_users_connection_is_closed_with_its_descriptors(tmp_path, warm_dir):
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another user (nobody)")
    # The peer needs the standard library only: the system interpreter, which `nobody` can run
    # wherever the checkout is (a clone in a private folder keeps it from the project's venv).
    interpreter = "/usr/bin/python3"
    if not os.path.exists(interpreter):
        pytest.skip(f"{interpreter} is missing: no interpreter another user is sure to reach")
    path, pid = _started(tmp_path, warm_dir)
    os.chmod(warm_dir, 0o711)
    os.chmod(path, 0o777)
    before = _settled_fds(pid)
    read_fd, write_fd = os.pipe()
    script = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect(sys.argv[1]);"
        "socket.send_fds(s, [b'{}'], [int(sys.argv[2])] * 3); print(s.recv(100))"
    )
    try:
        proc = subprocess.run(
            [interpreter, "-I", "-c", script, path, str(write_fd)],
            pass_fds=[write_fd],
            user=65534,
            capture_output=True,
            text=True,
            timeout=60,
        )
        os.close(write_fd)
        assert "b''" in proc.stdout or "Error" in proc.stderr  # closed, never greeted
        assert _eof_within(read_fd)
    finally:
        os.close(read_fd)
    assert _wait_for(lambda: _fds(pid) == before), (_fds(pid), before)


def test_the_connections_a_server_holds_are_bounded(tmp_path, warm_dir):
    path, pid = _started(tmp_path, warm_dir)
    before = _settled_fds(pid)
    held = [client.connect(path) for _ in range(server.MAX_CONNECTIONS)]
    assert all(held)
    with pytest.raises(protocol.NotAnswering):  # closed at once, never greeted
        client.connect(path)
    assert _fds(pid) <= before + server.MAX_CONNECTIONS
    for sock in held:
        sock.close()  # type: ignore[union-attr]
    assert _wait_for(lambda: _fds(pid) == before), (_fds(pid), before)
    assert client.servers(warm_dir) == {path: pid}


def test_server_commands_refuse_a_directory_that_is_not_private_in_one_line(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    for command in ("status", "stop"):
        proc = run_cli(["server", command], cwd=tmp_path, env_extra={"QUANTLAB_WARM_DIR": str(shared), **OFF})
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("error: warm server directory") and "not private" in proc.stderr
