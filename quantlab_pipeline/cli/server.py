"""`quantlab server status | stop`: the warm server commands are forked from (README "The warm
server")."""

from __future__ import annotations

import os

import click

from quantlab_pipeline.cli.console import console, ok, user_errors


def _directory() -> str:
    from quantlab_pipeline.warm import protocol

    return protocol.socket_dir(os.environ)


@click.command("status")
@user_errors
def server_status() -> None:
    """The warm servers listening for this user: pid and socket; which one this build uses."""
    from quantlab_pipeline.warm import client, protocol

    current = protocol.socket_path(os.environ)
    found = client.servers(_directory())
    if not found:
        console.print(f"no warm server listening in {_directory()}")
    for path, pid in found.items():
        mark = " (this build)" if path == current else ""
        console.print(f"pid {pid}  {path}{mark}")
    if not protocol.enabled(os.environ):
        console.print(f"{protocol.ENABLE_ENV}={os.environ[protocol.ENABLE_ENV]}: commands run in their own process")


@click.command("stop")
@user_errors
def server_stop() -> None:
    """Stop the warm servers; each first finishes the commands it is running. The next command
    starts a new one."""
    from quantlab_pipeline.warm import client

    stopped = client.stop_servers(_directory())
    ok(f"stopped {len(stopped)} warm server(s)" + "".join(f"\n  pid {pid}  {path}" for path, pid in stopped.items()))


COMMANDS = [server_status, server_stop]
