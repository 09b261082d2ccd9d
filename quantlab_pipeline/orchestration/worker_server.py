"""The server `--parallel` run workers are forked from (Python's `forkserver`), kept apart from
`month_worker` so the CLI can start it before importing Dagster itself: the server's imports
(~1.5 s) then overlap the CLI's own checks and run creation instead of following them."""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
from multiprocessing.context import ForkServerContext

WORKER_MODULE = "quantlab_pipeline.orchestration.month_worker"  # imported once, by the server


def context() -> ForkServerContext:
    """The multiprocessing context whose processes are forked from the preloaded server."""
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload([WORKER_MODULE])
    return forkserver


def start_server() -> None:
    """Start the server now (idempotent); its first worker would otherwise start it."""
    context()
    multiprocessing.forkserver.ensure_running()
