"""The month × run partitions every artifact asset shares (DESIGN §3).

Dagster orders dimensions by name, so a key reads `2024-01|<run_id>`.
"""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition, MonthlyPartitionsDefinition, MultiPartitionsDefinition

from quantlab_pipeline.core.spec import validate_month, validate_run_id

RUN_PARTITIONS_NAME = "run"

month_partitions = MonthlyPartitionsDefinition(start_date="2020-01", fmt="%Y-%m", end_offset=1)
run_partitions = DynamicPartitionsDefinition(name=RUN_PARTITIONS_NAME)
month_run_partitions = MultiPartitionsDefinition({"month": month_partitions, "run": run_partitions})


def month_run_key(month: str, run_id: str) -> str:
    return f"{validate_month(month)}|{validate_run_id(run_id)}"


def split_month_run_key(partition_key: str) -> tuple[str, str]:
    """`(month, run_id)` of a `YYYY-MM|<uuid>` key, both validated before they touch a path."""
    month, sep, run_id = str(partition_key).partition("|")
    if not sep:
        raise ValueError(f"partition key {partition_key!r} is not of the form YYYY-MM|<run_id>")
    return validate_month(month), validate_run_id(run_id)
