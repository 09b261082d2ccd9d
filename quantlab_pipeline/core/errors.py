"""Error types shared by every layer, and the record of a bad row.

`QuantlabError` is the one-line, user-facing failure (bad file, table, column, flag): the CLI
prints its message and exits 2. Bad *rows* are never exceptions; they become `ErrorRecord`s that
the run directory writes to `errors/errors.parquet` (docs/artifacts.md "What a run writes").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Level = Literal["error", "warning", "info"]
Phase = Literal["inputs", "truth", "policy", "summary", "frontier", "finalize"]
Reason = Literal[
    "null_field",
    "duplicate_call",
    "no_entry",
    "bad_price",
    "bad_candle",
    "duplicate_candle",
    "failure",
    "interrupted",
]


def first_line(error: BaseException | str) -> str:
    """The first line of an error's message: user-facing failures are one line. An exception
    without a message is named by its type, so the line is never empty."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0]
    return type(error).__name__ if isinstance(error, BaseException) else ""


class QuantlabError(Exception):
    """A failure the user can fix: the message is one line naming the file, table, column or flag."""

    exit_code = 2


class EnvironmentFault(QuantlabError):
    """The machine, not the input: an unusable Dagster home, a read-only or full disk (exit 1)."""

    exit_code = 1


class InputError(QuantlabError):
    """A missing or malformed input source (file, table, column, type)."""


class SpecError(QuantlabError):
    """An invalid run spec, policy, sweep or CLI value."""


@dataclass(frozen=True)
class ErrorRecord:
    """One row of `errors/errors.parquet`, before the run directory adds `run_id` and `ts`."""

    level: Level
    phase: Phase
    reason: Reason
    message: str
    call_id: str | None = None
    mint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def warning(
        cls,
        phase: Phase,
        reason: Reason,
        message: str,
        *,
        call_id: str | None = None,
        mint: str | None = None,
        **details: Any,
    ) -> ErrorRecord:
        """A skipped or dropped row: reported, and the run goes on (docs/inputs.md "Inputs")."""
        return cls("warning", phase, reason, message, call_id, mint, details)
