"""The project's compute log manager (`orchestration/compute_logs.py`): a run's stdout and stderr
land in the captured files either way; they are mirrored back to the process's own streams when
those go somewhere, and not when they are /dev/null (no `tail` or watcher process then)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from quantlab_pipeline_tests.helpers import child_env

PROJECT = Path(__file__).resolve().parent.parent

CAPTURE = textwrap.dedent(
    """
    import os, subprocess, sys
    from dagster import DagsterInstance
    spawned = []
    popen = subprocess.Popen
    class Recording(popen):
        def __init__(self, args, *a, **k):
            spawned.append(os.path.basename(str(args[0])))
            super().__init__(args, *a, **k)
    subprocess.Popen = Recording
    with DagsterInstance.get() as instance:
        manager = instance.compute_log_manager
        with manager.capture_logs(["run", "compute_logs", "step"]):
            os.write(1, b"to stdout\\n")
            os.write(2, b"to stderr\\n")
        out = manager.get_log_data(["run", "compute_logs", "step"])
        assert manager.is_capture_complete(["run", "compute_logs", "step"])
        with open(sys.argv[1], "w") as report:
            report.write(repr((type(manager).__name__, out.stdout, out.stderr, sorted(spawned))))
    """
)


def _capture(tmp_path: Path, stream) -> tuple[tuple, str]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT / "dagster.yaml").read_text())
    report = tmp_path / "report.txt"
    proc = subprocess.run(
        [sys.executable, "-c", CAPTURE, str(report)],
        cwd=tmp_path,
        env=child_env(DAGSTER_HOME=str(home)),
        stdout=stream,
        stderr=stream,
        timeout=120,
    )
    assert proc.returncode == 0
    return ast.literal_eval(report.read_text()), (proc.stdout or b"").decode()


def test_streams_going_nowhere_are_captured_without_a_mirror(tmp_path):
    (manager, stdout, stderr, spawned), _ = _capture(tmp_path, subprocess.DEVNULL)
    assert manager == "DevNullAwareComputeLogManager"
    assert (stdout, stderr) == (b"to stdout\n", b"to stderr\n")
    assert spawned == []


def test_streams_going_somewhere_are_captured_and_mirrored(tmp_path):
    (_, stdout, stderr, spawned), shown = _capture(tmp_path, subprocess.PIPE)
    assert (stdout, stderr) == (b"to stdout\n", b"to stderr\n")
    assert "tail" in spawned  # Dagster's mirror
    assert "to stdout" in shown
