"""The run queue's limits in the project's dagster.yaml, as Dagster's queue applies them
(`TagConcurrencyLimitsCounter`, what the daemon's queued run coordinator counts with): month runs
two at a time, and a walk-forward optimization's months one at a time — the queue is first in,
first out, so they start in the order they were queued (docs/research.md "Walk-forward optimization")."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import yaml

from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.orchestration.dagster_adapter import private
from quantlab_pipeline.orchestration.launch import IN_ORDER_TAG, run_tags
from quantlab_pipeline.orchestration.partitions import month_run_key

TagConcurrencyLimitsCounter = private("dagster._utils.tags", "TagConcurrencyLimitsCounter")

PROJECT = Path(__file__).resolve().parent.parent
LIMITS = yaml.safe_load((PROJECT / "dagster.yaml").read_text())["concurrency"]["runs"]["tag_concurrency_limits"]


def _spec(run_id: str, sweep: dict | None) -> RunSpec:
    return RunSpec.from_dict(
        {
            "run_id": run_id,
            "run_type": "optimization",
            "created_at": "2024-04-01T00:00:00.000Z",
            "interval": "5m",
            "window": {"from": "2024-01-01", "to": "2024-03-31"},
            "source": {"alerts": "/data/alerts.duckdb"},
            "sweep": sweep,
        }
    )


def _queued(spec: RunSpec) -> list[SimpleNamespace]:
    """Each month's run as the launchpad's sensor queues it (its tags and its partition)."""
    return [
        SimpleNamespace(tags={**run_tags(spec, m), "dagster/partition": month_run_key(spec, m)}) for m in spec.months()
    ]


WALK = {"walk_forward": {"train_months": 1}}
A, B = "0b7c8a4e-1d2f-4a3b-9c4d-5e6f7a8b9c0d", "1c8d9b5f-2e3a-4b4c-8d5e-6f7a8b9c0d1e"


def test_a_walk_forward_months_wait_for_the_one_in_flight():
    first, second, third = _queued(_spec(A, WALK))
    assert first.tags[IN_ORDER_TAG] == A
    counter = TagConcurrencyLimitsCounter(LIMITS, [first])
    assert counter.is_blocked(second) and counter.is_blocked(third)
    [other_first, *_] = _queued(_spec(B, WALK))
    assert not counter.is_blocked(other_first)  # another run's months are not held back


def test_other_months_run_two_at_a_time():
    first, second, third = _queued(_spec(A, None))
    assert IN_ORDER_TAG not in first.tags
    counter = TagConcurrencyLimitsCounter(LIMITS, [first])
    assert not counter.is_blocked(second)
    counter.update_counters_with_launched_item(second)
    assert counter.is_blocked(third)  # the memory limit: two months in flight
