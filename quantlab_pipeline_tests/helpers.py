"""Helpers for tests that run the console scripts as real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
# Set by conftest for the whole session, so every child shares the session's warm server (and
# never the user's): kept when a test otherwise clears the project's variables.
SESSION_ENV = ("QUANTLAB_WARM_DIR", "QUANTLAB_WARM_IDLE_S")


def child_env(strip: tuple[str, ...] = ("DAGSTER_", "QUANTLAB_"), **extra: str) -> dict[str, str]:
    """This process's environment without the variables starting with `strip` (the user's Dagster
    home, runs directory, …), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(strip) or k in SESSION_ENV}
    env.update(extra)
    return env


def run_cli(
    args: list[str], cwd: Path, env_extra: dict[str, str] | None = None, exe: str = "quantlab", timeout: int = 300
):
    """Run a console script of this environment as a real subprocess (never the user's DAGSTER_HOME)."""
    env = child_env(DAGSTER_HOME=str(cwd / ".dagster_home"), NO_COLOR="1", COLUMNS="200")
    env.update(env_extra or {})
    (cwd / ".dagster_home").mkdir(exist_ok=True)
    return subprocess.run([str(BIN / exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
