"""Shared rich consoles and the one-line error convention of every command."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NoReturn

from rich.console import Console
from rich.markup import escape

from quantlab_pipeline.core.errors import QuantlabError

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def reattach() -> None:
    """Detect the terminal again (colours, `NO_COLOR`, `FORCE_COLOR`): in a command the warm server
    forked, the consoles were made in the server, whose streams were not the user's."""
    console.__init__(highlight=False, soft_wrap=True)  # type: ignore[misc]
    err_console.__init__(stderr=True, highlight=False, soft_wrap=True)  # type: ignore[misc]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error and exit `code` (2: bad input or flag; 1: an environment fault)."""
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}")
    raise SystemExit(code)


def user_errors(fn: Callable) -> Callable:
    """Turn `QuantlabError`s raised by a command into a one-line error and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QuantlabError as exc:
            fail(str(exc), exc.exit_code)

    return wrapper


def ok(message: str) -> None:
    console.print(f"[green]✓[/green] {escape(message)}")


def note(message: str) -> None:
    """A one-line notice on stderr (what the command did beyond what was asked)."""
    err_console.print(f"note: {escape(message)}")
