"""Run a command; write its wall time and its own peak RSS as JSON to REPORT.

Usage: rusage_child.py REPORT COMMAND [ARG...]

Why a wrapper: Linux carries a process's peak RSS across `exec` from the memory it had before —
a child forked from the benchmark process would report the benchmark's own peak (gigabytes of
candles) as its `ru_maxrss`. This wrapper is a small, fresh process, so the command it forks and
execs starts from the wrapper's few megabytes and reports only what it used itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main(report: str, argv: list[str]) -> int:
    started = time.perf_counter()
    proc = subprocess.Popen(argv)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    with open(report, "w") as fh:
        json.dump({"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "returncode": proc.returncode}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
