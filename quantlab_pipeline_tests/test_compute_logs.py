"""The project's compute log manager (`orchestration/compute_logs.py`): a run's stdout and stderr
land in the captured files either way; they are mirrored back to the process's own streams when
those go somewhere, and not when they are /dev/null (no `tail` or watcher process then)."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from quantlab_pipeline_tests.helpers import child_env

PROJECT = Path(__file__).resolve().parent.parent

CAPTURE = textwrap.dedent(
    """
    import os, signal, subprocess, sys
    from dagster import DagsterInstance
    spawned, ignoring_term = [], []
    popen = subprocess.Popen
    def ignores_term(pid):  # read once the child has exec'd (Popen waits for it)
        with open(f"/proc/{pid}/status") as status:
            mask = next(int(line.split()[1], 16) for line in status if line.startswith("SigIgn:"))
        return bool(mask >> (signal.SIGTERM - 1) & 1)
    class Recording(popen):
        def __init__(self, args, *a, **k):
            super().__init__(args, *a, **k)
            spawned.append(os.path.basename(str(args[0])))
            if ignores_term(self.pid):
                ignoring_term.append(spawned[-1])
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
    assert ignoring_term == [], ignoring_term  # Dagster stops the mirror with SIGTERM
    assert signal.getsignal(signal.SIGTERM) == (signal.SIG_IGN if os.environ.get("IGNORE_TERM") else signal.SIG_DFL)
    """
)


def _ignore_term() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _capture(tmp_path: Path, stream, *, ignore_term: bool = False) -> tuple[tuple, str]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT / "dagster.yaml").read_text())
    report = tmp_path / "report.txt"
    proc = subprocess.run(
        [sys.executable, "-c", CAPTURE, str(report)],
        cwd=tmp_path,
        env=child_env(DAGSTER_HOME=str(home), IGNORE_TERM="1" if ignore_term else ""),
        stdout=stream,
        stderr=stream,
        timeout=120,
        preexec_fn=_ignore_term if ignore_term else None,
    )
    assert proc.returncode == 0, proc.stderr
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


def test_the_mirror_stops_where_the_process_ignores_sigterm(tmp_path):
    """A launcher that starts `quantlab` with SIGTERM ignored: the mirror's processes would
    inherit it, and Dagster would wait 30 s for each when it stops them at the step's end."""
    (_, stdout, _, spawned), shown = _capture(tmp_path, subprocess.PIPE, ignore_term=True)
    assert stdout == b"to stdout\n"
    assert "tail" in spawned
    assert "to stdout" in shown
