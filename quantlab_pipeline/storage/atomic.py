"""Atomic file writes: temp file in the same directory, flush, fsync, `os.replace`, fsync dir.

A reader (or a crash) never sees a half-written file: it sees the old version or the new one.
A crash does leave the temp file (`.<name>.<random>.tmp`, see `layout.is_temp_file`); the run
directory removes such leftovers under its lock.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from quantlab_pipeline.core.errors import EnvironmentFault
from quantlab_pipeline.storage.faults import fault_point

# Environment faults a user fixes outside quantlab: reported in one line naming the file.
_ENVIRONMENT_FAULTS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}


def current_umask() -> int:
    """The process umask, read without changing it.

    `os.umask` can only be read by setting it, which races with other threads creating files;
    Linux reports it in /proc/self/status. Elsewhere it is set and restored once, then cached.
    """
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return _umask_by_setting()


@functools.cache
def _umask_by_setting() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Run `write(fileobj)` against a temp file beside `path`, then move it into place.

    The file gets the mode an ordinary `open()` would give it (0666 less the umask; mkstemp
    alone makes it 0600, unreadable to the other users of a shared box). A full disk, a
    read-only file system or a denied permission is a one-line `EnvironmentFault` naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise_environment_fault(path, exc)
        raise
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        fault_point(path.name)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise_environment_fault(path, exc)
        raise
    fsync_dir(path.parent)
    return path


def raise_environment_fault(path: Path, exc: OSError) -> None:
    """Re-raise `exc` as a one-line error naming `path` when it is an environment fault."""
    problem = _ENVIRONMENT_FAULTS.get(exc.errno or 0)
    if problem:
        raise EnvironmentFault(f"{path}: cannot write: {problem}") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> bytes:
    """Write `obj` as indented JSON; returns the exact bytes written (for hashing)."""
    data = (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()
    atomic_write_bytes(path, data)
    return data


def parquet_bytes(table: pa.Table, metadata: dict[str, str]) -> bytes:
    """Serialize `table` to Parquet in memory with `metadata` as key-value metadata.

    Serializing first lets the caller hash the exact bytes it then writes atomically. zstd keeps
    the narrow artifact tables small at negligible CPU cost.
    """
    existing = table.schema.metadata or {}
    table = table.replace_schema_metadata({**existing, **{k.encode(): v.encode() for k, v in metadata.items()}})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
