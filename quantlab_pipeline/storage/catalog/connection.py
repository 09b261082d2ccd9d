"""Opening the catalog: DuckDB lets one process write a database file, or several read it, never
both at once, so every open retries lock conflicts with bounded, jittered backoff and then fails
with one line naming the file and the process that holds it (docs/catalog.md "Catalog schema").

Writes happen in `transaction`, which never lets a failed ROLLBACK hide the error that caused it.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

import duckdb

from quantlab_pipeline.core.errors import EnvironmentFault, QuantlabError, first_line
from quantlab_pipeline.storage.catalog.schema import check_schema_version, has_catalog_tables

READ_TIMEOUT_S = 20.0  # a reader waits this long for a sync's write phase
# A writer waits this long for other processes to let go of the file. Short: a long-lived reader
# (a `duckdb` session that ATTACHed the catalog READ_ONLY) does not let go by itself.
WRITE_TIMEOUT_S = 15.0

_LOCK_CONFLICTS = ("Could not set lock", "different configuration")
# DuckDB's messages carry the OS error's text: these are the machine's fault, not the input's (exit 1).
_ENVIRONMENT_FAULTS = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied")
_HOLDER_RE = re.compile(r"held in (.+?) \(PID (\d+)\)")

Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


def _holder(exc: BaseException) -> str:
    """`/usr/bin/python3 (PID 123)` from DuckDB's lock message, or `another process`."""
    found = _HOLDER_RE.search(str(exc))
    return f"{found[1]} (PID {found[2]})" if found else "another process"


def catalog_error(path: Path, exc: BaseException, doing: str) -> QuantlabError:
    """One line naming the catalog; an `EnvironmentFault` for a full disk, a quota, a read-only
    file system or a denied permission."""
    kind = EnvironmentFault if any(fault in str(exc) for fault in _ENVIRONMENT_FAULTS) else QuantlabError
    return kind(f"catalog {path}: cannot {doing}: {first_line(exc)}")


def open_catalog(path: Path, *, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
    """Open the catalog, retrying (jittered exponential backoff) while another process holds it."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not any(marker in str(exc) for marker in _LOCK_CONFLICTS):
                raise catalog_error(path, exc, "open") from None
            if time.monotonic() + delay > deadline:
                if read_only:
                    raise QuantlabError(
                        f"catalog {path} is locked by another process for more than {timeout:g}s: "
                        f"{_holder(exc)} has it open for writing (a catalog sync?); try again"
                    ) from None
                raise QuantlabError(
                    f"catalog {path} is held open by {_holder(exc)} for more than {timeout:g}s; a sync "
                    "needs it to itself: close that connection (e.g. a duckdb session that ATTACHed the "
                    "catalog) and sync again"
                ) from None
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.5)


@contextmanager
def writer(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = open_catalog(path, read_only=False, timeout=WRITE_TIMEOUT_S)
    try:
        yield conn
    finally:
        try:
            conn.close()  # checkpoints: a full disk may show only here
        except duckdb.Error as exc:
            raise catalog_error(path, exc, "write") from None


@contextmanager
def reader(catalog_path: str | Path, timeout: float) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to an existing catalog of this schema version."""
    path = Path(catalog_path)
    if not path.is_file():
        raise QuantlabError(f"catalog {path} not found; run `quantlab backtest catalog-sync` first")
    conn = open_catalog(path, read_only=True, timeout=timeout)
    try:
        if not has_catalog_tables(conn):
            raise QuantlabError(f"catalog {path} has no catalog tables; run `quantlab backtest catalog-sync` first")
        check_schema_version(conn, path)
        yield conn
    finally:
        conn.close()


@contextmanager
def session(connect: Connect) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection from `connect`, closed by it (`writer` reports a close that fails); closed
    here too when the body raises, whose error is the one to report."""
    with connect() as conn:
        try:
            yield conn
        except BaseException:
            with suppress(duckdb.Error):
                conn.close()
            raise


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection, path: Path) -> Iterator[None]:
    """BEGIN … COMMIT; on failure ROLLBACK and re-raise the *original* error.

    DuckDB ends a transaction itself when a write fails (e.g. ENOSPC), and the ROLLBACK then
    fails with "no transaction is active": that second error must not replace the first. A
    database error becomes one line naming the catalog.
    """
    conn.execute("BEGIN TRANSACTION")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException as exc:
        with suppress(duckdb.Error):  # already rolled back by DuckDB: the error to report is `exc`
            conn.execute("ROLLBACK")
        if isinstance(exc, duckdb.Error):
            raise catalog_error(path, exc, "write") from exc
        raise
