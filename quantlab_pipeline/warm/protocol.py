"""What the warm server and its clients agree on: where a server listens, when one is used, and
the messages (one JSON object per packet of a `SOCK_SEQPACKET` Unix socket, file descriptors
alongside). Standard library only: the `quantlab` console script imports this first.

A server serves exactly one build of the code: the socket's name is a fingerprint of the Python
interpreter, the installed packages, the project's source files and the environment variables
read at import time, so after an edit, an upgrade or with another `NUMBA_CACHE_DIR` a new server
starts and the old one exits when idle.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import stat
import sys

ENABLE_ENV = "QUANTLAB_WARM_SERVER"  # "off" or "0": every command runs in its own process
DIR_ENV = "QUANTLAB_WARM_DIR"  # where servers listen (default: $XDG_RUNTIME_DIR or /tmp)
IDLE_ENV = "QUANTLAB_WARM_IDLE_S"  # a server exits after this long without a command
DEFAULT_IDLE_S = 900.0
_IMPORT_TIME_ENV = ("PYTHON", "NUMBA_", "NUMPY_", "LC_", "LANG")
HANDOFF_TIMEOUT_S = 2.0  # a server that has not greeted a client by then is bypassed (docs/faults.md)
MAX_JSON_DEPTH = 64  # a request nested deeper is refused, not parsed into a RecursionError
_MAX_PACKET = 1 << 20
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


def enabled(env: os._Environ | dict) -> bool:
    return env.get(ENABLE_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def idle_seconds(env: os._Environ | dict) -> float:
    """`QUANTLAB_WARM_IDLE_S`, or 15 minutes."""
    try:
        return max(0.0, float(env.get(IDLE_ENV, DEFAULT_IDLE_S)))
    except ValueError:
        return DEFAULT_IDLE_S


def socket_dir(env: os._Environ | dict) -> str:
    """This user's server directory (created 0700); a ValueError if it is not private to the user."""
    base = env.get(DIR_ENV) or os.path.join(env.get("XDG_RUNTIME_DIR") or "/tmp", f"quantlab-{os.getuid()}")
    os.makedirs(base, mode=0o700, exist_ok=True)
    info = os.stat(base)
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise ValueError(f"{base}: not private to this user")
    return base


def socket_path(env: os._Environ | dict) -> str:
    """Where the server for this code and environment listens."""
    path = os.path.join(socket_dir(env), f"{fingerprint(env)}.sock")
    if len(path.encode()) > _MAX_SOCKET_PATH:
        raise ValueError(f"{path}: too long for a Unix socket")
    return path


def fingerprint(env: os._Environ | dict) -> str:
    """A name for this build of the code: interpreter, installed packages (their `.dist-info`
    names carry their versions; the directory's own mtime also moves when a first import writes
    its `__pycache__`), the project's source files (path, size, modification time) and the
    import-time environment."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{sys.executable}\0{sys.version}\0{sys.prefix}\0".encode())
    dagster = importlib.util.find_spec("dagster")
    if dagster is not None and dagster.origin:
        site = os.path.dirname(os.path.dirname(dagster.origin))
        installed = sorted(name for name in os.listdir(site) if name.endswith(".dist-info"))
        digest.update("\0".join([site, *installed, ""]).encode())
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for directory, dirnames, filenames in os.walk(package):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                info = os.stat(os.path.join(directory, name))
                digest.update(f"{directory}/{name}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    # Python's own variables are PYTHON<NAME>; a bare PYTHON is a Makefile's (`make PYTHON=…`).
    for key in sorted(k for k in env if k.startswith(_IMPORT_TIME_ENV) and k != "PYTHON"):
        digest.update(f"{key}={env[key]}\0".encode())
    return digest.hexdigest()


class NotAnswering(OSError):
    """A server listens at the socket but has not answered within `HANDOFF_TIMEOUT_S` (stopped,
    or stuck); `pid` is its process when known."""

    def __init__(self, path: str, pid: int | None):
        super().__init__(f"the warm server {f'(pid {pid}) ' if pid else ''}at {path} did not answer")
        self.path, self.pid = path, pid


def send(sock: socket.socket, message: dict, fds=()) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive(sock: socket.socket) -> dict | None:
    """The next message; None once the peer has closed."""
    data = sock.recv(_MAX_PACKET)
    return decode(data) if data else None


def decode(data: bytes) -> dict:
    """A message: a JSON object nested at most `MAX_JSON_DEPTH` deep, else a ValueError."""
    try:
        message = json.loads(data)
    except RecursionError:
        raise ValueError("message nested too deep") from None
    if not isinstance(message, dict):
        raise ValueError("message is not a JSON object")
    stack: list[dict | list] = [message]
    depth = 0
    while stack:  # breadth-first, level by level: no recursion
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise ValueError("message nested too deep")
        stack = [
            item
            for value in stack
            for item in (value.values() if isinstance(value, dict) else value)
            if isinstance(item, (dict, list))
        ]
    return message


def receive_fds(sock: socket.socket, max_fds: int) -> tuple[bytes, list[int]]:
    """The next packet, undecoded, and the descriptors that came with it (the caller owns and
    must close them, whatever the packet holds); empty once the peer has closed."""
    data, fds, _flags, _address = socket.recv_fds(sock, _MAX_PACKET, max_fds)
    return data, list(fds)
