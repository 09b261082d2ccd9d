"""The candle cache: a month's cleaned candles kept on disk, so reading them again is a memory map
(docs/inputs.md "Inputs", "The candle cache").

Researchers re-run the same months with other policies; reading and cleaning a reference month's
33.8 M candles costs ~1.5 s, mapping a cached copy a few ms. An entry is a directory named by a
hash of its key (the source's files with their stat identity, the query, `FORMAT_VERSION`), with
one raw little-endian file per column and `meta.json` (the key itself, row counts, error records).

Safety: an entry is written in a temporary directory, every file fsynced, then renamed into place
(a racing writer of the same key loses the rename and removes its copy); a reader compares the
stored key with its own and every file's size with the row count, and treats any mismatch or
error as a miss, removing the entry — a bad entry costs a re-read, never wrong numbers. Entries
are evicted least recently used (a hit touches `meta.json`) down to the size cap.

The write runs in a detached grandchild process: it needs no join before the caller exits (the
CLI leaves with `os._exit`), and a process killed mid-write leaves only a hidden temporary
directory, removed by a later eviction pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import mmap
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.errors import ErrorRecord, InputError
from quantlab_pipeline.core.inputs import CandlesInput

# Bump when the cleaning rules (core.inputs.clean_candles) or the entry layout change.
FORMAT_VERSION = 1
DEFAULT_CAP_GB = 20.0
_COLUMNS = ("offsets", "ts", "open", "high", "low", "close", "volume")
_DTYPES = {"offsets": "<i8", "ts": "<i8"}  # the prices and volume are "<f8"
_META = "meta.json"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 3600.0  # a write takes seconds; an older temporary directory is a killed writer's
_WRITE_CHUNK = 64 << 20


def cache_dir() -> Path:
    """`QUANTLAB_CACHE_DIR`, else `$XDG_CACHE_HOME/quantlab`, else `~/.cache/quantlab`; entries
    live in its `candles/`."""
    root = os.environ.get("QUANTLAB_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str(Path(xdg) / "quantlab") if xdg else str(Path.home() / ".cache" / "quantlab")
    return Path(root) / "candles"


def cap_bytes() -> int:
    """The cache's size cap from `QUANTLAB_CANDLE_CACHE_GB` (default 20); 0 disables the cache."""
    raw = os.environ.get("QUANTLAB_CANDLE_CACHE_GB", "").strip()
    try:
        gb = float(raw) if raw else DEFAULT_CAP_GB
    except ValueError:
        gb = -1.0
    if not gb >= 0 or gb == float("inf"):
        raise InputError(f"QUANTLAB_CANDLE_CACHE_GB={raw!r}: expected a size in GB (0 disables the candle cache)")
    return int(gb * 1e9)


def source_identity(files: Sequence[str], optional: Sequence[str] = ()) -> list[list[Any]] | None:
    """Each file's realpath and (st_dev, st_ino, st_size, st_mtime_ns); an absent optional file
    (a DuckDB `.wal`) as its path alone. None when a required file cannot be stat'ed."""
    out: list[list[Any]] = []
    for path, required in [*((f, True) for f in files), *((f, False) for f in optional)]:
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            if required:
                return None
            out.append([real])
            continue
        out.append([real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns])
    return out


def make_key(identity: list[list[Any]], mints: Sequence[str], interval: str, start_ms: int, end_ms: int) -> dict:
    """The key material of one read: source identity and freshness, the query, the format."""
    return {
        "format": FORMAT_VERSION,
        "source": identity,
        "mints": list(mints),
        "interval": interval,
        "start_ms": int(start_ms),
        "end_ms": int(end_ms),
    }


