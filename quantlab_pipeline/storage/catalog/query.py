"""Reading the catalog: runs and artifacts by filter, one run's artifact path, rejections, stats.

Every reader opens the database read-only and retries while a sync writes, so it is safe to call
at any time (docs/catalog.md "Python API"). Every value reaches SQL as a bound parameter.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.spec import RUN_TYPES, validate_month, validate_run_id
from quantlab_pipeline.storage.atomic import sha256_file
from quantlab_pipeline.storage.catalog.connection import READ_TIMEOUT_S, reader
from quantlab_pipeline.storage.catalog.schema import (
    ARTIFACT_TYPES,
    CATALOG_STATUSES,
    PUBLIC_ARTIFACT_COLUMNS,
    PUBLIC_RUN_COLUMNS,
    Rejection,
    RunKey,
)

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NEWEST_FIRST = "ORDER BY r.created_at DESC NULLS LAST, r.run_id, r.month"


@dataclass(frozen=True)
class CatalogStats:
    total_runs: int
    runs_by_status: dict[str, int]  # every catalog status, zeros included
    runs_by_type: dict[str, int]  # run types present, in RUN_TYPES order
    total_artifacts: int
    artifacts_by_type: dict[str, int]  # artifact types present, in layout order


def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise SpecError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _parse_date(value: str | dt.date, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        raise SpecError(f"{name}: expected a date YYYY-MM-DD, got a datetime")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and _DATE_RE.match(value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise SpecError(f"{name}: expected a date YYYY-MM-DD, got {value!r}")


@dataclass(frozen=True)
class RunFilter:
    """Which catalog runs a query selects; every field None means all runs.

    Validated once, on construction (a bad value is a `SpecError` naming the filter); dates may
    be given as `YYYY-MM-DD` strings and are kept as `datetime.date`. `from_date`/`to_date` are
    inclusive UTC days on `created_at`; `month` is the data month.
    """

    run_type: str | None = None
    status: str | None = None
    from_date: str | dt.date | None = None
    to_date: str | dt.date | None = None
    month: str | None = None
    policy_id: str | None = None
    git_branch: str | None = None
    run_id: str | None = None
    _where: tuple[str, tuple[Any, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        clauses: list[str] = []
        params: list[Any] = []
        if self.run_type is not None:
            clauses.append("r.run_type = ?")
            params.append(_choice(self.run_type, RUN_TYPES, "run_type"))
        if self.status is not None:
            clauses.append("r.status = ?")
            params.append(_choice(self.status, CATALOG_STATUSES, "status"))
        lo = _parse_date(self.from_date, "from_date") if self.from_date is not None else None
        hi = _parse_date(self.to_date, "to_date") if self.to_date is not None else None
        if lo and hi and hi < lo:
            raise SpecError(f"to_date {hi} is before from_date {lo}")
        if lo is not None:
            clauses.append("r.created_at >= ?")
            params.append(dt.datetime.combine(lo, dt.time()))
        if hi is not None:  # inclusive: everything before the next midnight
            clauses.append("r.created_at < ?")
            params.append(dt.datetime.combine(hi + dt.timedelta(days=1), dt.time()))
        if self.month is not None:
            clauses.append("r.month = ?")
            params.append(validate_month(self.month))
        if self.policy_id is not None:
            clauses.append("r.policy_id = ?")
            params.append(str(self.policy_id))
        if self.git_branch is not None:
            clauses.append("r.git_branch = ?")
            params.append(str(self.git_branch))
        if self.run_id is not None:
            clauses.append("r.run_id = ?")
            params.append(validate_run_id(self.run_id))
        object.__setattr__(self, "from_date", lo)
        object.__setattr__(self, "to_date", hi)
        object.__setattr__(self, "_where", (" AND ".join(clauses) or "TRUE", tuple(params)))

    def where(self) -> tuple[str, list[Any]]:
        """A WHERE condition over `runs r` and its bound values."""
        sql, params = self._where
        return sql, list(params)


def _run_filter(run_filter: RunFilter | None, filters: dict[str, Any]) -> RunFilter:
    """The one place keyword filters (`query_runs(db, status="completed")`) become a `RunFilter`."""
    if run_filter is None:
        return RunFilter(**filters)
    if not isinstance(run_filter, RunFilter):
        raise TypeError(f"run_filter: expected a RunFilter, got {type(run_filter).__name__}; filters are keywords")
    if filters:
        raise TypeError("pass a RunFilter or filter keywords, not both")
    return run_filter


def _limit_clause(limit: int | None) -> tuple[str, list[int]]:
    """`LIMIT ?` for a positive integer; None means no limit."""
    if limit is None:
        return "", []
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise SpecError(f"limit: expected a positive integer, got {limit!r}")
    return " LIMIT ?", [limit]


def _rows(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description or ()]
    out = []
    for values in cursor.fetchall():
        row = dict(zip(names, values))
        for key, value in row.items():
            if isinstance(value, dt.datetime):
                row[key] = value.replace(tzinfo=dt.UTC)
        out.append(row)
    return out


def query_runs(
    catalog_path: str | Path,
    run_filter: RunFilter | None = None,
    *,
    limit: int | None = 10,
    timeout: float = READ_TIMEOUT_S,
    **filters: Any,
) -> list[dict[str, Any]]:
    """Catalog runs, newest `created_at` first (`limit=None`: all). Filter with a `RunFilter` or
    its fields as keywords: `query_runs(db, run_type="policy", from_date="2024-01-01")`."""
    where, params = _run_filter(run_filter, filters).where()
    limit_sql, limit_params = _limit_clause(limit)
    columns = ", ".join(f'r."{c}"' for c in PUBLIC_RUN_COLUMNS)
    sql = f"SELECT {columns} FROM runs r WHERE {where} {_NEWEST_FIRST}{limit_sql}"
    with reader(catalog_path, timeout) as conn:
        return _rows(conn.execute(sql, [*params, *limit_params]))


def query_artifacts(
    catalog_path: str | Path,
    artifact_type: str,
    run_filter: RunFilter | None = None,
    *,
    limit: int | None = 10,
    timeout: float = READ_TIMEOUT_S,
    **filters: Any,
) -> list[dict[str, Any]]:
    """Artifacts of one type of the runs a filter selects (same order as `query_runs`), e.g.
    every completed policy run's trades file for `read_parquet([...])`."""
    kind = _choice(artifact_type, ARTIFACT_TYPES, "artifact_type")
    where, params = _run_filter(run_filter, filters).where()
    limit_sql, limit_params = _limit_clause(limit)
    columns = ", ".join(f'a."{c}"' for c in PUBLIC_ARTIFACT_COLUMNS)
    sql = (
        f"SELECT {columns} FROM artifacts a JOIN runs r USING (run_id, month) "
        f"WHERE a.artifact_type = ? AND {where} {_NEWEST_FIRST}{limit_sql}"
    )
    with reader(catalog_path, timeout) as conn:
        return _rows(conn.execute(sql, [kind, *params, *limit_params]))


