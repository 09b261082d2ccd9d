"""Shared fixtures: a small seeded sample database, isolated run dirs and Dagster homes."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import instance_for_test

from quantlab_pipeline.sources.sample_db import generate_sample_data


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
