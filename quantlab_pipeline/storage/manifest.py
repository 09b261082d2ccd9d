"""Reading the small JSON files of a run directory (`run.json`, `_SUCCESS`).

One reader for the run directory and the catalog: it returns the exact bytes with the parsed
object, because `_SUCCESS` records the sha256 of run.json and the check must be of the very bytes
that were parsed (docs/artifacts.md "What a run writes").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantlab_pipeline.core.errors import QuantlabError


class InvalidJSONFile(QuantlabError):
    """A file that exists but is not a JSON object; `reason` is one line without the file name."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path.name}: {reason}")
        self.path = path
        self.reason = reason


def read_json_object(path: str | Path) -> tuple[bytes, dict[str, Any]]:
    """`(bytes, object)` of a JSON-object file.

    `FileNotFoundError` and other `OSError`s propagate unchanged: a missing file means different
    things to different callers (a directory being created, a missing manifest).
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        obj = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidJSONFile(path, f"invalid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise InvalidJSONFile(path, "expected a JSON object")
    return data, obj
