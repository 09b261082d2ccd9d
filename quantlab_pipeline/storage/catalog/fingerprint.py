"""What the catalog sensor compares: a stat per terminal run directory, no hashing of files and no
database (docs/catalog.md "The sensor").

The digest is the XOR of one hash per directory, so the catalog keeps the same digest of what it
holds up to date with each change (storage/catalog/progress.py) and the sensor's safety net can
compare the two without either side reading everything twice.
"""

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


def entry_hash(month: str, run_id: str, fingerprint: str) -> int:
    """One directory's share of a digest: 128 bits of the sha256 of `month/run_id:fingerprint`."""
    return int.from_bytes(hashlib.sha256(f"{month}/{run_id}:{fingerprint}".encode()).digest()[:16], "big")


def hex_digest(value: int) -> str:
    return f"{value:032x}"


def terminal_fingerprint(runs_dir: Path) -> tuple[str, int]:
    """`(digest, count)` of the terminal run directories. A directory counts when it has
    `_SUCCESS`, or a run.json that says `failed` (or that is unreadable: the sync rejects it);
    its entry is the stat of both files, so a new, rewritten, unmarked or removed run changes the
    digest. After a sync with nothing in flight it equals the catalog's digest of its runs and
    rejections."""
    digest, count = 0, 0
    for month, run_id, run_dir in iter_run_dirs(runs_dir):
        if not (run_dir / SUCCESS_MARKER).exists():
            try:
                state = read_json_object(run_dir / MANIFEST)[1].get("status")
            except FileNotFoundError:
                continue
            except (InvalidJSONFile, OSError):
                state = "invalid"
            if state in MANIFEST_STATUSES and state != "failed":
                continue
        digest ^= entry_hash(month, run_id, dir_fingerprint(run_dir))
        count += 1
    return hex_digest(digest), count
