"""Run workers for `quantlab backtest … --parallel N`: each month's Dagster run executes in its own
process, forked from the warm server (`quantlab_pipeline.warm`), which has already imported
Dagster and the definitions and loaded the compiled kernels.

A worker does what Dagster's own run worker (`dagster api execute_run`, what the default run
launcher starts) does — the same run-worker body, the same engine events and interrupt handling —
without paying a fresh interpreter's start-up for every month: importing Dagster and the
definitions and loading the compiled kernels cost ~1.5 s of CPU, as much as a quarter of a
month's work.
"""

from __future__ import annotations

from dagster import DagsterInstance
from dagster._cli.api import _execute_run_command_body
from dagster._core.instance.ref import InstanceRef
from dagster._serdes import deserialize_value, serialize_value
from dagster._utils.interrupts import capture_interrupts, setup_interrupt_handlers

from quantlab_pipeline.warm.client import ServerProcess, start_process


def start(run_id: str, instance_ref: InstanceRef) -> ServerProcess:
    """Start a worker executing the (created, not started) Dagster run `run_id`."""
    return start_process("month", run_id=run_id, instance_ref=serialize_value(instance_ref))


def execute(run_id: str, instance_ref: str) -> None:
    """The worker's body. It has its own process group, outside the terminal's: a Ctrl-C reaches
    the CLI alone, which then stops each worker with one SIGTERM (a second signal could interrupt
    the step while it records the first). Its standard streams are /dev/null: the run's events
    and the month's logs/ say what happened."""
    setup_interrupt_handlers()  # SIGTERM acts as SIGINT, as in Dagster's run worker
    with capture_interrupts(), DagsterInstance.from_ref(deserialize_value(instance_ref, InstanceRef)) as instance:
        _execute_run_command_body(run_id, instance, lambda _event: None, set_exit_code_on_failure=False)
