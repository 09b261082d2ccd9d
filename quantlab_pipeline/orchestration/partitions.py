"""The partitions every backtest asset shares: one dynamic key per run-month (docs/dagster.md
"Partition keys").

A key names one month of one run, readable in the UI and still carrying the run id:
`2024-01.policy.fixed-stop-5pct.<run_id>` (month, run type, policy id for policy runs, run id).
Only the run-months that exist are keys, so the UI's partition counts are the run-months a lab
has, its search box finds a run-month by month, type or policy, and nothing enumerates a
month × run grid. The month and the run id are read back by position (the first 7 characters,
the last 36) and validated before they touch a path; the middle is a label, checked against the
run's spec where one is written.
"""

from __future__ import annotations

import datetime as dt
import re

from dagster import DynamicPartitionsDefinition

from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.spec import RunSpec, validate_month, validate_run_id

RUN_MONTH_PARTITIONS_NAME = "run_month"
OWNER = "team:quant-research"  # owner of every asset, shown in the UI's catalog

# Months from 2009-01 — the first month of any crypto price history — through next month.
FIRST_MONTH = "2009-01"

run_month_partitions = DynamicPartitionsDefinition(name=RUN_MONTH_PARTITIONS_NAME)

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_KEY_RE = re.compile(r"^\d{4}-\d{2}\.(?:[A-Za-z0-9_-]+\.)+[0-9a-f-]{36}$")


def _label(spec: RunSpec) -> str:
    """The key's middle: the run type, and the policy id of a policy run (only `[A-Za-z0-9_-]`,
    so the key stays a valid Dagster key and splits unambiguously)."""
    parts: list[str] = [spec.run_type]
    if spec.policy_id:
        parts.append(_LABEL_UNSAFE.sub("-", spec.policy_id).strip("-")[:48] or "policy")
    return ".".join(parts)


def month_run_key(spec: RunSpec, month: str) -> str:
    """The partition key of `month` of the run `spec` describes."""
    return f"{validate_month(month)}.{_label(spec)}.{validate_run_id(spec.run_id)}"


def run_month_keys(spec: RunSpec) -> list[str]:
    """The partition keys of every month of the run's window."""
    return [month_run_key(spec, month) for month in spec.months()]


def partition_keys_of(spec: RunSpec) -> list[tuple[str, str]]:
    """The stored partition keys of a run, as `(partitions definition name, key)`: what deleting
    the run removes from the instance (orchestration/retention.py)."""
    return [(RUN_MONTH_PARTITIONS_NAME, key) for key in run_month_keys(spec)]


def split_month_run_key(partition_key: str) -> tuple[str, str]:
    """`(month, run_id)` of a run-month key, both validated before they touch a path."""
    key = str(partition_key)
    if not _KEY_RE.match(key):
        raise ValueError(f"partition key {key!r} is not of the form YYYY-MM.<run type>[.<policy id>].<run_id>")
    return validate_month(key[:7]), validate_run_id(key[-36:])


def last_month() -> str:
    """Next month (UTC): the last month a window may reach."""
    today = dt.datetime.now(dt.UTC).date()
    return (dt.date(today.year + 1, 1, 1) if today.month == 12 else dt.date(today.year, today.month + 1, 1)).strftime(
        "%Y-%m"
    )


def check_months_exist(months: list[str]) -> None:
    """A one-line `SpecError` unless every month of a window is one a run may cover."""
    last = last_month()
    outside = [m for m in months if not (FIRST_MONTH <= m <= last)]
    if outside:
        raise SpecError(
            f"window: month(s) {outside[0]}..{outside[-1]} are outside the months a run may cover, "
            f"{FIRST_MONTH}..{last} ({FIRST_MONTH} through next month)"
        )
