"""Fault injection for the fault suite (docs/lifecycle.md "When a run is interrupted"): a process sends
itself a signal at a named point, so a test can kill a real `quantlab` or `dagster` process at
the exact write it wants to cut short.

`QUANTLAB_FAULT=SIGNAL:POINT[#N]` — e.g. `KILL:paths.parquet` (SIGKILL just before
`truth/paths.parquet` is renamed into place), `TERM:run.json#3` (SIGTERM at the third run.json
write), `KILL:catalog.sync` (inside a catalog sync, with its lock held), `STOP:step.paths` (a
backtest stopped before its paths step, holding no lock), `STOP:archive.locked` (an archive
stopped holding its month's lock, before it looks for live runs), `KILL:journal` (at a journal
append, its lock held). Unset, `fault_point` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "QUANTLAB_FAULT"
_seen: dict[str, int] = {}


def fault_point(point: str) -> None:
    """Send this process the configured signal if `QUANTLAB_FAULT` names `point` (and this is
    its N-th passage)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, target = spec.partition(":")
    target, _, nth = target.partition("#")
    if target != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
