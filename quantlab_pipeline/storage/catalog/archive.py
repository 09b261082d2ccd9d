"""`archive_month`: a month of run directories to a verified .tar.gz, then removed and the
catalog reconciled (docs/catalog.md "Archiving a month")."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.core.spec import validate_month
from quantlab_pipeline.storage.catalog.connection import Connect
from quantlab_pipeline.storage.catalog.sync import SyncReport, sync_catalog
from quantlab_pipeline.storage.faults import fault_point
from quantlab_pipeline.storage.journal import Journal
from quantlab_pipeline.storage.layout import iter_run_dirs, month_lock_path
from quantlab_pipeline.storage.lifecycle import month_statuses
from quantlab_pipeline.storage.tarball import check_destination, tree, write_verified
from quantlab_pipeline.storage.writer import MonthLock

# How long an archive waits for a write in progress in the month (one artifact) before refusing.
WRITE_WAIT_S = 5.0


@dataclass(frozen=True)
class ArchiveReport:
    archive: Path
    month: str
    run_dirs: list[str]
    files: int
    bytes: int
    sync: SyncReport


def archive_month(
    runs_dir: str | Path,
    month: str,
    dest: str | Path,
    catalog_path: str | Path,
    *,
    include_interrupted: bool = False,
    connect: Connect | None = None,
) -> ArchiveReport:
    """Archive `runs/<month>/` to `dest` (.tar.gz, members `YYYY-MM/run_id=…/…`; restore with
    `tar -xzf dest -C runs`), verify it, remove the month's directories, reconcile the catalog.

    Holds the month's lock exclusively throughout: a write into the month waits for the archive
    to finish or refuse, and is never refused itself. Refuses (removing nothing) a month with a
    live run, with an interrupted run unless `include_interrupted` (removing it would leave
    `runs resume` nothing to finish), an existing `dest`, and a month that changed while archived.
    """
    month = validate_month(month)
    root = Path(runs_dir)
    month_dir = root / month
    run_dirs = [(run_id, p.name) for m, run_id, p in iter_run_dirs(root) if m == month]
    if not run_dirs:
        raise QuantlabError(f"no run directories for {month} under {root}")
    dest = Path(dest)
    check_destination(dest, [month_dir])
    with MonthLock(month_lock_path(root, month)).exclusive(WRITE_WAIT_S) as locked:
        if not locked:
            raise QuantlabError(f"{month} has a run writing into it right now; archive the month once its runs end")
        fault_point("archive.locked")
        statuses = month_statuses(root, month)
        live = [s for s in statuses if s.state == "running"]
        if live:
            raise QuantlabError(
                f"{month} has {len(live)} run(s) still being written, e.g. {live[0].path}; "
                "archive the month once they end"
            )
        interrupted = [s for s in statuses if s.state in ("interrupted", "incomplete")]
        if interrupted and not include_interrupted:
            raise QuantlabError(
                f"{month} has {len(interrupted)} interrupted run(s), e.g. {interrupted[0].path}: finish them with "
                f"`quantlab runs resume {interrupted[0].run_id}`, or archive them as they are with --include-interrupted"
            )
        entries = tree(month_dir, month)
        write_verified(dest, entries)
        if tree(month_dir, month) != entries:
            raise QuantlabError(f"{month_dir} changed while it was archived; {dest} is kept but nothing was removed")
        journal = Journal(root)
        for run_id, _ in run_dirs:
            journal.append(month, run_id, "archived")
        shutil.rmtree(month_dir)
    files = [e.size for e in entries if e.size is not None]
    return ArchiveReport(
        archive=dest,
        month=month,
        run_dirs=[name for _, name in run_dirs],
        files=len(files),
        bytes=sum(files),
        sync=sync_catalog(catalog_path, root, connect=connect),
    )
