"""Building a lab's worth of runs for `bench/scale.py` (docs/performance.md "At a lab's scale").

A bench *project* is a folder with the repository's `dagster.yaml` and `workspace.yaml` (so it is
its own `DAGSTER_HOME` and project root), tiny sample data and its own `runs/` and catalog. Runs
come two ways:

- **real**: `quantlab backtest path-only … --no-features` through the CLI, one after another (the
  warm server forks each command, as on a researcher's machine); each one's wall time is kept.
- **synthesised**: a copy of a real run under a new run id — its Dagster run record and every
  event it recorded (through `DagsterInstance.add_run` / `handle_new_event`, the instance's public
  API, so every index Dagster keeps is written as for a real run), its runless `run_spec`
  materialization, its dynamic partition key, its run directory and spec (the manifest and the
  `_SUCCESS` marker rewritten for the new id) and its completion-journal line.

`state.json` in the project records what was built, so a bench that was stopped resumes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from scale_copy import Copier, RunRows, read_template

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MONTHS = ("2024-01", "2024-02", "2024-03")  # real runs cycle through these one-month windows
ALERTS_PER_MONTH = 10  # the sample generator's minimum: the bench measures what runs cost, not data


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    real: list[dict] = field(default_factory=list)  # {"run_id", "month", "wall_s"} per real run
    synthesised: int = 0

    @property
    def runs(self) -> int:
        return len(self.real) + self.synthesised

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"real": self.real, "synthesised": self.synthesised}))
        os.replace(tmp, self.state_path)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(BIN / "quantlab"), *args], cwd=self.root, env=self.env, capture_output=True, text=True
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"quantlab {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
        return done


def project_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    keep = ("QUANTLAB_WARM_DIR", "QUANTLAB_WARM_SERVER")  # where (and whether) the warm server runs
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "QUANTLAB_")) or k in keep}
    env.update({"DAGSTER_HOME": str(root), "QUANTLAB_WARM_IDLE_S": "900", **(extra or {})})
    return env


def open_project(root: Path, *, dagster_yaml: Path | None = None, extra_env: dict[str, str] | None = None) -> Project:
    """The bench project at `root`, created (config, sample data) when it is new."""
    root.mkdir(parents=True, exist_ok=True)
    project = Project(root=root, env=project_env(root, extra_env))
    if project.state_path.exists():
        state = json.loads(project.state_path.read_text())
        project.real, project.synthesised = state["real"], state["synthesised"]
        return project
    shutil.copy(dagster_yaml or REPO / "dagster.yaml", root / "dagster.yaml")
    shutil.copy(REPO / "workspace.yaml", root / "workspace.yaml")
    project.cli(
        "sample-data",
        "--out",
        "data/alerts.duckdb",
        "--months",
        f"{MONTHS[0]}..{MONTHS[-1]}",
        "--alerts-per-month",
        str(ALERTS_PER_MONTH),
    )
    project.save()
    return project


def month_window(month: str) -> tuple[str, str]:
    first = dt.date.fromisoformat(f"{month}-01")
    following = dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first.isoformat(), (following - dt.timedelta(days=1)).isoformat()


def real_run(project: Project) -> dict:
    """One `quantlab backtest path-only` of a one-month window, timed from the command's start to its exit."""
    month = MONTHS[len(project.real) % len(MONTHS)]
    start, end = month_window(month)
    args = ["backtest", "path-only", "--calls-from-duckdb", "data/alerts.duckdb", "--interval", "5m"]
    args += ["--from", start, "--to", end, "--no-features"]
    started = time.perf_counter()
    done = project.cli(*args)
    wall = time.perf_counter() - started
    run_id = _run_id_of(done.stdout + done.stderr)
    record = {"run_id": run_id, "month": month, "wall_s": wall}
    project.real.append(record)
    project.save()
    return record


def _run_id_of(output: str) -> str:
    found = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", output)
    if not found:
        raise RuntimeError(f"no run id in the backtest's output: {output[-500:]}")
    return found[0]


def engines(project: Project):
    """SQLAlchemy engines of the instance's event log and run storage (one Postgres database for both
    on the `deploy/` instance)."""
    from sqlalchemy import create_engine

    env = project.env
    if "DAGSTER_PG_HOST" in env:
        url = (
            f"postgresql+psycopg2://{env['DAGSTER_PG_USERNAME']}:{env['DAGSTER_PG_PASSWORD']}@{env['DAGSTER_PG_HOST']}:"
            f"{env['DAGSTER_PG_PORT']}/{env['DAGSTER_PG_DB']}"
        )
        engine = create_engine(url)
        return engine, engine
    storage = project.root / ".dagster" / "storage"
    return (
        create_engine(f"sqlite:///{storage / 'events' / 'event_log.db'}"),
        create_engine(f"sqlite:///{storage / 'history' / 'runs.db'}"),
    )


def copy_files(root: Path, template: RunRows, swaps: dict[str, str], month: str) -> None:
    """The run's directory and spec (the manifest's spec hash and the `_SUCCESS` marker's manifest
    hash recomputed for the new id) and its Dagster runs' compute logs."""

    def swapped(text: str) -> str:
        for old, new in swaps.items():
            text = text.replace(old, new)
        return text

    runs_dir, logs_dir, new_id = root / "runs", root / ".dagster" / "compute_logs", swaps[template.run_id]
    source, target = runs_dir / month / f"run_id={template.run_id}", runs_dir / month / f"run_id={new_id}"
    spec_text = swapped((runs_dir / "_specs" / f"{template.run_id}.json").read_text())
    (runs_dir / "_specs" / f"{new_id}.json").write_text(spec_text)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("run.json", "_SUCCESS"))
    manifest = json.loads(swapped((source / "run.json").read_text()))
    manifest["spec_sha256"] = hashlib.sha256(spec_text.encode()).hexdigest()
    body = (json.dumps(manifest, indent=2) + "\n").encode()
    (target / "run.json").write_bytes(body)
    marker = json.loads(swapped((source / "_SUCCESS").read_text()))
    marker["manifest_sha256"] = hashlib.sha256(body).hexdigest()
    (target / "_SUCCESS").write_text(json.dumps(marker, indent=2) + "\n")
    for dagster_run_id in template.dagster_run_ids:
        if (logs_dir / dagster_run_id).is_dir():
            shutil.copytree(logs_dir / dagster_run_id, logs_dir / swaps[dagster_run_id])


def build_synthesised(project: Project, count: int) -> float:
    """Add `count` synthesised runs (bench/scale_copy.py), cycling over one template per month (the
    project's first real run of each); the seconds it took. The catalog learns of them by a full
    sync (no journal lines are written for them)."""
    started = time.perf_counter()
    events_engine, runs_engine = engines(project)
    firsts: dict[str, dict] = {}
    for record in project.real:
        firsts.setdefault(record["month"], record)
    templates = []
    for record in firsts.values():
        spec = json.loads((project.root / "runs" / "_specs" / f"{record['run_id']}.json").read_text())
        key = f"{record['month']}.{spec['run_type']}.{record['run_id']}"
        templates.append((read_template(events_engine, runs_engine, record["run_id"], key), record["month"]))
    copier = Copier(events_engine, runs_engine)
    done = 0
    while done < count:
        n = min(500, count - done)
        batch = [templates[(project.synthesised + i) % len(templates)] for i in range(n)]
        for (template, month), swaps in zip(batch, copier.copy([t for t, _ in batch]), strict=True):
            copy_files(project.root, template, swaps, month)
        done += n
        project.synthesised += n
        project.save()
    events_engine.dispose()
    runs_engine.dispose()
    return time.perf_counter() - started
