"""Flags shared by several commands.

`--runs-dir` and `--duckdb` do not reach a command as two loose strings: each one's callback sets
its field of one `paths: ProjectPaths` argument (docs/architecture.md "Settings"). A command with
only `--runs-dir` gets the default catalog path, which it does not use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import click

from quantlab_pipeline.storage.layout import DEFAULT_CATALOG, DEFAULT_RUNS_DIR
from quantlab_pipeline.storage.paths import ProjectPaths


def _into_paths(field: str) -> Callable[[click.Context, click.Parameter, str], None]:
    """A callback storing the flag's value as `field` of the command's `paths` argument."""

    def callback(ctx: click.Context, param: click.Parameter, value: str) -> None:
        ctx.params["paths"] = replace(ctx.params.get("paths", ProjectPaths()), **{field: Path(value)})

    return callback


runs_dir_option = click.option(
    "--runs-dir",
    "--base-dir",
    "runs_dir",
    envvar="QUANTLAB_RUNS_DIR",
    default=DEFAULT_RUNS_DIR,
    show_default=f"{DEFAULT_RUNS_DIR} (env QUANTLAB_RUNS_DIR)",
    help="Root of the run directories.",
    expose_value=False,
    callback=_into_paths("runs_dir"),
)
catalog_option = click.option(
    "--duckdb",
    "catalog_path",
    envvar="QUANTLAB_CATALOG",
    default=DEFAULT_CATALOG,
    show_default=f"{DEFAULT_CATALOG} (env QUANTLAB_CATALOG)",
    help="The catalog database.",
    expose_value=False,
    callback=_into_paths("catalog_path"),
)