def get_artifact_path(
    catalog_path: str | Path,
    run_id: str,
    artifact_type: str,
    month: str | None = None,
    *,
    timeout: float = READ_TIMEOUT_S,
) -> str | list[str] | None:
    """Absolute path of a run's artifact. With `month`: that month's path or None. Without: the
    path string when one month of the run has it, a list ordered by month when several do, None
    when none (a run spanning months has one directory per month)."""
    params: list[Any] = [validate_run_id(run_id), _choice(artifact_type, ARTIFACT_TYPES, "artifact_type")]
    sql = "SELECT path FROM artifacts WHERE run_id = ? AND artifact_type = ?"
    if month is not None:
        sql += " AND month = ?"
        params.append(validate_month(month))
    with reader(catalog_path, timeout) as conn:
        paths = [p for (p,) in conn.execute(sql + " ORDER BY month", params).fetchall()]
    if not paths:
        return None
    return paths[0] if len(paths) == 1 else paths


def rejected_runs(catalog_path: str | Path, *, timeout: float = READ_TIMEOUT_S) -> list[Rejection]:
    with reader(catalog_path, timeout) as conn:
        rows = conn.execute("SELECT run_dir, reason FROM rejected_runs ORDER BY run_dir").fetchall()
    return [Rejection(d, r) for d, r in rows]


def read_stats(conn: duckdb.DuckDBPyConnection) -> CatalogStats:
    """Counts of an open catalog (a sync reports them from its own connection)."""
    by_status = dict.fromkeys(CATALOG_STATUSES, 0)
    by_status.update(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    types = dict(conn.execute("SELECT run_type, count(*) FROM runs GROUP BY run_type").fetchall())
    kinds = dict(conn.execute("SELECT artifact_type, count(*) FROM artifacts GROUP BY artifact_type").fetchall())
    return CatalogStats(
        total_runs=sum(by_status.values()),
        runs_by_status=by_status,
        runs_by_type={t: types[t] for t in RUN_TYPES if t in types},
        total_artifacts=sum(kinds.values()),
        artifacts_by_type={k: kinds[k] for k in ARTIFACT_TYPES if k in kinds},
    )


def catalog_stats(catalog_path: str | Path, *, timeout: float = READ_TIMEOUT_S) -> CatalogStats:
    with reader(catalog_path, timeout) as conn:
        return read_stats(conn)


def unverified_artifacts(
    catalog_path: Path, keys: Iterable[RunKey] | None = None, *, timeout: float = READ_TIMEOUT_S
) -> tuple[int, list[str]]:
    """How many artifacts of the run-months `keys` (every catalogued one when None) were checked,
    and the paths of those missing or not at their recorded sha256 (docs/catalog.md)."""
    sql = "SELECT a.run_id, a.month, a.path, a.sha256 FROM artifacts a"
    with reader(catalog_path, timeout) as conn:
        rows = conn.execute(sql).fetchall()
    wanted = None if keys is None else set(keys)
    checked, bad = 0, []
    for run_id, month, path, sha in rows:
        if wanted is not None and RunKey(run_id, month) not in wanted:
            continue
        checked += 1
        try:
            intact = sha256_file(path) == sha
        except OSError:
            intact = False
        if not intact:
            bad.append(path)
    return checked, bad
