"""The deployment's settings, read once from the environment and handed to `build_defs`.

Nothing else reads `QUANTLAB_*` variables in the Dagster layer, and nothing sets them: the CLI
hands the month runner its own `ProjectPaths` from its flags. The runs directory and the catalog
are one `ProjectPaths` here too (docs/architecture.md "Settings"). A bad value never breaks the
code location: it is replaced by the default and reported (`problems`), and the component that
uses it says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from quantlab_pipeline.storage.layout import DEFAULT_CATALOG, DEFAULT_RUNS_DIR
from quantlab_pipeline.storage.paths import ProjectPaths

RUNS_DIR_ENV = "QUANTLAB_RUNS_DIR"
CATALOG_ENV = "QUANTLAB_CATALOG"
SENSOR_INTERVAL_ENV = "QUANTLAB_CATALOG_SENSOR_INTERVAL"
DEFAULT_SENSOR_INTERVAL_S = 30


@dataclass(frozen=True)
class Settings:
    paths: ProjectPaths = field(default_factory=ProjectPaths)
    sensor_interval_s: int = DEFAULT_SENSOR_INTERVAL_S
    problems: tuple[str, ...] = ()  # one line per invalid setting that fell back to its default

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        problems = []
        raw = env.get(SENSOR_INTERVAL_ENV, "").strip()
        interval = DEFAULT_SENSOR_INTERVAL_S
        if raw:
            try:
                interval = int(raw)
            except ValueError:
                interval = 0
            if interval <= 0:
                problems.append(
                    f"{SENSOR_INTERVAL_ENV}: expected a positive number of seconds, got {raw!r}; "
                    f"using {DEFAULT_SENSOR_INTERVAL_S}"
                )
                interval = DEFAULT_SENSOR_INTERVAL_S
        return cls(
            paths=ProjectPaths.of(env.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR, env.get(CATALOG_ENV) or DEFAULT_CATALOG),
            sensor_interval_s=interval,
            problems=tuple(problems),
        )
