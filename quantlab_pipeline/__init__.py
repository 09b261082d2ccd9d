"""quantlab_pipeline: Dagster-orchestrated backtests of calls against OHLCV candles.

The Python API (docs/catalog.md "Python API") is importable from here; the heavy parts load on first use:

    from quantlab_pipeline import query_runs, get_artifact_path, RunDirectory
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunDirectory", "get_artifact_path", "query_runs"]


def __getattr__(name: str) -> Any:
    if name in ("query_runs", "get_artifact_path"):
        from quantlab_pipeline.storage import catalog

        return getattr(catalog, name)
    if name == "RunDirectory":
        from quantlab_pipeline.storage.run_dir import RunDirectory

        return RunDirectory
    raise AttributeError(f"module 'quantlab_pipeline' has no attribute {name!r}")
