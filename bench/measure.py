"""Timing and memory primitives: repeated samples summarised as median / min / max, and child
processes measured for wall time and their own peak RSS.

The machine is shared, so one sample means little: every figure is the median of `repeat`
samples with its spread. A child's peak memory comes from `os.wait4`, which returns that one
child's rusage (`RUSAGE_CHILDREN` would accumulate over every child the benchmark ever ran).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


def summarize(samples: Sequence[float], unit: str) -> dict:
    """A figure: median, min and max of its samples, with the samples themselves."""
    values = [float(v) for v in samples]
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "unit": unit,
        "samples": values,
    }


def ratio(figure: dict, denominator: float) -> dict:
    """A figure's samples each divided by the same number (e.g. the bare scan's median)."""
    return summarize([v / denominator for v in figure["samples"]], "ratio")


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    """Wall seconds of `repeat` calls of `fn` (the caller warms it up first)."""
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


@dataclass(frozen=True)
class ChildRun:
    wall_s: float
    peak_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str


def run_child(argv: list[str], *, env: dict[str, str], cwd: Path, log_dir: Path, timeout_s: float = 3600.0) -> ChildRun:
    """Run `argv` to completion; wall time from spawn to exit and the child's own peak RSS."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "stdout.txt", log_dir / "stderr.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = started + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    return ChildRun(
        wall_s=wall,
        peak_rss_bytes=int(usage.ru_maxrss) * 1024,  # Linux reports kilobytes
        returncode=proc.returncode,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


def child_env(**extra: str) -> dict[str, str]:
    """The benchmark's environment without any Dagster / quantlab settings of the user's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "QUANTLAB_", "NUMBA_"))}
    env.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env
