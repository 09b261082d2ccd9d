"""A throwaway PostgreSQL server for the deploy rehearsal (docs/deployment.md "Running on a cluster").

The binaries come from the project's own files: the `pgserver` wheel of the `deploy-test` extra,
or else the OS package (`apt-get install postgresql`). Only the binaries are used: the server is
started here, on a free port and a temporary data directory, so nothing outside the test's temp
folder changes. PostgreSQL refuses to run as root; as root, the server runs as `nobody`, from a
copy of the binaries in its temporary folder when `nobody` cannot reach them where they are
installed (a clone in a private folder; docs/faults.md).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class ServerUnavailable(Exception):
    """No PostgreSQL binaries, or the server could not start: the rehearsal is skipped with this reason."""


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    db_name: str
    bin_dir: Path

    def env(self) -> dict[str, str]:
        """The variables `deploy/dagster.yaml` reads its credentials from (the server trusts local TCP)."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": "rehearsal",
            "DAGSTER_PG_DB": self.db_name,
        }


def find_bin_dir() -> Path:
    """The `pgserver` wheel's binaries, else the newest OS package's."""
    spec = importlib.util.find_spec("pgserver")
    candidates = [Path(loc) / "pginstall" / "bin" for loc in (spec.submodule_search_locations or [])] if spec else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise ServerUnavailable(
        "no PostgreSQL binaries: install the deploy-test extra (pip install -e '.[deploy-test]', "
        "which brings the pgserver wheel) or the OS package (apt-get install postgresql)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> tuple[int, int] | None:
    """`(uid, gid)` to run the server as when we are root (PostgreSQL refuses root), else None."""
    if os.geteuid() != 0:
        return None
    import pwd  # POSIX only, like the rest of the rehearsal

    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


def _reachable(bin_dir: Path) -> bool:
    """Whether any user can run the binaries: every folder above them searchable by others (a
    clone under /root or in a mode-700 folder is not, and `nobody` runs the server as root)."""
    return all(os.stat(folder).st_mode & 0o001 for folder in [bin_dir, *bin_dir.parents])


def _copy_install(bin_dir: Path, root: Path) -> Path:
    """The installation under `root`, hard-linked where it can be, in the same layout: PostgreSQL
    finds `lib` and `share` relative to `bin`, and the wheel's binaries their vendored libraries
    (`pgserver.libs`) through `$ORIGIN/../../../`. Its new `bin`."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copy2(src, dst)

    base, target = bin_dir.parents[2], root / "pginstall"
    target.mkdir(mode=0o755)
    parts = [bin_dir.parent / part for part in ("bin", "lib", "share")]
    parts.append(base / f"{bin_dir.parents[1].name}.libs")
    for part in parts:
        if part.is_dir():
            shutil.copytree(part, target / part.relative_to(base), symlinks=True, copy_function=link_or_copy)
    return target / bin_dir.relative_to(base)


@contextmanager
def temporary_postgres(*, timeout_s: float = 60.0) -> Iterator[Postgres]:
    """initdb + postgres on a free localhost port; yields once `dagster` accepts connections; always stops it."""
    import psycopg2

    bin_dir = find_bin_dir()
    user = _server_user()
    as_user: dict = {"user": user[0], "group": user[1], "extra_groups": []} if user else {}
    # Not under pytest's tmp_path: its parents are root-only, and `nobody` must reach the data dir.
    root = Path(tempfile.mkdtemp(prefix="quantlab-pg-"))
    if user:
        os.chown(root, *user)
    if user and not _reachable(bin_dir):
        bin_dir = _copy_install(bin_dir, root)
    data = root / "data"
    log = root / "postgres.log"
    proc: subprocess.Popen | None = None
    try:
        init = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            **as_user,
        )
        if init.returncode != 0:
            raise ServerUnavailable(f"initdb ({bin_dir}) failed: {(init.stderr or init.stdout).strip()[-400:]}")
        port = free_port()
        with open(log, "w") as log_file:
            proc = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={root}",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "fsync=off",
                ],
                cwd=root,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **as_user,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                conn = psycopg2.connect(
                    host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=2
                )
                break
            except psycopg2.OperationalError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ServerUnavailable(
                        f"postgres ({bin_dir}) did not accept connections on port {port}: {exc}; "
                        f"log: {log.read_text()[-400:]}"
                    ) from exc
                time.sleep(0.2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE dagster")
        conn.close()
        yield Postgres(host="127.0.0.1", port=port, user="postgres", db_name="dagster", bin_dir=bin_dir)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # "fast" shutdown
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        shutil.rmtree(root, ignore_errors=True)
