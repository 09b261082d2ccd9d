"""One artifact's Parquet file (docs/artifacts.md "What a run writes"): the on-disk form of a frame, the exact
bytes written and read (their sha256 is the artifact's provenance), and the artifacts this process
has just written, read back without parsing them again.

A step's upstream artifacts were usually written moments before by the same process (a Dagster
run executes its month's steps one after another); parsing them again cost ~80 ms a policy
month. Such an entry serves a read only while the file is the one written (same inode, size and
mtime ns); only the latest run directory's entries are kept.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from quantlab_pipeline.storage.atomic import atomic_write_bytes, parquet_bytes, sha256_bytes

# Alert times are stored unsigned: DuckDB multiplies an INTERVAL only by an integer that fits
# 32 bits or by UBIGINT, and the seed's analysis SQL does `alert_ts_ms * INTERVAL '1 millisecond'`.
# In memory (kernels, joins) every timestamp stays Int64.
_STORED_AS = {"alert_ts_ms": pl.UInt64}


@dataclass(frozen=True)
class LoadedArtifact:
    """An artifact as read: its frame, the sha256 of the exact bytes read, its Parquet metadata."""

    artifact: str
    frame: pl.DataFrame
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)


def frame_to_arrow(frame: pl.DataFrame) -> pa.Table:
    """The on-disk form: plain Arrow types (string, not string_view) so every reader opens it."""
    casts = [pl.col(c).cast(t) for c, t in _STORED_AS.items() if c in frame.columns]
    return frame.with_columns(casts).to_arrow(compat_level=pl.CompatLevel.oldest())


def frame_from_arrow(table: pa.Table) -> pl.DataFrame:
    frame = cast(pl.DataFrame, pl.from_arrow(table))  # a Table always converts to a DataFrame
    return frame.with_columns(pl.col(c).cast(pl.Int64) for c in _STORED_AS if c in frame.columns)


_written: dict[Path, tuple[tuple[int, int, int], LoadedArtifact]] = {}


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def write_artifact_file(path: Path, artifact: str, frame: pl.DataFrame, metadata: dict[str, str]) -> bytes:
    """Write `frame` atomically as `path` with `metadata` (key-value metadata); the bytes written."""
    table = frame_to_arrow(frame)
    data = parquet_bytes(table, metadata)
    atomic_write_bytes(path, data)
    if any(written.parent.parent != path.parent.parent for written in _written):
        _written.clear()  # another run directory (artifacts are one folder deep)
    stored = pq.read_schema(pa.BufferReader(data)).metadata or {}
    loaded = LoadedArtifact(
        artifact, frame_from_arrow(table), sha256_bytes(data), {k.decode(): v.decode() for k, v in stored.items()}
    )
    _written[path] = (_identity(path), loaded)
    return data


def read_artifact_file(path: Path, artifact: str) -> LoadedArtifact:
    """The artifact at `path`, read once (the sha256 is of the very bytes parsed), or as this
    process wrote it if the file is still the one written. FileNotFoundError when absent."""
    written = _written.get(path)
    if written is not None:
        with contextlib.suppress(FileNotFoundError):
            if _identity(path) == written[0]:
                return written[1]
    data = path.read_bytes()
    table = pq.read_table(pa.BufferReader(data))
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return LoadedArtifact(artifact, frame_from_arrow(table), sha256_bytes(data), meta)
