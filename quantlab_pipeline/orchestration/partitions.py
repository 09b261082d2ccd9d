"""The month × run partitions every artifact asset shares (README "What a run writes").

Dagster orders dimensions by name, so a key reads `2024-01|<run_id>`. Months run from 2009-01 —
the first month of any crypto price history — through next month, so a run over any real data
has its partitions; a window outside them is refused before anything is created.
"""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition, MonthlyPartitionsDefinition, MultiPartitionsDefinition

from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.spec import RunSpec, validate_month, validate_run_id

RUN_PARTITIONS_NAME = "run"
OWNER = "team:quant-research"  # owner of every asset, shown in the UI's catalog

FIRST_MONTH = "2009-01"

month_partitions = MonthlyPartitionsDefinition(start_date=FIRST_MONTH, fmt="%Y-%m", end_offset=1)
run_partitions = DynamicPartitionsDefinition(name=RUN_PARTITIONS_NAME)
month_run_partitions = MultiPartitionsDefinition({"month": month_partitions, "run": run_partitions})


def partition_keys_of(spec: RunSpec) -> list[tuple[str, str]]:
    """The stored partition keys of a run, as `(partitions definition name, key)`: what deleting
    the run removes from the instance (orchestration/retention.py). The month × run keys are not
    stored (they combine the months with the `run` key), so only the run's dynamic key."""
    return [(RUN_PARTITIONS_NAME, spec.run_id)]


def month_run_key(month: str, run_id: str) -> str:
    return f"{validate_month(month)}|{validate_run_id(run_id)}"


def split_month_run_key(partition_key: str) -> tuple[str, str]:
    """`(month, run_id)` of a `YYYY-MM|<uuid>` key, both validated before they touch a path."""
    month, sep, run_id = str(partition_key).partition("|")
    if not sep:
        raise ValueError(f"partition key {partition_key!r} is not of the form YYYY-MM|<run_id>")
    return validate_month(month), validate_run_id(run_id)


def check_months_exist(months: list[str]) -> None:
    """A one-line `SpecError` unless every month of a window is a month partition."""
    last = month_partitions.get_last_partition_key()
    outside = [m for m in months if not (FIRST_MONTH <= m <= (last or FIRST_MONTH))]
    if outside:
        raise SpecError(
            f"window: month(s) {outside[0]}..{outside[-1]} are outside the month partitions "
            f"{FIRST_MONTH}..{last} (months run from {FIRST_MONTH} through next month)"
        )
