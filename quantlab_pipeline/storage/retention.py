"""The files of a run and their removal (docs/lifecycle.md "Deleting and pruning runs"): its month
directories and its spec, found from the runs directory alone; which runs a prune selects.

Each month directory is removed under its run lock after a `deleted` line in the journal, so the
next catalog sync drops its rows; the spec goes last, so a delete cut short can be finished by
running it again.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.core.spec import RUN_TYPES, RunSpec, validate_run_id
from quantlab_pipeline.storage.layout import MONTH_DIR_RE, SPECS_DIR, run_dir_path, spec_path
from quantlab_pipeline.storage.lifecycle import MonthStatus, month_status
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline.storage.specs import read_spec
from quantlab_pipeline.storage.tarball import Entry, check_destination, tree, write_verified

PRUNE_STATUSES = ("completed", "failed")


@dataclass(frozen=True)
class RunFiles:
    """What a run holds under the runs directory."""

    run_id: str
    spec: RunSpec | None
    spec_file: Path | None
    months: list[MonthStatus]  # one per month directory on disk
    bytes: int  # disk usage of the directories and the spec

    @property
    def live(self) -> list[MonthStatus]:
        return [m for m in self.months if m.state == "running"]

    @property
    def state(self) -> str:
        """`running` (a month is being written), `failed` (a month failed or was interrupted),
        `completed` (every month on disk completed, at least one) or `incomplete`."""
        states = {m.state for m in self.months}
        if "running" in states:
            return "running"
        if states & {"failed", "interrupted"}:
            return "failed"
        return "completed" if states == {"completed"} else "incomplete"


def disk_usage(path: Path) -> int:
    """Bytes of disk a file or directory tree takes (allocated blocks, like `du`)."""
    try:
        if not path.is_dir():
            return path.lstat().st_blocks * 512
    except FileNotFoundError:
        return 0
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def run_files(runs_dir: Path, run_id: str) -> RunFiles:
    """The month directories and spec of `run_id`; a run with neither is a one-line error."""
    run_id = validate_run_id(run_id)
    months = []
    if runs_dir.is_dir():
        for month_dir in sorted(runs_dir.iterdir()):
            if MONTH_DIR_RE.match(month_dir.name) and run_dir_path(runs_dir, month_dir.name, run_id).is_dir():
                months.append(month_status(RunDirectory(runs_dir, month_dir.name, run_id)))
    spec_file = spec_path(runs_dir, run_id)
    spec = read_spec(runs_dir, run_id) if spec_file.exists() else None
    if spec is None and not months:
        raise QuantlabError(f"run {run_id}: no spec and no run directory under {runs_dir}")
    used = sum(disk_usage(m.path) for m in months) + disk_usage(spec_file)
    return RunFiles(run_id, spec, spec_file if spec else None, months, used)


def select_runs(
    runs_dir: Path,
    *,
    older_than: dt.timedelta,
    run_type: str | None = None,
    status: str | None = None,
    now: dt.datetime | None = None,
) -> list[RunFiles]:
    """The runs whose spec was created more than `older_than` ago, of `run_type` and whose state
    is `status` when given (oldest first); runs being written are never selected."""
    if run_type is not None and run_type not in RUN_TYPES:
        raise QuantlabError(f"--run-type: expected one of {', '.join(RUN_TYPES)}, got {run_type!r}")
    if status is not None and status not in PRUNE_STATUSES:
        raise QuantlabError(f"--status: expected one of {', '.join(PRUNE_STATUSES)}, got {status!r}")
    cutoff = (now or dt.datetime.now(dt.UTC)) - older_than
    chosen = []
    for spec_file in sorted((runs_dir / SPECS_DIR).glob("*.json")):
        spec = read_spec(runs_dir, validate_run_id(spec_file.stem))
        if dt.datetime.fromisoformat(spec.created_at) >= cutoff or run_type not in (None, spec.run_type):
            continue
        files = run_files(runs_dir, spec.run_id)
        if files.state != "running" and status in (None, files.state):
            chosen.append(files)
    return sorted(chosen, key=lambda f: (f.spec.created_at if f.spec else "", f.run_id))


def archive_runs(runs_dir: Path, runs: list[RunFiles], dest: str | Path) -> tuple[int, int]:
    """Write the runs' month directories and specs to a verified .tar.gz (members relative to the
    runs directory: restore with `tar -xzf dest -C <runs dir>`); `(files, bytes)` archived."""
    dest = Path(dest)
    check_destination(dest, [m.path for r in runs for m in r.months])
    entries: list[Entry] = []
    for run in runs:
        for month in run.months:
            entries += tree(month.path, month.path.relative_to(runs_dir).as_posix())
        if run.spec_file is not None:
            entries += tree(run.spec_file, run.spec_file.relative_to(runs_dir).as_posix())
    write_verified(dest, entries)
    sizes = [e.size for e in entries if e.size is not None]
    return len(sizes), sum(sizes)


def remove_run_files(runs_dir: Path, run: RunFiles) -> None:
    """Remove the run's month directories (each announced to the catalog first), then its spec."""
    for month in run.months:
        RunDirectory(runs_dir, month.month, run.run_id).remove("deleted")
    if run.spec_file is not None:
        run.spec_file.unlink(missing_ok=True)
