"""What the catalog sensor compares between ticks: a stat per terminal run directory, no hashing
and no database (README "The catalog sensor (instead of cron)")."""

from __future__ import annotations

import hashlib
from pathlib import Path

from quantlab_pipeline.storage.catalog.schema import MANIFEST_STATUSES
from quantlab_pipeline.storage.layout import MANIFEST, SUCCESS_MARKER, iter_run_dirs
from quantlab_pipeline.storage.manifest import InvalidJSONFile, read_json_object


def _stat_token(path: Path) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "-"
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_size}"


def dir_fingerprint(run_dir: Path) -> str:
    """Stat of run.json and _SUCCESS: both are replaced atomically, so any rewrite changes it."""
    return f"{_stat_token(run_dir / MANIFEST)}|{_stat_token(run_dir / SUCCESS_MARKER)}"


def terminal_fingerprint(runs_dir: str | Path) -> tuple[str, int]:
    """`(digest, count)` of the terminal run directories, for the sensor. A directory counts when
    it has `_SUCCESS`, or a run.json that says `failed` (or that is unreadable: the sync rejects
    it); its entry is the stat of both files, so a new, rewritten, unmarked or removed run
    changes the digest."""
    digest, count = hashlib.sha256(), 0
    for month, run_id, run_dir in iter_run_dirs(runs_dir):
        state: object
        if (run_dir / SUCCESS_MARKER).exists():
            state = "marked"
        else:
            try:
                state = read_json_object(run_dir / MANIFEST)[1].get("status")
            except FileNotFoundError:
                continue
            except (InvalidJSONFile, OSError):
                state = "invalid"
            if state in MANIFEST_STATUSES and state != "failed":
                continue
        digest.update(f"{month}/{run_id}:{state}:{dir_fingerprint(run_dir)}\n".encode())
        count += 1
    return digest.hexdigest(), count
