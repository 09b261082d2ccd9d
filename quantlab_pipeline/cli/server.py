"""`quantlab server status | stop`: the warm server commands are forked from (docs/running.md "The warm
server")."""

from __future__ import annotations

import os

import click

from quantlab_pipeline.cli.console import console, fail, ok, user_errors


def _directory() -> str:
    """This user's server directory; one line and exit 1 if it is not private (docs/faults.md)."""
    from quantlab_pipeline.warm import protocol

    try:
        return protocol.socket_dir(os.environ)
    except (OSError, ValueError) as exc:
        fail(f"warm server directory {exc}", 1)


@click.command("status")
@user_errors
def server_status() -> None:
    """The warm servers listening for this user: pid and socket; which one this build uses."""
    from quantlab_pipeline.warm import client, protocol

    directory = _directory()
    try:
        current = protocol.socket_path(os.environ)
    except ValueError:  # too long a path: no server for this build
        current = None
    found = client.probe_servers(directory)
    if not found:
        console.print(f"no warm server listening in {directory}")
    for path, (pid, answering) in found.items():
        mark = " (this build)" if path == current else ""
        if not answering:
            mark += " — not answering (stopped or stuck): `quantlab server stop` ends it"
        console.print(f"pid {pid if pid is not None else '?'}  {path}{mark}")
    if not protocol.enabled(os.environ):
        console.print(f"{protocol.ENABLE_ENV}={os.environ[protocol.ENABLE_ENV]}: commands run in their own process")


@click.command("stop")
@user_errors
def server_stop() -> None:
    """Stop the warm servers; each first finishes the commands it is running (one that does not
    answer is killed if it has not stopped 5 s after being asked). The next command starts a new one."""
    from quantlab_pipeline.warm import client

    stopped = client.stop_servers(_directory())
    ok(
        f"stopped {len(stopped)} warm server(s)"
        + "".join(f"\n  pid {pid if pid is not None else '?'}  {path}" for path, pid in stopped.items())
    )


COMMANDS = [server_status, server_stop]
