"""How a process asks the warm server for a forked process: the `quantlab` console script for
its command, a `--parallel` backtest for its run workers.

A backtest's fixed cost is mostly start-up: importing Dagster, the definitions and the CLI
(~0.8 s), loading the compiled kernels (~0.4 s), importing the instance's storage (~0.4 s). The
warm server pays it once and forks each command from itself, so a command starts in
milliseconds (docs/running.md "The warm server"). This module must stay cheap to import: standard library
only, nothing of the project's own but `warm.protocol`.

The forked command behaves as if run here: it gets this process's arguments, environment, working
directory, umask and standard streams (the file descriptors themselves, passed over the socket);
signals sent here (Ctrl-C, SIGTERM, SIGHUP) are forwarded to its process group; its exit status
becomes this process's, a death by signal included. If this process is killed (SIGKILL), the
server's side of the connection closes and the command is killed too: nothing keeps running that
the user cannot see. Anything unusual (server disabled, unusable socket directory, a server that
fails to start) and the command simply runs in this process; so does a command whose server does
not greet it within `protocol.HANDOFF_TIMEOUT_S` (stopped, stuck), saying so on stderr: the request
is only sent after the greeting, so a server that wakes up later never runs it too (docs/faults.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import NoReturn

from quantlab_pipeline.warm import protocol

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
SERVER_START_TIMEOUT_S = 120.0  # a first start may compile nothing but still loads LLVM and Dagster

# Set in a process the server forked: where that server listens, so the process's own workers
# (`--parallel` months) are forked from it too.
serving: str | None = None


def run_in_server(argv: list[str]) -> int | None:
    """The forked command's exit status (negative: killed by that signal), or None when no server
    could take it (nothing has run then)."""
    try:
        path = protocol.socket_path(os.environ)
        cwd = os.getcwd()
    except (OSError, ValueError):
        return None
    if os.path.exists(f"{path}.failed"):  # this build's server cannot start: see its .log
        return None
    try:
        sock = connect(path) or _start_persistent(path)
    except protocol.NotAnswering as exc:
        print(
            f"quantlab: {exc} within {protocol.HANDOFF_TIMEOUT_S:g} s; running the command in this process"
            " (`quantlab server stop` ends that server)",
            file=sys.stderr,
        )
        return None
    except OSError:  # the lock or log beside the socket cannot be opened
        return None
    if sock is None:
        return None
    request = {"kind": "command", "argv": argv, "cwd": cwd, "env": dict(os.environ), "umask": _umask()}
    with sock:
        try:
            pid = send_request(sock, request, fds=_std_fds())
        except OSError:
            return None
        return _follow(sock, pid)


def _std_fds() -> list[int]:
    """Descriptors 0, 1 and 2 to pass; /dev/null in place of a closed one."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def _follow(sock: socket.socket, pid: int) -> int:
    """Forward signals to the command's process group until the server reports its exit."""

    def forward(signum: int, _frame) -> None:
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:  # not yet its own group leader, or already gone
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for signum in _FORWARDED:
        signal.signal(signum, forward)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = None
    reply = protocol.receive(sock)
    if reply is not None:
        return int(reply["exit"])
    # The server went away (killed, or its machine is going down): wait for the command itself.
    if pidfd is not None:
        select.select([pidfd], [], [])
    print("quantlab: the warm server stopped; the command's exit status is unknown", file=sys.stderr)
    return 1


def exit_like(code: int) -> NoReturn:
    """Leave with the command's status: its exit code, or death by the same signal."""
    sys.stdout.flush()
    if code < 0:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's and SIGSTOP's cannot be set
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code
    os._exit(code)


def servers(directory: str) -> dict[str, int]:
    """The servers answering in `directory`: socket path → server pid."""
    return {path: pid for path, (pid, answering) in probe_servers(directory).items() if answering and pid is not None}


def probe_servers(directory: str) -> dict[str, tuple[int | None, bool]]:
    """Every server listening in `directory`: socket path → (pid, whether it answered in time)."""
    found: dict[str, tuple[int | None, bool]] = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".sock"):
            continue
        path = os.path.join(directory, name)
        try:
            sock = connect(path)
        except protocol.NotAnswering as exc:
            found[path] = (exc.pid, False)
            continue
        if sock is not None:
            with sock:
                found[path] = (_peer_pid(sock), True)
    return found


def stop_servers(directory: str) -> dict[str, int | None]:
    """Stop the servers listening in `directory` (each finishes the commands it is running; one
    that does not answer is woken and asked to stop, then killed if it has not within
    `STOP_WAIT_S`); what was listening."""
    found = probe_servers(directory)
    for path, (pid, answering) in found.items():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a server stops listening once its socket is gone
        if not answering and pid is not None:
            _end_stuck(pid)
    return {path: pid for path, (pid, _) in found.items()}


STOP_WAIT_S = 5.0


def _end_stuck(pid: int) -> None:
    """SIGTERM and SIGCONT to a server that did not answer; SIGKILL if, `STOP_WAIT_S` later, it is
    still there stopped or with no command left to finish."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    with os.fdopen(pidfd) as handle:
        for signum in (signal.SIGTERM, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signum)
        if select.select([handle], [], [], STOP_WAIT_S)[0]:
            return
        try:
            with open(f"/proc/{pid}/stat") as stat:
                stopped = stat.read().rpartition(")")[2].split()[0] in "tT"
            with open(f"/proc/{pid}/task/{pid}/children") as children:
                busy = bool(children.read().split())
        except OSError:  # gone meanwhile
            return
        if stopped or not busy:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def connect(path: str, timeout_s: float = protocol.HANDOFF_TIMEOUT_S) -> socket.socket | None:
    """A connection to the server listening at `path`, once it has greeted it; None if no server
    listens there; `protocol.NotAnswering` if one does but has not greeted it within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                sock.connect(path)
                break
            except BlockingIOError:  # its queue of connections is full
                if time.monotonic() >= deadline:
                    raise protocol.NotAnswering(path, _listener_pid(path)) from None
                time.sleep(0.05)
        pid = _peer_pid(sock)
        try:
            hello = protocol.receive(sock)
        except (TimeoutError, ValueError):
            hello = None
        if hello is None or "server" not in hello:
            raise protocol.NotAnswering(path, pid)
        sock.settimeout(None)
        return sock
    except protocol.NotAnswering:
        sock.close()
        raise
    except OSError:  # nothing listening there (refused, no such socket)
        sock.close()
        return None


