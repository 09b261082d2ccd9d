"""Where a project keeps its runs and its catalog, as one typed value (docs/architecture.md
"Settings"): what every command, the month runner and the Dagster resources are handed instead of
two loose strings, so a path is a `Path` from the flag to the file that is opened."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from quantlab_pipeline.storage.layout import DEFAULT_CATALOG, DEFAULT_RUNS_DIR


@dataclass(frozen=True)
class ProjectPaths:
    runs_dir: Path = Path(DEFAULT_RUNS_DIR)
    catalog_path: Path = Path(DEFAULT_CATALOG)

    @classmethod
    def of(cls, runs_dir: str | Path = DEFAULT_RUNS_DIR, catalog_path: str | Path = DEFAULT_CATALOG) -> ProjectPaths:
        return cls(Path(runs_dir), Path(catalog_path))

    def resolved(self) -> ProjectPaths:
        """Absolute paths: what a run's config and a worker in another directory need."""
        return replace(self, runs_dir=self.runs_dir.resolve(), catalog_path=self.catalog_path.resolve())
