"""Run workers for `quantlab backtest … --parallel N`: N processes, forked from the warm server
(`quantlab_pipeline.warm`), which has already imported Dagster and the definitions and loaded
the compiled kernels. Each takes the next month nobody has taken, creates its Dagster run and
executes it — the body of `dagster api execute_run` (what Dagster's default run launcher starts):
the same engine events and interrupt handling — then takes the next, until none is left.

One worker runs its months one after another, so a month's memory is released before the next
month's candles are read, and the instance, the job and the warm pages are set up once per
worker rather than once per month (~0.2 s of CPU a month on this machine).

Months are handed out through a claims directory the command creates: a worker claims a month
by linking a file named after it (only one link can win), and rewrites the claim with the
month's Dagster run id once the run exists, so the command can follow the run's events, and fail
it when its worker dies. The command stops the hand-out on Ctrl-C by claiming every month left.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterInstance
from dagster._cli.api import _execute_run_command_body
from dagster._core.instance.ref import InstanceRef
from dagster._serdes import deserialize_value, serialize_value
from dagster._utils.interrupts import capture_interrupts, setup_interrupt_handlers

from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.orchestration.month_runs import create_month_run
from quantlab_pipeline.storage.specs import read_spec
from quantlab_pipeline.warm.client import ServerProcess, start_process

MonthSteps = tuple[str, Sequence[str] | None]  # a month, and its steps (None: all of the job's)


@dataclass(frozen=True)
class Claim:
    pid: int  # the worker that took the month (the command's own pid: nobody runs it)
    dagster_run_id: str | None  # once the worker has created the month's run


def _write_claim(claims: Path, month: str, claim: Claim, *, exclusive: bool) -> bool:
    """Write the month's claim through a temporary file: linked (fails if the month is taken)
    when `exclusive`, else replacing the worker's own claim. Readers never see a partial claim."""
    fd, tmp = tempfile.mkstemp(dir=claims, prefix=".claim-")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": claim.pid, "dagster_run_id": claim.dagster_run_id}, fh)
        if not exclusive:
            os.replace(tmp, claims / month)
            return True
        try:
            os.link(tmp, claims / month)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def claim(claims: Path, month: str) -> bool:
    """Take `month` for this process; False when another process has it."""
    return _write_claim(claims, month, Claim(os.getpid(), None), exclusive=True)


def read_claims(claims: Path) -> dict[str, Claim]:
    """Every month taken so far, with who took it (claims being written are not shown yet)."""
    out = {}
    for path in claims.iterdir():
        if not path.name.startswith("."):
            data = json.loads(path.read_text())
            out[path.name] = Claim(int(data["pid"]), data["dagster_run_id"])
    return out


def start(
    spec: RunSpec, plan: Sequence[MonthSteps], *, runs_dir: str, claims: Path, instance: DagsterInstance
) -> ServerProcess:
    """Start a worker that runs the months of `plan` it claims, one after another, until none is
    unclaimed (forked from the warm server: Dagster and the kernels are loaded)."""
    return start_process(
        "months",
        run_id=spec.run_id,
        runs_dir=str(Path(runs_dir).resolve()),
        plan=[[month, list(steps) if steps else None] for month, steps in plan],
        claims=str(claims),
        instance_ref=serialize_value(instance.get_ref()),
    )


def execute(run_id: str, runs_dir: str, plan: Sequence[MonthSteps], claims: str, instance_ref: str) -> None:
    """The worker's body. It has its own process group, outside the terminal's: a Ctrl-C reaches
    the CLI alone, which then stops each worker with one SIGTERM (a second signal could interrupt
    the step while it records the first); the interrupted step records its month as interrupted.
    Its standard streams are /dev/null: the runs' events and each month's logs/ say what happened."""
    setup_interrupt_handlers()  # SIGTERM acts as SIGINT, as in Dagster's run worker
    spec = read_spec(runs_dir, run_id)
    with capture_interrupts(), DagsterInstance.from_ref(deserialize_value(instance_ref, InstanceRef)) as instance:
        for month, steps in plan:
            if not claim(Path(claims), month):
                continue
            run = create_month_run(spec, month, runs_dir=runs_dir, instance=instance, steps=steps)
            _write_claim(Path(claims), month, Claim(os.getpid(), run.run_id), exclusive=False)
            _execute_run_command_body(run.run_id, instance, lambda _event: None, set_exit_code_on_failure=False)