def _peer_pid(sock: socket.socket) -> int:
    pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid


def _listener_pid(path: str) -> int | None:
    """The pid of this user's server process for `path` (whose queue is too full to connect)."""
    wanted = ["-m", "quantlab_pipeline.warm.server", path]
    for entry in os.listdir("/proc"):
        try:
            if not entry.isdigit() or os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv[1:4] == wanted:
            return int(entry)
    return None


def send_request(sock: socket.socket, request: dict, fds: Sequence[int] = ()) -> int:
    """Send `request` (and `fds`) and return the pid of the process the server forked for it."""
    protocol.send(sock, request, fds)
    reply = protocol.receive(sock)
    if reply is None or "pid" not in reply:
        raise ConnectionError(f"warm server: no process for the request ({(reply or {}).get('error', 'closed')})")
    return int(reply["pid"])


def _start_persistent(path: str) -> socket.socket | None:
    """Start the server for `path` (one starter at a time: a lock beside the socket) and connect."""
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = connect(path)  # another command started it while this one waited
        if sock is not None:
            return sock
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a server that died without removing its socket
        if not _ready(_start_server(path, idle_s=protocol.idle_seconds(os.environ), log=f"{path}.log")):
            open(f"{path}.failed", "w").close()
            return None
        return connect(path)


def _start_server(path: str, *, idle_s: float, log: str, alive_fd: int | None = None) -> int:
    """Start a server listening at `path`; the descriptor it writes `ready` to once it listens."""
    ready_r, ready_w = os.pipe()
    argv = [sys.executable, "-m", "quantlab_pipeline.warm.server", path, str(idle_s), str(ready_w)]
    pass_fds = [ready_w]
    if alive_fd is not None:
        argv.append(str(alive_fd))
        pass_fds.append(alive_fd)
    try:
        with open(log, "ab") as out:
            subprocess.Popen(
                argv, pass_fds=pass_fds, start_new_session=True, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
    finally:
        os.close(ready_w)
    return ready_r


def _ready(ready_fd: int) -> bool:
    with os.fdopen(ready_fd, "rb") as ready:
        readable, _, _ = select.select([ready], [], [], SERVER_START_TIMEOUT_S)
        return bool(readable) and ready.read(5) == b"ready"


class ServerProcess:
    """A process the warm server forked for this one, with the part of `multiprocessing.Process`
    the `--parallel` loop uses: `pid`, `sentinel` (readable once it exits), `exitcode`,
    `terminate()`, `join()`. Closing this process's end of the connection kills it."""

    def __init__(self, sock: socket.socket, pid: int):
        self._sock = sock
        self.pid = pid
        self._exitcode: int | None = None

    @property
    def sentinel(self) -> int:
        return self._sock.fileno()

    @property
    def exitcode(self) -> int | None:
        if self._exitcode is None and select.select([self._sock], [], [], 0)[0]:
            reply = protocol.receive(self._sock)
            # No reply: the server itself is gone; report the worker as killed.
            self._exitcode = int(reply["exit"]) if reply else -signal.SIGKILL
            self._sock.close()
        return self._exitcode

    def terminate(self) -> None:
        if self.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def join(self) -> None:
        while self.exitcode is None:
            select.select([self._sock], [], [])


def start_process(kind: str, **fields) -> ServerProcess:
    """Fork a `kind` process (`server.TARGETS`) from the server this process came from, else from
    this command's private server (started on first use, gone when this process ends)."""
    sock = None
    if serving:
        with contextlib.suppress(protocol.NotAnswering):  # stuck: this command's own server instead
            sock = connect(serving)
    if sock is None:
        sock = connect(_private_server().wait())
    if sock is None:
        raise ConnectionError("warm server: the private server is not listening")
    request = {"kind": kind, "cwd": os.getcwd(), "env": dict(os.environ), "umask": _umask(), **fields}
    return ServerProcess(sock, send_request(sock, request))


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


class _PrivateServer:
    """This command's own server (when it was not itself forked by one): started early, waited for
    at its first request, gone when this process ends (it exits when its `alive` pipe closes)."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="quantlab-workers-")
        self.path = os.path.join(self.directory, "server.sock")
        alive_r, self._alive_w = os.pipe()  # kept open (not inherited) for this process's life
        log = os.path.join(self.directory, "server.log")
        self._ready_fd: int | None = _start_server(self.path, idle_s=0, log=log, alive_fd=alive_r)
        os.close(alive_r)

    def wait(self) -> str:
        if self._ready_fd is not None:
            ready_fd, self._ready_fd = self._ready_fd, None
            if not _ready(ready_fd):
                raise ConnectionError(
                    f"warm server: the private server did not start (see {self.directory}/server.log)"
                )
        return self.path


_private: _PrivateServer | None = None


def start_private_server() -> None:
    """Start this command's private server now if it will need one (its imports then overlap the
    command's own work); a no-op inside a process the warm server forked."""
    if serving is None:
        _private_server()


def _private_server() -> _PrivateServer:
    global _private
    if _private is None:
        _private = _PrivateServer()
    return _private