def _digest(key: Mapping[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=20).hexdigest()


def _dtype(column: str) -> str:
    return _DTYPES.get(column, "<f8")


# -- reading ----------------------------------------------------------------------------------


def load(root: Path, key: Mapping[str, Any]) -> CandlesInput | None:
    """The cached read of `key`, its columns mapped read-only; None on a miss. A mismatching,
    truncated or unreadable entry is removed and is a miss."""
    entry = root / _digest(key)
    try:
        meta = json.loads((entry / _META).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        _remove(entry)
        return None
    try:
        if meta.get("key") != key:
            raise ValueError("key mismatch")
        rows = {"offsets": len(key["mints"]) + 1, **dict.fromkeys(_COLUMNS[1:], int(meta["rows"]))}
        arrays = {c: _map(entry / c, _dtype(c), rows[c]) for c in _COLUMNS}
        if arrays["offsets"][0] != 0 or arrays["offsets"][-1] != rows["ts"]:
            raise ValueError("offsets do not match the rows")
        errors = [ErrorRecord(**record) for record in meta["errors"]]
    except (OSError, ValueError, KeyError, TypeError):
        _remove(entry)
        return None
    with contextlib.suppress(OSError):
        os.utime(entry / _META)  # least recently used goes first
    candles = Candles(
        tuple(key["mints"]),
        arrays["offsets"],
        arrays["ts"],
        arrays["open"],
        arrays["high"],
        arrays["low"],
        arrays["close"],
        arrays["volume"],
    )
    return CandlesInput(candles=candles, errors=errors)


def _map(path: Path, dtype: str, rows: int) -> np.ndarray:
    """A read-only array over the file's pages: no copy. MADV_WILLNEED starts reading pages
    that left the page cache; measured on the reference month, mapping + one pass over the
    columns took ≈ 0.07–0.1 s this way or plainly, ≈ 0.3–0.5 s with MAP_POPULATE (every page
    mapped up front), and `np.fromfile` (a copy) ≈ 1.2 s."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size != rows * np.dtype(dtype).itemsize:
            raise ValueError(f"{path}: {size} bytes, expected {rows} rows")
        if rows == 0:
            array = np.empty(0, dtype=dtype)
        else:
            mapped = mmap.mmap(fh.fileno(), size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            if hasattr(mmap, "MADV_WILLNEED"):
                mapped.madvise(mmap.MADV_WILLNEED)
            array = np.frombuffer(mapped, dtype=dtype)
    array.flags.writeable = False
    return array


# -- writing ----------------------------------------------------------------------------------


def store(root: Path, key: Mapping[str, Any], read: CandlesInput, cap: int) -> None:
    """Write `read` as the entry of `key` in a detached process, then evict down to `cap` bytes.

    Returns at once: the forked process shares the arrays copy-on-write (the caller never writes
    them: they are read-only), writes and fsyncs the files, and renames the entry into place.
    """
    c = read.candles
    if c.volume is None or not hasattr(os, "fork"):
        return  # read_candles always reads volume; a platform without fork goes uncached
    columns = {"offsets": c.offsets, "ts": c.ts, "open": c.open, "high": c.high, "low": c.low, "close": c.close}
    columns["volume"] = c.volume
    if sum(a.nbytes for a in columns.values()) > cap:
        return  # it would evict everything, itself included
    meta = {
        "key": key,
        "rows": len(c),
        "columns": {name: _dtype(name) for name in _COLUMNS},
        "errors": [dataclasses.asdict(e) for e in read.errors],
    }
    payload = json.dumps(meta).encode()
    arrays = {name: np.ascontiguousarray(a, dtype=_dtype(name)) for name, a in columns.items()}
    digest = _digest(key)
    try:
        root.mkdir(parents=True, exist_ok=True)
        pid = os.fork()
    except OSError:
        return  # no cache this time; the read itself succeeded
    if pid:
        os.waitpid(pid, 0)
        return
    # The child: fork again so the writer is reparented to init (no zombie in a long-lived
    # parent), and exit at once. Only system calls from here: other threads' locks were copied.
    code = 1
    try:
        if os.fork() == 0:
            _detach()
            _write_entry(root, digest, arrays, payload)
            evict(root, cap)
        code = 0
    finally:
        os._exit(code)


def _detach() -> None:
    """Leave the caller's session and release its files: a reader of the caller's output pipe
    would otherwise wait for this process too. Run at the lowest priority: the backtest that
    just read the candles goes on meanwhile, and the entry is only needed by a later one."""
    os.setsid()
    os.nice(19)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


def _write_entry(root: Path, digest: str, arrays: Mapping[str, np.ndarray], meta: bytes) -> None:
    tmp = root / f"{_TMP_PREFIX}{digest}-{os.getpid()}"
    try:
        tmp.mkdir()
        for name, array in arrays.items():
            _write_file(tmp / name, array.view(np.uint8).data)
        _write_file(tmp / _META, memoryview(meta))
        _fsync_dir(tmp)
        try:
            os.rename(tmp, root / digest)
        except OSError:
            if not (root / digest).is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a racing writer of the same key won
            return
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_file(path: Path, data: memoryview) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        done = 0
        while done < len(data):
            done += os.write(fd, data[done : done + _WRITE_CHUNK])
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- eviction ---------------------------------------------------------------------------------


def evict(root: Path, cap: int) -> None:
    """Remove least recently used entries until the cache holds at most `cap` bytes, and
    temporary directories of writers that died. Safe against concurrent evictors and readers: an
    entry is renamed away before it is deleted, and a mapped file outlives its name."""
    now = time.time()
    entries: list[tuple[float, int, Path]] = []
    total = 0
    try:
        children = list(os.scandir(root))
    except OSError:
        return
    for child in children:
        path = Path(child.path)
        try:
            size = sum(f.stat().st_size for f in os.scandir(path))
            if child.name.startswith(_TMP_PREFIX):
                if now - child.stat().st_mtime > _STALE_TMP_S:
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    total += size
                continue
            used = (path / _META).stat().st_mtime
        except OSError:
            continue
        entries.append((used, size, path))
        total += size
    for _used, size, path in sorted(entries):
        if total <= cap:
            break
        _remove(path)
        total -= size


def _remove(entry: Path) -> None:
    """Delete an entry so that no reader sees part of one: rename it to a hidden name first."""
    trash = entry.with_name(f"{_TMP_PREFIX}gone-{entry.name}-{os.getpid()}")
    try:
        os.rename(entry, trash)
    except OSError:
        return  # gone already (another evictor or reader)
    shutil.rmtree(trash, ignore_errors=True)
