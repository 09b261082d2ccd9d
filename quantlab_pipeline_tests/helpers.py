"""Helpers for tests that run the console scripts as real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run_cli(
    args: list[str], cwd: Path, env_extra: dict[str, str] | None = None, exe: str = "quantlab", timeout: int = 300
):
    """Run a console script of this environment as a real subprocess (never the user's DAGSTER_HOME)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "QUANTLAB_"))}
    env.update({"DAGSTER_HOME": str(cwd / ".dagster_home"), "NO_COLOR": "1", "COLUMNS": "200"})
    env.update(env_extra or {})
    (cwd / ".dagster_home").mkdir(exist_ok=True)
    return subprocess.run([str(BIN / exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
