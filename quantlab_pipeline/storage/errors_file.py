"""The rows of `errors/errors.parquet` (docs/artifacts.md "What a run writes"): read, built, merged by phase.

The file is rewritten whole on every change. A corrupt one (a torn copy, a hand edit) is moved
aside instead of being read: it must never block recording the next error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from quantlab_pipeline.core.errors import ErrorRecord, first_line
from quantlab_pipeline.core.spec import utc_now_iso
from quantlab_pipeline.storage.atomic import sha256_bytes

ERRORS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("ts", pa.string()),
        ("level", pa.string()),
        ("phase", pa.string()),
        ("call_id", pa.string()),
        ("mint", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("details", pa.string()),
    ]
)


def read_error_rows(path: Path) -> tuple[pa.Table, str | None, Path | None, str | None]:
    """The file's rows (none if it is absent) and the sha256 of the bytes they were read from (None
    without a readable file). A file that does not parse is renamed to `<name>.corrupt-<timestamp>`
    and read as empty: returns the new name and the parse error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ERRORS_SCHEMA.empty_table(), None, None, None
    try:
        rows = pq.read_table(pa.BufferReader(data)).select(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA)
        return rows, sha256_bytes(data), None, None
    except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
        aside = path.with_name(f"{path.name}.corrupt-{utc_now_iso().replace(':', '')}")
        os.replace(path, aside)
        problem = first_line(exc)
        return ERRORS_SCHEMA.empty_table(), None, aside, problem


def error_rows(run_id: str, records: list[ErrorRecord]) -> pa.Table:
    now = utc_now_iso()
    return pa.Table.from_pylist(
        [
            {
                "run_id": run_id,
                "ts": now,
                "level": r.level,
                "phase": r.phase,
                "call_id": r.call_id,
                "mint": r.mint,
                "reason": r.reason,
                "message": r.message,
                "details": json.dumps(r.details, default=str, sort_keys=True),
            }
            for r in records
        ],
        schema=ERRORS_SCHEMA,
    )


def without_phase(table: pa.Table, phase: str) -> pa.Table:
    """The rows of every other phase: a step's rows are replaced when it runs again."""
    return table.filter(pc.not_equal(table["phase"], phase)) if table.num_rows else table
