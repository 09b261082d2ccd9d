"""Shared fixtures: a small seeded sample database, isolated run dirs and Dagster homes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import instance_for_test

from quantlab_pipeline.sources.sample_db import generate_sample_data
from quantlab_pipeline.warm.client import stop_servers

# The session's warm server directory (short: a Unix socket's path holds 107 bytes), never the
# user's; every `quantlab` child of the session shares the servers started there.
os.environ["QUANTLAB_WARM_DIR"] = tempfile.mkdtemp(prefix="qlw-", dir="/tmp")
os.environ["QUANTLAB_WARM_IDLE_S"] = "300"


@pytest.fixture(scope="session", autouse=True)
def _stop_warm_servers():
    """Stop the session's warm servers when the tests end."""
    yield
    stop_servers(os.environ["QUANTLAB_WARM_DIR"])


@pytest.fixture(scope="session", autouse=True)
def candle_cache_dir(tmp_path_factory) -> Iterator[Path]:
    """The candle cache (docs/inputs.md "Inputs") of the tests and their subprocesses: never the user's.
    XDG_CACHE_HOME too, for the subprocesses started without the QUANTLAB_ variables."""
    with pytest.MonkeyPatch.context() as mp:
        xdg = tmp_path_factory.mktemp("xdg-cache")
        mp.setenv("XDG_CACHE_HOME", str(xdg))
        mp.setenv("QUANTLAB_CACHE_DIR", str(xdg / "quantlab"))
        yield xdg / "quantlab"


@pytest.fixture(scope="session")
def sample_db(tmp_path_factory) -> Path:
    """Two months of seeded sample data (small: the pipeline, not the generator, is under test)."""
    out = tmp_path_factory.mktemp("sample") / "alerts.duckdb"
    generate_sample_data(out, months=["2024-01", "2024-02"], alerts_per_month=60, seed=11)
    return out


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def dagster_instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with instance_for_test(temp_dir=str(home)) as instance:
        yield instance


PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"


@pytest.fixture
def workdir(tmp_path, sample_db):
    """A project folder as a user has it: data, and a Dagster home with the project's config
    (instance state under `.dagster/` of this folder)."""
    (tmp_path / "data").mkdir()
    shutil.copy(sample_db, tmp_path / "data" / "alerts.duckdb")
    (tmp_path / ".dagster_home").mkdir()
    shutil.copy(PROJECT_DAGSTER_YAML, tmp_path / ".dagster_home" / "dagster.yaml")
    return tmp_path
