"""Verified .tar.gz archives of run directories, restored with `tar -xzf FILE -C <runs dir>`:
what `catalog-archive` and `runs delete --archive` write before they remove anything
(docs/catalog.md "Archiving a month", docs/lifecycle.md)."""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from pathlib import Path
from typing import IO, NamedTuple

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.storage.atomic import atomic_write
from quantlab_pipeline.storage.layout import is_temp_file


class Entry(NamedTuple):
    path: Path
    name: str  # the archive member name, relative to the runs directory
    size: int | None  # None: not a regular file
    mtime_ns: int


def tree(path: Path, name: str) -> list[Entry]:
    """`path` and everything under it, in archive order, named `name/…` (temp leftovers of killed
    writers are never part of a run)."""

    def entry(p: Path, n: str) -> Entry:
        st = p.lstat()
        return Entry(p, n, st.st_size if stat.S_ISREG(st.st_mode) else None, st.st_mtime_ns)

    entries = [entry(path, name)]
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        base = Path(dirpath)
        for child in [*dirnames, *sorted(f for f in filenames if not is_temp_file(f))]:
            entries.append(entry(base / child, f"{name}/{(base / child).relative_to(path)}"))
    return entries


def check_destination(dest: Path, removed: list[Path]) -> None:
    """Refuse an archive that exists (never overwritten) or lies inside what is about to be removed."""
    if dest.exists():
        raise QuantlabError(f"archive {dest} already exists; refusing to overwrite it")
    for path in removed:
        if dest.resolve().is_relative_to(path.resolve()):
            raise QuantlabError(f"archive {dest} is inside {path}, which it is about to remove")


def write_verified(dest: Path, entries: list[Entry]) -> None:
    """Write `entries` to `dest` atomically, then re-open it: same members, same sizes, every byte
    readable. A failed verification removes `dest` and raises; nothing else is touched."""

    def write(fh: IO[bytes]) -> None:
        with tarfile.open(fileobj=fh, mode="w:gz") as tar:
            for e in entries:
                tar.add(e.path, arcname=e.name, recursive=False)

    atomic_write(dest, write)
    try:
        _verify(dest, entries)
    except (QuantlabError, OSError, tarfile.TarError, EOFError) as exc:
        dest.unlink(missing_ok=True)
        if isinstance(exc, QuantlabError):
            raise
        raise QuantlabError(f"archive {dest} failed verification ({exc}); nothing was removed") from None


def _verify(archive: Path, expected: list[Entry]) -> None:
    found: list[tuple[str, int | None]] = []
    with gzip.open(archive, "rb") as gz:
        with tarfile.open(fileobj=gz, mode="r|") as tar:
            for member in tar:
                size = None
                stream = tar.extractfile(member) if member.isfile() else None
                if stream is not None:
                    size = 0
                    while chunk := stream.read(1 << 20):
                        size += len(chunk)
                found.append((member.name, size))
        while gz.read(1 << 20):  # to the gzip trailer, so its CRC and length are checked
            pass
    want = [(e.name, e.size) for e in expected]
    if found != want:
        first = next((w for w, f in zip(want, found) if w != f), (want + found)[min(len(want), len(found))])
        raise QuantlabError(
            f"archive {archive} failed verification ({len(found)} members, expected {len(want)}; "
            f"first difference at {first[0]}); nothing was removed"
        )
