"""What this machine can hold: the memory available to a new allocation (docs/performance.md "Performance")."""

from __future__ import annotations

import os
from pathlib import Path

MEMINFO = Path("/proc/meminfo")


def available_memory_bytes() -> int | None:
    """Linux's `MemAvailable` (free memory plus the page cache it can drop), else the free pages
    `sysconf` reports; None where neither is known."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
