"""The warm server: imports once what every command needs, then forks a process per request.

Started by `warm.client` as `python -m quantlab_pipeline.warm.server SOCKET IDLE_S READY_FD
[ALIVE_FD]`. It stays single-threaded (forking a process with other threads could copy a lock one
of them holds), so the forks are safe; the imported objects are frozen out of the garbage
collector, so the children's collections skip them and their memory pages stay shared.

A persistent server (started by a `quantlab` command) exits after `IDLE_S` seconds without a
request or a running child, or as soon as its socket is removed or replaced. A private server
(started for one command's `--parallel` workers, `ALIVE_FD` given) exits when that command does.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import selectors
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

from quantlab_pipeline.warm import client, protocol

# Imported before the server listens. Beyond the CLI, the definitions and the run worker: what
# opening a SQLite instance and running a job in process import on first use (measured: ~790
# modules, ~0.5 s, that a forked command would otherwise import itself). Not matplotlib: only
# `quantlab report` draws, off the backtest's path, and it would cost every server start (docs/reports.md).
PRELOAD = (
    "quantlab_pipeline.cli",
    "quantlab_pipeline.definitions",
    "quantlab_pipeline.orchestration.month_runner",
    "quantlab_pipeline.orchestration.compute_logs",
    "quantlab_pipeline.orchestration.dagster_adapter",  # and its PRELOAD_MODULES: Dagster's private ones
    "alembic.command",
    "alembic.runtime.migration",
    "sqlalchemy.dialects.sqlite",
    "upath.implementations.local",
    "fsspec.implementations.local",
    "pyarrow.dataset",
    "rich._emoji_codes",
    "pandas",  # when installed (the bench's extra): Dagster's type checks import it
)


def preload() -> None:
    import importlib
    import importlib.util

    for name in PRELOAD:
        if importlib.util.find_spec(name.partition(".")[0]) is not None:
            importlib.import_module(name)
    from quantlab_pipeline.orchestration.dagster_adapter import PRELOAD_MODULES

    for name in PRELOAD_MODULES:
        importlib.import_module(name)
    from quantlab_pipeline.warm.kernels import load_backtest_kernels

    load_backtest_kernels()
    gc.collect()
    gc.freeze()
    # Native pools started by the imports (OpenBLAS, Arrow's allocator) are idle and handle fork
    # themselves; Polars creates its pool on first use, which the server never makes.
    if threading.active_count() != 1:
        raise RuntimeError(
            f"the preloaded imports started {threading.active_count() - 1} thread(s); forking would be unsafe"
        )


def _run_command(request: dict) -> None:
    """A `quantlab` command, as the console script runs it (it leaves with `os._exit`)."""
    from quantlab_pipeline.cli import console, main

    console.reattach()
    sys.argv = list(request["argv"])
    main()


def _run_months(request: dict) -> None:
    """A `--parallel` run worker: it runs months of the command's plan until none is left."""
    from quantlab_pipeline.orchestration.month_runner import execute_worker

    execute_worker(request)
    sys.exit(0)


TARGETS: dict[str, Callable[[dict], None]] = {"command": _run_command, "months": _run_months}


MAX_CONNECTIONS = 128  # greeted connections awaiting their request plus running commands
REQUEST_TIMEOUT_S = 10.0  # a greeted connection that sends no request by then is closed
_PENDING = "pending"  # selector data of a greeted connection awaiting its request


