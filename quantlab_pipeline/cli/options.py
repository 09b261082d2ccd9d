"""Flags shared by several commands."""

from __future__ import annotations

import click

from quantlab_pipeline.storage.layout import DEFAULT_CATALOG, DEFAULT_RUNS_DIR

runs_dir_option = click.option(
    "--runs-dir",
    "--base-dir",
    "runs_dir",
    envvar="QUANTLAB_RUNS_DIR",
    default=DEFAULT_RUNS_DIR,
    show_default=f"{DEFAULT_RUNS_DIR} (env QUANTLAB_RUNS_DIR)",
    help="Root of the run directories.",
)
catalog_option = click.option(
    "--duckdb",
    "catalog_path",
    envvar="QUANTLAB_CATALOG",
    default=DEFAULT_CATALOG,
    show_default=f"{DEFAULT_CATALOG} (env QUANTLAB_CATALOG)",
    help="The catalog database.",
)
