"""Where everything lives on disk and which artifacts complete which run type (docs/artifacts.md "What a run writes")."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantlab_pipeline.core.spec import MONTH_RE, RUN_ID_RE, validate_month, validate_run_id

DEFAULT_RUNS_DIR = "runs"
DEFAULT_CATALOG = "data/backtest_catalog.duckdb"

MANIFEST_SCHEMA_VERSION = "1.0.0"
ARTIFACT_SCHEMA_VERSION = "1.0.0"
SUPPORTED_MANIFEST_VERSIONS = frozenset({MANIFEST_SCHEMA_VERSION})

MANIFEST = "run.json"
SUCCESS_MARKER = "_SUCCESS"
STDOUT_LOG = "logs/stdout.txt"
STDERR_LOG = "logs/stderr.txt"
SPECS_DIR = "_specs"
LOCKS_DIR = "_locks"
REPORTS_DIR = "reports"  # `quantlab report` pages (docs/reports.md); the catalog never looks here

ARTIFACT_PATHS: dict[str, str] = {
    "alerts": "inputs/alerts.parquet",
    "paths": "truth/paths.parquet",
    "features": "features/features.parquet",
    "trades": "policy/trades.parquet",
    "summary": "results/summary.parquet",
    "frontier": "results/frontier.parquet",
    "policy_daily": "results/policy_daily.parquet",
    "overfitting": "results/overfitting.parquet",
    "walkforward": "results/walkforward.parquet",
    "equity": "portfolio/equity.parquet",
    "positions": "portfolio/positions.parquet",
    "portfolio": "results/portfolio.parquet",
    "errors": "errors/errors.parquet",
}
# One step writes the portfolio's three artifacts (docs/portfolio.md): the curve, what the next
# month starts from, and the window-to-date figures.
PORTFOLIO_ARTIFACTS: tuple[str, ...] = ("equity", "positions", "portfolio")
# The artifacts a step writes together, by the step's name (an asset each); any other step writes
# the one artifact it is named after.
# The frontier's step writes the daily matrix and PBO/SPA with it (docs/confidence.md): they are
# computed from the same simulation, never from the stored frontier.
CONFIDENCE_ARTIFACTS: tuple[str, ...] = ("policy_daily", "overfitting")
STEP_ARTIFACTS: dict[str, tuple[str, ...]] = {
    "portfolio": PORTFOLIO_ARTIFACTS,
    "frontier": ("frontier", *CONFIDENCE_ARTIFACTS),
}


def step_artifacts(step: str) -> tuple[str, ...]:
    """What the step named `step` writes: that artifact first, then the others it writes with it."""
    return (step, *(a for a in STEP_ARTIFACTS.get(step, ()) if a != step))


# The upstream artifacts each artifact is computed from; a recorded input that no longer matches
# the upstream's current sha256 makes the artifact stale and blocks completion.
ARTIFACT_INPUTS: dict[str, tuple[str, ...]] = {
    "alerts": (),
    "paths": ("alerts",),
    "trades": ("alerts", "paths"),
    "summary": ("alerts", "paths", "trades"),
    "frontier": ("alerts", "paths"),
    **dict.fromkeys(CONFIDENCE_ARTIFACTS, ("alerts", "paths")),
    "features": ("alerts", "paths"),
    # and the previous months' frontiers, recorded in the artifact's Parquet metadata
    "walkforward": ("frontier",),
    # and the previous month's positions (PREVIOUS_MONTH_INPUTS)
    **dict.fromkeys(PORTFOLIO_ARTIFACTS, ("alerts", "paths", "trades")),
    "errors": (),
}

# Artifacts computed from an artifact of the previous month of the same run (docs/portfolio.md):
# recorded in `inputs` under `month_input_key`, and stale, like any other input, once that month's
# artifact is rewritten with other bytes.
PREVIOUS_MONTH_INPUTS: dict[str, tuple[str, ...]] = dict.fromkeys(PORTFOLIO_ARTIFACTS, ("positions",))


def month_input_key(artifact: str, month: str) -> str:
    """The `inputs` key of another month's artifact: `positions@2024-01`."""
    return f"{artifact}@{validate_month(month)}"


def split_month_input(key: str) -> tuple[str, str] | None:
    """`(artifact, month)` of a `month_input_key`; None for an artifact of the same month."""
    artifact, sep, month = key.partition("@")
    return (artifact, month) if sep and MONTH_RE.match(month) else None


# The phase (errors.parquet `phase`) of the step that writes each artifact; a step replaces its
# phase's error rows when it succeeds.
ARTIFACT_PHASES: dict[str, str] = {
    "alerts": "inputs",
    "paths": "truth",
    "trades": "policy",
    "summary": "summary",
    "frontier": "frontier",
    **dict.fromkeys(CONFIDENCE_ARTIFACTS, "frontier"),
    "features": "features",
    "walkforward": "walkforward",
    **dict.fromkeys(PORTFOLIO_ARTIFACTS, "portfolio"),
}

REQUIRED_ARTIFACTS: dict[str, tuple[str, ...]] = {
    "path-only": ("alerts", "paths"),
    "policy": ("alerts", "paths", "trades", "summary"),
    "optimization": ("alerts", "paths", "frontier"),
}