class Server:
    def __init__(self, path: str, idle_s: float, alive_fd: int | None):
        self.path, self.idle_s, self.alive_fd = path, idle_s, alive_fd
        self.children: dict[int, socket.socket] = {}
        self.pending: dict[socket.socket, float] = {}  # → when greeted
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path)
        self.listener.listen(64)
        self.inode = os.stat(path).st_ino
        self.wake_r, wake_w = os.pipe()
        for fd in (self.wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._stop)
        self.stopping = False

    def _stop(self, *_) -> None:
        self.stopping = True

    def serve(self) -> None:
        """Accept requests until stopped, idle, or no longer the socket's owner; then wait for the
        running children (their clients are waiting for their exit statuses) and leave."""
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        selector.register(self.wake_r, selectors.EVENT_READ)
        if self.alive_fd is not None:
            selector.register(self.alive_fd, selectors.EVENT_READ)
        last_busy, listening = time.monotonic(), True
        while listening or self.children:
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj is self.listener and listening:
                    self._accept(selector)
                elif key.data == _PENDING:
                    self._request(selector, key.fileobj)  # type: ignore[arg-type]
                elif key.data is not None:  # a requester's end closed before its process ended
                    self._requester_gone(selector, key.data)
                elif key.fileobj == self.wake_r:
                    while _drain(self.wake_r):
                        pass
                elif key.fileobj == self.alive_fd:  # the command that started this private server ended
                    selector.unregister(self.alive_fd)
                    self.stopping = True
            for conn in self._reap():
                with contextlib.suppress(KeyError):  # unless its requester went first
                    selector.unregister(conn)
                conn.close()
            self._drop_pending(selector, time.monotonic() - REQUEST_TIMEOUT_S)
            if self.children or self.pending:
                last_busy = time.monotonic()
            idle = self.alive_fd is None and not self.children and time.monotonic() - last_busy > self.idle_s
            if listening and (self.stopping or idle or not self._owns_socket()):
                selector.unregister(self.listener)
                self._drop_pending(selector, float("inf"))
                self._close()
                listening = False

    def _owns_socket(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except FileNotFoundError:
            return False

    def _accept(self, selector: selectors.BaseSelector) -> None:
        """Greet a new connection (its client sends its request only then), unless it is another
        user's or the server already holds `MAX_CONNECTIONS`: then close it at once."""
        try:
            conn, _ = self.listener.accept()
        except OSError:  # the peer gave up already, or no descriptor left
            return
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid != os.getuid() or len(self.pending) + len(self.children) >= MAX_CONNECTIONS:
            conn.close()  # what it sent, descriptors included, is released with it
            return
        try:
            protocol.send(conn, {"server": os.getpid(), "children": len(self.children)})
        except OSError:
            conn.close()
            return
        self.pending[conn] = time.monotonic()
        selector.register(conn, selectors.EVENT_READ, _PENDING)

    def _drop_pending(self, selector: selectors.BaseSelector, greeted_before: float) -> None:
        for conn in [conn for conn, at in self.pending.items() if at < greeted_before]:
            del self.pending[conn]
            selector.unregister(conn)
            conn.close()

    def _request(self, selector: selectors.BaseSelector, conn: socket.socket) -> None:
        """Fork a process for the request a greeted connection sent, or refuse it; either way the
        descriptors received with it are closed here."""
        del self.pending[conn]
        selector.unregister(conn)
        fds: list[int] = []
        try:
            data, fds = protocol.receive_fds(conn, 3)
            request = protocol.decode(data) if data else None  # None: a probe that closed
            problem = _malformed(request, fds) if request is not None else None
            if request is not None and problem is None:
                pid = self._fork(conn, request, fds)
                self.children[pid] = conn
                selector.register(conn, selectors.EVENT_READ, pid)
                with contextlib.suppress(OSError):  # the requester is gone already: noticed by `serve`
                    protocol.send(conn, {"pid": pid})
                return
            if problem is not None:
                protocol.send(conn, {"error": problem})
        except (OSError, ValueError) as exc:  # unreadable, or not a JSON object nested ≤ 64 deep
            with contextlib.suppress(OSError):
                protocol.send(conn, {"error": f"malformed request: {exc}"})
        finally:
            for fd in fds:
                os.close(fd)
        conn.close()

    def _fork(self, conn: socket.socket, request: dict, fds: list[int]) -> int:
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                self._become_child(conn, request, fds)
                TARGETS[request["kind"]](request)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        return pid

    def _requester_gone(self, selector: selectors.BaseSelector, pid: int) -> None:
        """The requester was killed (it only closes its end after the exit status): kill what was
        forked for it, with everything that process started in its group, as a kill -9 of a
        command that ran in its own process would have."""
        conn = self.children[pid]
        with contextlib.suppress(OSError):
            if conn.recv(1):
                return  # a requester never writes after its request; ignore it
        selector.unregister(conn)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)

    def _become_child(self, conn: socket.socket, request: dict, fds: list[int]) -> None:
        """Take the requester's place: its environment, directory, umask and standard streams."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.listener.close()
        os.close(self.wake_r)
        for other in [*self.children.values(), *self.pending]:
            other.close()
        if self.alive_fd is not None:
            os.close(self.alive_fd)
        os.setpgid(0, 0)  # its own group: the client forwards signals to the group
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()
        streams = fds or [os.open(os.devnull, os.O_RDWR)] * 3
        for target, fd in zip((0, 1, 2), streams):
            os.dup2(fd, target)
        for fd in set(streams):
            os.close(fd)
        sys.stdout.reconfigure(line_buffering=os.isatty(1))  # type: ignore[union-attr]
        conn.close()
        client.serving = self.path if self.alive_fd is None else None

    def _reap(self) -> list[socket.socket]:
        """Send each exited child's status to its requester; their connections, to close."""
        done = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = self.children.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    protocol.send(conn, {"exit": os.waitstatus_to_exitcode(status)})
                done.append(conn)
        return done

    def _close(self) -> None:
        self.listener.close()
        if self._owns_socket():
            os.unlink(self.path)
        if self.alive_fd is not None:  # a private server's directory is its own
            shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)


def _malformed(request: dict, fds: list[int]) -> str | None:
    """What makes `request` unusable, if anything."""
    if request.get("kind") not in TARGETS:
        return f"unknown request {request.get('kind')!r}"
    env = request.get("env")
    if not isinstance(request.get("cwd"), str) or not isinstance(request.get("umask"), int):
        return "malformed request: cwd or umask"
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        return "malformed request: env"
    if len(fds) not in (0, 3):
        return f"malformed request: {len(fds)} descriptors (0 or 3)"
    return None


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def main(argv: list[str]) -> None:
    path, idle_s, ready_fd = argv[0], float(argv[1]), int(argv[2])
    alive_fd = int(argv[3]) if len(argv) > 3 else None
    try:
        preload()
        server = Server(path, idle_s, alive_fd)
    except BaseException as exc:
        print(f"warm server {path}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    os.write(ready_fd, b"ready")
    os.close(ready_fd)
    print(json.dumps({"listening": path, "pid": os.getpid()}), file=sys.stderr, flush=True)
    server.serve()


if __name__ == "__main__":
    main(sys.argv[1:])
