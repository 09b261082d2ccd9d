"""Run workers for `quantlab backtest … --parallel N`: each month's Dagster run executes in its own
process, forked from a server that has already imported Dagster, the definitions and the kernels.

A worker does what Dagster's own run worker (`dagster api execute_run`, what the default run
launcher starts) does — the same run-worker body, the same engine events and interrupt handling —
without paying a fresh interpreter's start-up for every month: importing Dagster and the
definitions and loading the compiled kernels cost ~1.5 s of CPU, as much as a quarter of a
month's work. The server (Python's `forkserver`) is a clean single-threaded process started once
per command, so forking from it is safe, unlike forking the CLI itself.
"""

from __future__ import annotations

import gc
import os
from multiprocessing.context import ForkServerProcess

from dagster import DagsterInstance
from dagster._cli.api import _execute_run_command_body
from dagster._core.instance.ref import InstanceRef
from dagster._utils.interrupts import capture_interrupts, setup_interrupt_handlers

import quantlab_pipeline.definitions  # noqa: F401  # imported once in the server, shared by every worker
from quantlab_pipeline.core.nb import load_backtest_kernels
from quantlab_pipeline.orchestration.worker_server import context

# The server imports this module: everything above, and the kernels below, are in every worker.
load_backtest_kernels()
gc.freeze()  # the imports' objects are never collected: leave them out of every collection


def start(run_id: str, instance_ref: InstanceRef) -> ForkServerProcess:
    """Start a worker executing the (created, not started) Dagster run `run_id`."""
    process = context().Process(target=_execute, args=(run_id, instance_ref), name=f"dagster-run-{run_id[:8]}")
    process.start()
    return process


def _execute(run_id: str, instance_ref: InstanceRef) -> None:
    # Its own session: a Ctrl-C at the terminal reaches the CLI alone, which then stops each worker
    # with one SIGTERM (a second signal could interrupt the step while it records the first).
    os.setsid()
    # The run's events and the month's logs/ say what happened; nothing for the CLI's terminal.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    setup_interrupt_handlers()  # SIGTERM acts as SIGINT, as in Dagster's run worker
    with capture_interrupts(), DagsterInstance.from_ref(instance_ref) as instance:
        _execute_run_command_body(run_id, instance, lambda _event: None, set_exit_code_on_failure=False)
