"""Who is writing a run directory: the per-run lock and the writer record kept in run.json.

A killed writer leaves `status: running` behind. To tell it from a live one, run.json records
the writer (host, pid, the process's start time, the boot it ran in, the Dagster run id) and a
heartbeat. On the writer's own host the process table decides (a recycled pid has another start
time); from another host only the heartbeat's age can (docs/artifacts.md "What a run writes").
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeGuard

from quantlab_pipeline.core.spec import utc_now_iso
from quantlab_pipeline.storage.atomic import raise_environment_fault

# A writer on another host whose heartbeat is older than this is taken for dead. Writers refresh
# it (`RunDirectory.heartbeat`) far more often, so a slow step is not mistaken for a dead one.
HEARTBEAT_STALE_AFTER = dt.timedelta(minutes=10)


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat from field 3 (the state) on; None where /proc is not available or `pid` is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # Field 2 (comm) is parenthesised and may hold spaces; fields from 3 on follow its last ')'.
    return stat[stat.rfind(b")") + 2 :].split()


def process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot, /proc/<pid>/stat field 22).

    With the pid and the boot id it names one process for good: a pid reused after the writer
    died belongs to a process started later. None where /proc is not available or `pid` is gone.
    """
    fields = _stat_fields(pid)
    return fields[19].decode() if fields and len(fields) > 19 else None


def writer_record(
    dagster_run_id: str | None, phase: str | None = None, *, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The manifest's `writer`: this process, now. When `previous` is this process too (a later
    step of the same run), its start and whatever this step does not know are kept."""
    now = utc_now_iso()
    pid = os.getpid()
    record = {
        "host": socket.gethostname(),
        "pid": pid,
        "process_start": process_start(pid),
        "boot_id": _boot_id(),
        "dagster_run_id": dagster_run_id,
        "phase": phase,
        "started_at": now,
        "heartbeat_at": now,
    }
    if is_current_writer(previous):
        record["started_at"] = previous["started_at"]
        record["phase"] = phase or previous.get("phase")
        record["dagster_run_id"] = dagster_run_id or previous.get("dagster_run_id")
    return record


def is_current_writer(writer: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """Whether `writer` is this very process."""
    return (
        writer is not None
        and writer.get("host") == socket.gethostname()
        and writer.get("pid") == os.getpid()
        and writer.get("process_start") == process_start(os.getpid())
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    # A zombie has exited and only waits to be reaped, which may never happen: an orphan under an
    # init that does not reap (many containers), or a child of a hung parent.
    fields = _stat_fields(pid)
    return not (fields and fields[0] in (b"Z", b"X"))


def writer_gone(writer: dict[str, Any] | None, *, now: dt.datetime | None = None) -> str | None:
    """Why the writer of a `running` manifest is known to be dead, or None if it may be alive.

    Same host: dead when the machine rebooted since, the pid is gone, or the pid now belongs to
    a process started at another time. Another host: dead when its heartbeat is older than
    `HEARTBEAT_STALE_AFTER`. A manifest without a writer record (written before writers were
    recorded) is treated as dead: nothing can be alive that never said so.
    """
    if not writer:
        return "no writer recorded"
    host, pid = writer.get("host"), writer.get("pid")
    if host == socket.gethostname() and isinstance(pid, int):
        recorded_boot, boot = writer.get("boot_id"), _boot_id()
        if recorded_boot and boot and recorded_boot != boot:
            return f"writer pid {pid} on {host} is gone (the machine rebooted)"
        if not _pid_alive(pid):
            return f"writer pid {pid} on {host} is gone"
        recorded_start, start = writer.get("process_start"), process_start(pid)
        if recorded_start and start and recorded_start != start:
            return f"writer pid {pid} on {host} is gone (the pid now belongs to another process)"
        return None
    beat = writer.get("heartbeat_at")
    try:
        last = dt.datetime.fromisoformat(str(beat))
    except ValueError:
        return f"writer on {host} recorded no readable heartbeat"
    now = now or dt.datetime.now(dt.UTC)
    if now - last > HEARTBEAT_STALE_AFTER:
        return f"writer pid {pid} on {host} last heartbeat {beat}, more than {HEARTBEAT_STALE_AFTER} ago"
    return None


class MonthLock:
    """The lock of one month directory: its writers hold it shared while they write, whoever
    removes run directories from the month (`catalog-archive`) holds it exclusively. A write then
    waits for an archive to decide instead of failing, and an archive never removes a directory
    half-way through a write (docs/catalog.md "Archiving a month"). The file is kept: one per month.
    """

    def __init__(self, path: Path):
        self.path = path

    def acquire_shared(self) -> int:
        """The descriptor holding the lock shared (close it to release); waits for an exclusive holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextmanager
    def exclusive(self, timeout: float) -> Iterator[bool]:
        """Hold the lock exclusively if that is possible within `timeout` seconds; yields whether it is held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.05)
            yield True
        finally:
            os.close(fd)

    def held_exclusively(self) -> bool:
        """Whether someone removes run directories from the month right now."""
        return _flock_busy(self.path)


def _flock_busy(path: Path) -> bool:
    """Whether another descriptor holds an exclusive flock on `path` (a shared probe fails)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class RunLock:
    """An exclusive lock on one run directory, shared by processes (flock) and threads (RLock);
    with its `month` lock, that month's lock held shared too, taken after the run's own.

    The lock file exists only while the lock is held: the holder unlinks it before releasing, so
    `runs/_locks/` does not grow by one file per run-month. A waiter that wakes on an unlinked file
    retries on the file now at the path; only the holder of the inode at the path holds the lock.
    Re-entrant within a thread.
    """

    def __init__(self, path: Path, month: MonthLock | None = None):
        self.path = path
        self.month = month
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fds: list[int] = []

    def __enter__(self) -> RunLock:
        self._thread_lock.acquire()
        try:
            if self._depth == 0:
                try:
                    self._fds.append(self._acquire())
                    if self.month is not None:
                        self._fds.append(self.month.acquire_shared())
                except BaseException as exc:
                    self._release()
                    if isinstance(exc, OSError):
                        raise_environment_fault(self.path, exc)
                    raise
            self._depth += 1
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._depth -= 1
            if self._depth == 0:
                self._release()
        finally:
            self._thread_lock.release()

    def _release(self) -> None:
        """Month lock first, then the run's: its file is unlinked while still held."""
        fds, self._fds = self._fds, []
        try:
            for fd in fds[1:]:
                os.close(fd)
            if fds:
                self.path.unlink(missing_ok=True)
        finally:
            if fds:
                os.close(fds[0])  # closing the last descriptor releases the flock

    def _acquire(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                held = os.fstat(fd)
                current = os.stat(self.path)
            except FileNotFoundError:  # the previous holder unlinked it while we waited
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                return fd
            os.close(fd)

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock right now (a live writer on this host)."""
        return _flock_busy(self.path)