# What a materialization of each run type may write (docs/artifacts.md "What a run writes"): an asset outside its
# run type's set is refused before the directory is touched, so a completed run stays completed.
# `features` and `walkforward` apply to their run types whatever the spec says (a spec that turns
# them off materializes nothing for them: orchestration.research).
OPTIONAL_ARTIFACTS: dict[str, frozenset[str]] = {
    "path-only": frozenset({"features"}),
    "policy": frozenset({"features", *PORTFOLIO_ARTIFACTS}),
    "optimization": frozenset({"walkforward", *CONFIDENCE_ARTIFACTS}),
}
APPLICABLE_ARTIFACTS: dict[str, frozenset[str]] = {
    run_type: frozenset({*required, *OPTIONAL_ARTIFACTS[run_type], "errors"})
    for run_type, required in REQUIRED_ARTIFACTS.items()
}


def required_artifacts(run_type: str, spec: Mapping[str, Any] | None) -> tuple[str, ...]:
    """What a month of a run is to hold, given its stored spec (`RunSpec.to_dict()`, the
    manifest's `spec`): `REQUIRED_ARTIFACTS` plus `features` for path-only and policy runs unless
    the spec says `features: false`, plus `walkforward` for a walk-forward optimization, plus the
    portfolio's artifacts for a policy run whose spec has a `portfolio`, plus the daily matrix and
    overfitting for an optimization whose spec says `confidence: true`; each after the artifacts
    it is computed from. Completion, the catalog's validation, the steps, the candle read,
    `runs create` and `runs resume` all follow it.

    A spec written before features (the portfolio, confidence) existed has no `features`
    (`portfolio`, `confidence`) key and is complete without them.
    """
    spec = spec or {}
    sweep = spec.get("sweep")
    portfolio = isinstance(spec.get("portfolio"), Mapping)
    wanted = {
        "features": bool(spec.get("features", False)),
        "walkforward": isinstance(sweep, Mapping) and sweep.get("walk_forward") is not None,
        **dict.fromkeys(PORTFOLIO_ARTIFACTS, portfolio),
        **dict.fromkeys(CONFIDENCE_ARTIFACTS, spec.get("confidence") is True),
    }
    return (*REQUIRED_ARTIFACTS[run_type], *(a for a in sorted(OPTIONAL_ARTIFACTS[run_type]) if wanted[a]))


# `.<name>.<random>.tmp`: an atomic write's temp file (storage/atomic.py). One left behind by a
# killed writer is never part of a run: not archived, not counted, removed by `clean_leftovers`.
TEMP_FILE_RE = re.compile(r"^\..+\.tmp$")

RUN_DIR_RE = re.compile(r"^run_id=(?P<run_id>.+)$")
MONTH_DIR_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def run_dir_path(runs_dir: Path, month: str, run_id: str) -> Path:
    """`runs/YYYY-MM/run_id=<uuid>`; both parts are validated before they touch a path."""
    return runs_dir / validate_month(month) / f"run_id={validate_run_id(run_id)}"


def spec_path(runs_dir: Path, run_id: str) -> Path:
    return runs_dir / SPECS_DIR / f"{validate_run_id(run_id)}.json"


def report_path(runs_dir: Path, run_id: str) -> Path:
    """Where `quantlab report RUN_ID` writes the run's HTML page by default."""
    return runs_dir / REPORTS_DIR / f"{validate_run_id(run_id)}.html"


def report_command(runs_dir: Path, run_id: str) -> str:
    """The command that writes the run's HTML report to `report_path`, as typed from the project root."""
    custom = "" if str(runs_dir) == DEFAULT_RUNS_DIR else f" --runs-dir {shlex.quote(str(runs_dir))}"
    return f"quantlab report {validate_run_id(run_id)}{custom}"


def lock_path(runs_dir: Path, month: str, run_id: str) -> Path:
    """`runs/_locks/<month>_<run_id>.lock`: exists only while a writer holds it."""
    return runs_dir / LOCKS_DIR / f"{validate_month(month)}_{validate_run_id(run_id)}.lock"


def month_lock_path(runs_dir: Path, month: str) -> Path:
    """`runs/_locks/<month>.lock`: writers of the month hold it shared while they write, an
    archive or a delete of the month exclusively (kept: one file per month)."""
    return runs_dir / LOCKS_DIR / f"{validate_month(month)}.lock"


def artifact_applies(run_type: str, artifact: str) -> bool:
    return artifact in APPLICABLE_ARTIFACTS.get(run_type, frozenset())


def is_temp_file(name: str) -> bool:
    return TEMP_FILE_RE.match(name) is not None


def temp_leftovers(directory: Path) -> list[Path]:
    """Every atomic write's temp file under `directory`."""
    return [Path(d) / name for d, _, names in os.walk(directory) for name in sorted(names) if is_temp_file(name)]


def iter_run_dirs(runs_dir: Path):
    """Yield `(month, run_id, path)` for every directory named `YYYY-MM/run_id=<uuid>`.

    Anything else under `runs_dir` (specs, locks, stray folders) is ignored.
    """
    if not runs_dir.is_dir():
        return
    for month_dir in sorted(runs_dir.iterdir()):
        if not (month_dir.is_dir() and MONTH_DIR_RE.match(month_dir.name)):
            continue
        for run_dir in sorted(month_dir.iterdir()):
            m = RUN_DIR_RE.match(run_dir.name)
            if m and run_dir.is_dir() and RUN_ID_RE.match(m.group("run_id")):
                yield month_dir.name, m.group("run_id"), run_dir
