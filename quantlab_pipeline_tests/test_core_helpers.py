"""The small shared helpers of the core: one-line errors, warning records, duration units, and
loading the cached kernels."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from quantlab_pipeline.core.durations import UNIT_MS, format_duration_ms, parse_duration_ms
from quantlab_pipeline.core.errors import ErrorRecord, InputError, first_line


def test_first_line_of_an_error():
    assert first_line(InputError("\n  table not found\nTraceback: ...")) == "table not found"
    assert first_line(KeyError()) == "KeyError"  # no message: named by its type
    assert first_line("Catalog Error: x\nLINE 1") == "Catalog Error: x"
    assert first_line("") == ""


def test_warning_record_puts_keywords_in_details():
    record = ErrorRecord.warning("inputs", "null_field", "alert skipped", call_id="c", null_fields=["mint"])
    assert record == ErrorRecord(
        level="warning",
        phase="inputs",
        reason="null_field",
        message="alert skipped",
        call_id="c",
        mint=None,
        details={"null_fields": ["mint"]},
    )


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0w"),
        (1, "1ms"),
        (1_500, "1500ms"),
        (90_000, "90s"),
        (5_400_000, "90m"),
        (86_400_000, "1d"),
        (1_209_600_000, "2w"),
    ],
)
def test_format_duration_uses_the_largest_unit_that_divides(ms, text):
    assert format_duration_ms(ms) == text
    assert parse_duration_ms(text) == ms


def test_units_are_largest_first_and_every_unit_parses():
    sizes = list(UNIT_MS.values())
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 1
    for unit, size in UNIT_MS.items():
        assert parse_duration_ms(f"3{unit}") == 3 * size


def test_load_backtest_kernels_loads_the_recorded_builds_without_compiling(tmp_path):
    """A run worker's server loads the cached kernel builds up front: nothing without a record,
    then exactly the builds an earlier process compiled and recorded, from the cache (a hit)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    load = (
        "from quantlab_pipeline.core.nb import candles; from quantlab_pipeline.warm.kernels import load_backtest_kernels; "
        "print(load_backtest_kernels(), len(candles.scatter_batch.signatures), "
        "sum(candles.scatter_batch.stats.cache_hits.values()))"
    )
    compile_one = (
        "import numpy as np; from quantlab_pipeline.core.nb.candles import scatter_batch; "
        "from quantlab_pipeline.warm.kernels import record_kernel_signatures; "
        "i, f = np.zeros(1, np.int64), np.ones(1); k = np.zeros(1, np.int32); "
        "scatter_batch(k, i, f, f, f, f, f, np.zeros(1, np.int64), np.ones(1, np.int64), "
        "i.copy(), f.copy(), f.copy(), f.copy(), f.copy(), f.copy()); print(record_kernel_signatures())"
    )

    def run(code: str) -> str:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert run(load) == "0 0 0"  # no record: nothing to load, nothing compiled
    assert run(compile_one) == "1"
    assert run(load) == "1 1 1"  # the one recorded build, loaded from the cache before any call


def test_kernels_compiled_reads_the_cache_index_files(tmp_path, monkeypatch):
    """An index file of each kernel, newer than its source, under `NUMBA_CACHE_DIR` (any
    subdirectory, as numba lays them out): compiled; an index older than its source: not."""
    from quantlab_pipeline.core.nb import truth, windows
    from quantlab_pipeline.warm.kernels import _index_name, kernels_compiled

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert not kernels_compiled()
    folder = tmp_path / "nb_0123"
    folder.mkdir()
    for kernel in (windows.fill_window_bounds, truth.truth_kernel):
        (folder / _index_name(kernel)).write_bytes(b"")
    assert kernels_compiled()
    assert not kernels_compiled(sweep=True)  # the sweep's kernels have no index
    stale = folder / _index_name(truth.truth_kernel)
    os.utime(stale, (0, 0))  # older than the source: numba would recompile
    assert not kernels_compiled()
