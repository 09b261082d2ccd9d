"""The completion journal: one line for every change of a month directory the catalog cares about,
so a catalog sync reconciles what changed instead of every directory (docs/catalog.md
"Incremental sync").

`runs/_journal/<segment>.jsonl`, lines `{"at", "month", "run_id", "change"}`. A line is appended
*before* the change it announces (a month finalized, recorded failed, reopened, deleted or
archived), by the writer that holds the month's run lock until the change is done. A reader that
finds the run lock free after reading a line therefore sees the change done (or never made, if
the writer died first); one that finds it held knows the change is in flight and reads the line
again next time. No crash between a change and its line can hide the change from the catalog.

Appends are serialised by a flock on `_journal/.lock` (the reader takes it shared while it reads,
so it never sees half a line), fsynced, and go to the newest segment until it reaches
`SEGMENT_BYTES`; a sync removes the segments before its position once it has applied them.
`_journal/id` names this journal, renamed whenever the first segment is created, so a position in
a journal that was deleted or emptied is never taken for a position in the new one.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from quantlab_pipeline.core.spec import MONTH_RE, RUN_ID_RE, utc_now_iso
from quantlab_pipeline.storage.atomic import atomic_write_bytes, fsync_dir, raise_environment_fault
from quantlab_pipeline.storage.faults import fault_point

JOURNAL_DIR = "_journal"
SEGMENT_BYTES = 1 << 20  # ~6,000 lines: a segment is removed once a sync has applied it
_SEGMENT_RE = re.compile(r"^(\d{12})\.jsonl$")

Change = Literal["completed", "failed", "reopened", "deleted", "archived"]


@dataclass(frozen=True)
class Position:
    """A place in one journal: byte `offset` of segment `segment`."""

    journal_id: str
    segment: int
    offset: int

    def to_json(self) -> str:
        return json.dumps({"journal_id": self.journal_id, "segment": self.segment, "offset": self.offset})

    @classmethod
    def from_json(cls, text: str | None) -> Position | None:
        """The position stored by `to_json`, or None for anything else (no position: a full sync)."""
        try:
            data = json.loads(text or "")
            return cls(str(data["journal_id"]), int(data["segment"]), int(data["offset"]))
        except (ValueError, TypeError, KeyError):
            return None

    def __str__(self) -> str:
        return f"{self.segment}:{self.offset}"


@dataclass(frozen=True)
class Entry:
    position: Position  # where the line starts: a reader that stops here reads it again
    month: str
    run_id: str
    change: str


@dataclass(frozen=True)
class Batch:
    entries: list[Entry]
    end: Position  # just after the last line read


class Journal:
    """The journal of one runs directory."""

    def __init__(self, runs_dir: Path):
        self.dir = runs_dir / JOURNAL_DIR

    # -- writing ---------------------------------------------------------------------------------

    def append(self, month: str, run_id: str, change: Change) -> None:
        """Announce a change of `month/run_id`, durably, before it is made (call with its run lock held).

        A full disk or a read-only runs directory is an `EnvironmentFault`, and the change is then
        not made: the journal never misses a change that happened.
        """
        line = json.dumps({"at": utc_now_iso(), "month": month, "run_id": run_id, "change": change})
        try:
            with self._locked(fcntl.LOCK_EX, create=True):
                fault_point("journal")
                segments = self._segments()
                if not segments:  # a new journal (or one emptied by hand): a position in the old one is void
                    atomic_write_bytes(self.dir / "id", uuid.uuid4().hex.encode())
                segment = segments[-1] if segments else 1
                size = self._size(segment) if segments else 0
                if size >= SEGMENT_BYTES:
                    segment, size = segment + 1, 0
                self._write(segment, size, (line + "\n").encode())
        except OSError as exc:
            raise_environment_fault(self.dir, exc)
            raise

    def _write(self, segment: int, size: int, data: bytes) -> None:
        fd = os.open(self._path(segment), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # end the line a writer killed mid-append left: it reads as garbage
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if size == 0:
            fsync_dir(self.dir)

    # -- reading ---------------------------------------------------------------------------------

    def end(self) -> Position | None:
        """Where the next line will go (a few stats; no reading), or None when there is no journal."""
        journal_id = self._read_id()
        if journal_id is None:
            return None
        segments = self._segments()
        if not segments:
            return Position(journal_id, 1, 0)
        return Position(journal_id, segments[-1], self._size(segments[-1]))

    def read(self, since: Position) -> Batch | None:
        """Every line after `since`, or None when `since` is not in this journal any more (another
        journal, or its segment was removed): the caller then reconciles everything."""
        if self._read_id() != since.journal_id:
            return None
        with self._locked(fcntl.LOCK_SH, create=False) as exists:
            if not exists:
                return None
            segments = [s for s in self._segments() if s >= since.segment]
            if segments and segments[0] != since.segment:
                return None  # its segment is gone: lines after `since` may be gone with it
            entries: list[Entry] = []
            end = since
            for segment in segments:
                start = since.offset if segment == since.segment else 0
                with open(self._path(segment), "rb") as fh:
                    fh.seek(start)
                    data = fh.read()
                entries += _parse(since.journal_id, segment, start, data)
                end = Position(since.journal_id, segment, start + len(data))
            return Batch(entries, end)

    def drop_before(self, position: Position) -> None:
        """Remove the segments before `position`'s: every line in them has been applied."""
        if self._read_id() != position.journal_id:
            return
        for segment in self._segments():
            if segment < position.segment:
                self._path(segment).unlink(missing_ok=True)

    # -- internals -------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, mode: int, *, create: bool) -> Iterator[bool]:
        """Hold the journal's flock (`LOCK_EX` to append, `LOCK_SH` to read). Yields whether the
        journal exists (always True with `create`)."""
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.dir / ".lock", (os.O_RDWR | os.O_CREAT) if create else os.O_RDONLY, 0o666)
        except FileNotFoundError:
            yield False
            return
        try:
            fcntl.flock(fd, mode)
            yield True
        finally:
            os.close(fd)

    def _read_id(self) -> str | None:
        try:
            return (self.dir / "id").read_text().strip() or None
        except FileNotFoundError:
            return None

    def _segments(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(int(m[1]) for m in map(_SEGMENT_RE.match, names) if m)

    def _path(self, segment: int) -> Path:
        return self.dir / f"{segment:012d}.jsonl"

    def _size(self, segment: int) -> int:
        try:
            return self._path(segment).stat().st_size
        except FileNotFoundError:
            return 0


def _parse(journal_id: str, segment: int, start: int, data: bytes) -> list[Entry]:
    """The valid lines of `data` (read from byte `start` of `segment`). A line that is not a
    change of a valid month and run id (the tail a killed writer left) is skipped."""
    entries = []
    offset = start
    for raw in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
        at = Position(journal_id, segment, offset)
        offset += len(raw) + 1
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        month, run_id, change = obj.get("month"), obj.get("run_id"), obj.get("change")
        if isinstance(month, str) and isinstance(run_id, str) and MONTH_RE.match(month) and RUN_ID_RE.match(run_id):
            entries.append(Entry(at, month, run_id, str(change)))
    return entries
