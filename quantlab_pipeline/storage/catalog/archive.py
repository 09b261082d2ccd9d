"""`archive_month`: a month of run directories to a verified .tar.gz, then removed and the
catalog reconciled (README "Archiving a month")."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.core.spec import validate_month
from quantlab_pipeline.storage.atomic import atomic_write, atomic_write_bytes
from quantlab_pipeline.storage.catalog.connection import Connect
from quantlab_pipeline.storage.catalog.sync import SyncReport, sync_catalog
from quantlab_pipeline.storage.layout import ARCHIVING_MARKER, is_temp_file, iter_run_dirs
from quantlab_pipeline.storage.lifecycle import running_in_month


@dataclass(frozen=True)
class ArchiveReport:
    archive: Path
    month: str
    run_dirs: list[str]
    files: int
    bytes: int
    sync: SyncReport


class _Entry(NamedTuple):
    path: Path
    name: str  # the archive member name, `YYYY-MM/...`
    size: int | None  # None: not a regular file
    mtime_ns: int


def _tree(month_dir: Path, month: str) -> list[_Entry]:
    """Everything under a month directory, in archive order."""

    def entry(path: Path, name: str) -> _Entry:
        st = path.lstat()
        return _Entry(path, name, st.st_size if stat.S_ISREG(st.st_mode) else None, st.st_mtime_ns)

    entries = [entry(month_dir, month)]
    for dirpath, dirnames, filenames in os.walk(month_dir):
        dirnames.sort()
        base = Path(dirpath)
        for name in [*dirnames, *sorted(f for f in filenames if not (is_temp_file(f) or f == ARCHIVING_MARKER))]:
            entries.append(entry(base / name, f"{month}/{(base / name).relative_to(month_dir)}"))
    return entries


def _verify_archive(archive: Path, expected: list[_Entry]) -> None:
    """Re-open the archive: same members, same sizes, every byte readable (gzip CRC checked)."""
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


def archive_month(
    runs_dir: str | Path,
    month: str,
    dest: str | Path,
    catalog_path: str | Path,
    *,
    connect: Connect | None = None,
) -> ArchiveReport:
    """Archive `runs/<month>/` to `dest` (.tar.gz, members `YYYY-MM/run_id=…/…`; restore with
    `tar -xzf dest -C runs`), verify it, remove the month's directories, reconcile the catalog.

    Refuses to overwrite `dest`; removes nothing unless the archive verified and the month did
    not change while it was written.
    """
    month = validate_month(month)
    root = Path(runs_dir)
    month_dir = root / month
    run_dirs = [p.name for m, _, p in iter_run_dirs(root) if m == month]
    if not run_dirs:
        raise QuantlabError(f"no run directories for {month} under {root}")
    dest = Path(dest)
    if dest.exists():
        raise QuantlabError(f"archive {dest} already exists; refusing to overwrite it")
    if dest.resolve().is_relative_to(month_dir.resolve()):
        raise QuantlabError(f"archive {dest} is inside {month_dir}, which it is about to remove")
    # Writers refuse a month with the marker; a live writer already in it makes archiving refuse.
    atomic_write_bytes(month_dir / ARCHIVING_MARKER, b"")
    try:
        return _archive_marked(root, month, month_dir, dest, run_dirs, catalog_path, connect)
    finally:
        (month_dir / ARCHIVING_MARKER).unlink(missing_ok=True)


def _archive_marked(
    root: Path,
    month: str,
    month_dir: Path,
    dest: Path,
    run_dirs: list[str],
    catalog_path: str | Path,
    connect: Connect | None,
) -> ArchiveReport:
    live = running_in_month(root, month)
    if live:
        raise QuantlabError(
            f"{month} has {len(live)} run(s) still being written, e.g. {live[0].path}; archive the month once they end"
        )
    entries = _tree(month_dir, month)

    def write(fh: IO[bytes]) -> None:
        with tarfile.open(fileobj=fh, mode="w:gz") as tar:
            for e in entries:
                tar.add(e.path, arcname=e.name, recursive=False)

    atomic_write(dest, write)
    try:
        _verify_archive(dest, entries)
    except (QuantlabError, OSError, tarfile.TarError, EOFError) as exc:
        dest.unlink(missing_ok=True)
        if isinstance(exc, QuantlabError):
            raise
        raise QuantlabError(f"archive {dest} failed verification ({exc}); nothing was removed") from None
    if _tree(month_dir, month) != entries:
        raise QuantlabError(f"{month_dir} changed while it was archived; {dest} is kept but nothing was removed")
    shutil.rmtree(month_dir)
    files = [e.size for e in entries if e.size is not None]
    return ArchiveReport(
        archive=dest,
        month=month,
        run_dirs=run_dirs,
        files=len(files),
        bytes=sum(files),
        sync=sync_catalog(catalog_path, root, connect=connect),
    )
