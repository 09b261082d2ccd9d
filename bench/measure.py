"""Timing and memory primitives: repeated samples summarised as median / min / max, and child
processes measured for wall time and their own peak RSS.

The machine is shared, so one sample means little: every figure is the median of `repeat`
samples with its spread. A child's peak memory is its `ru_maxrss` from `os.wait4` (that one
child; `RUSAGE_CHILDREN` would accumulate over every child), taken by `rusage_child.py`.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


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
    """Run `argv` to completion through `rusage_child.py`: wall time from spawn to exit and the
    child's own peak RSS (not this process's, which a direct child would inherit)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path, report_path = log_dir / "stdout.txt", log_dir / "stderr.txt", log_dir / "rusage.json"
    report_path.unlink(missing_ok=True)
    wrapper = [sys.executable, str(Path(__file__).with_name("rusage_child.py")), str(report_path), *argv]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            wrapper, env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"{' '.join(argv[:3])} …: no exit after {timeout_s:.0f} s") from None
    report = json.loads(report_path.read_text())
    return ChildRun(
        wall_s=report["wall_s"],
        peak_rss_bytes=report["peak_rss_bytes"],
        returncode=report["returncode"],
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


def child_env(**extra: str) -> dict[str, str]:
    """The benchmark's environment without any Dagster / quantlab settings of the user's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "QUANTLAB_", "NUMBA_"))}
    env.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env
