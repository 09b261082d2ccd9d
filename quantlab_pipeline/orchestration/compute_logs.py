"""The project's compute log manager (`dagster.yaml` → `compute_logs`): Dagster's
`LocalComputeLogManager`, without mirroring into /dev/null.

Dagster captures a run's stdout and stderr into files (the UI's stdout/stderr view) and mirrors
each back to the process's own stream with a `tail -F` and a Python watcher process per stream:
four processes per run, ~50 ms of CPU. A `--parallel` run worker's streams are /dev/null, so the
mirror shows nothing to anyone; there the streams are only redirected into the same files. A run
whose streams go somewhere (a terminal, a pod's log) is captured and mirrored as Dagster does,
except that the mirror's processes start with SIGINT blocked (a Ctrl-C sent to the process group
stops the step, not the mirror's watchers with a `KeyboardInterrupt` traceback each) and SIGTERM at
its default even where this process ignores it (Dagster stops the mirror with SIGTERM).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TextIO

from quantlab_pipeline.orchestration.dagster_adapter import (
    IO_TYPE_EXTENSION,
    CapturedLogContext,
    ComputeIOType,
    LocalComputeLogManager,
    mirror_spawn_signals,
    redirect_to_file,
)


def _is_devnull(stream: TextIO) -> bool:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by something without a descriptor
        return False
    st, null = os.fstat(fd), os.stat(os.devnull)
    return (st.st_dev, st.st_ino, st.st_rdev) == (null.st_dev, null.st_ino, null.st_rdev)


class DevNullAwareComputeLogManager(LocalComputeLogManager):
    """`LocalComputeLogManager` whose capture skips the mirror when stdout and stderr are /dev/null."""

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> DevNullAwareComputeLogManager:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Iterator[CapturedLogContext]:
        if not (_is_devnull(sys.stdout) and _is_devnull(sys.stderr)):
            with ExitStack() as stack:
                with mirror_spawn_signals():  # a Ctrl-C meanwhile is raised on leaving, in the step
                    context = stack.enter_context(super().capture_logs(log_key))
                yield context
            return
        outpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        errpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        for path in (outpath, errpath):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).touch()
        with redirect_to_file(sys.stdout, outpath), redirect_to_file(sys.stderr, errpath):
            yield CapturedLogContext(log_key)
        complete = Path(self.complete_artifact_path(log_key))  # as Dagster's: the capture is complete
        complete.parent.mkdir(parents=True, exist_ok=True)
        complete.touch()
