"""JSON text as users type it (policies, sweeps): parsed, or one `SpecError` line with the place."""

from __future__ import annotations

import json
from typing import Any

from quantlab_pipeline.core.errors import SpecError


def loads(text: str, *, field: str, source: str = "JSON") -> Any:
    """`json.loads(text)`; a syntax error names `field`, `source` (e.g. the file) and the position;
    so does nesting deeper than the parser can follow (docs/faults.md)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise SpecError(f"{field}: invalid {source}: nested too deep") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"{field}: invalid {source} at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
