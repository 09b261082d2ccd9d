"""The one spec builder: what each run type requires or refuses, the documented defaults, the
numbers it will not take, and where stored paths point."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import pytest

from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.spec import Provenance
from quantlab_pipeline.core.spec_builder import SpecRequest, build_spec
from quantlab_pipeline.orchestration.partitions import check_months_exist

RUN_ID = "0b0e0f3c-8a4e-4b7a-9a51-3c2d1e0f4a5b"
POLICY = {"kind": "fixed_stop", "stop_loss_bps": 500}
BASE = SpecRequest(run_type="path-only", alerts="data/alerts.duckdb", window_from="2024-01-01", window_to="2024-01-31")


def build(request: SpecRequest, base_dir: str = "/work/project"):
    return build_spec(
        request, run_id=RUN_ID, created_at="2024-02-01T00:00:00.000Z", provenance=Provenance(), base_dir=base_dir
    )


def test_documented_defaults_and_absolute_paths():
    spec = build(dataclasses.replace(BASE, candles="candles/*.parquet"))
    assert (spec.interval, spec.horizon, spec.source.alerts_table) == ("5m", "5d", "alerts")
    assert (spec.execution.fee_bps, spec.execution.slippage_bps) == (30.0, 10.0)
    assert spec.source.alerts == "/work/project/data/alerts.duckdb"
    assert spec.source.candles == "/work/project/candles/*.parquet"  # a glob stays a glob
    assert build(dataclasses.replace(BASE, alerts="/abs/a.duckdb")).source.alerts == "/abs/a.duckdb"


@pytest.mark.parametrize("missing", ["alerts", "window_from", "window_to"])
def test_no_silent_defaults_for_what_a_run_is_about(missing):
    with pytest.raises(SpecError, match=rf"^{missing}: required$"):
        build(dataclasses.replace(BASE, **{missing: None}))
    with pytest.raises(SpecError, match=r"^run_type: expected one of path-only, policy, optimization, got ''"):
        build(dataclasses.replace(BASE, run_type=""))


def test_a_policy_run_needs_its_policy_and_stores_it_canonical():
    with pytest.raises(SpecError, match=r"^policy_id: required for a policy run$"):
        build(dataclasses.replace(BASE, run_type="policy", policy=POLICY))
    with pytest.raises(SpecError, match=r"^policy: required for a policy run$"):
        build(dataclasses.replace(BASE, run_type="policy", policy_id="p"))
    spec = build(
        dataclasses.replace(
            BASE, run_type="policy", policy_id="p", policy='{"stop_loss_bps": 500.0, "kind": "fixed_stop"}', fee_bps=0
        )
    )
    assert spec.policy == POLICY and spec.execution.fee_bps == 0.0


@pytest.mark.parametrize(
    "run_type,field,value",
    [
        ("path-only", "policy", POLICY),
        ("path-only", "fee_bps", 5.0),
        ("path-only", "per_caller", True),
        ("policy", "sweep", []),
        ("optimization", "policy_id", "p"),
    ],
)
def test_fields_a_run_type_does_not_use_are_refused(run_type, field, value):
    request = dataclasses.replace(BASE, run_type=run_type, **{field: value})
    if run_type == "policy":
        request = dataclasses.replace(request, policy_id="p", policy=POLICY)
    with pytest.raises(SpecError, match=rf"^{field}: not used by a {run_type} run$"):
        build(request)


def test_per_caller_folds_into_the_sweep():
    opt = dataclasses.replace(BASE, run_type="optimization")
    assert build(dataclasses.replace(opt, per_caller=True)).sweep == {"per_caller": True}
    grid = [{"kind": "fixed_stop", "stop_loss_bps": [500, 1000]}]
    assert build(dataclasses.replace(opt, sweep=grid, per_caller=True)).sweep == {"templates": grid, "per_caller": True}
    assert build(dataclasses.replace(opt, sweep='{"objective": "avg_return_bps"}')).sweep == {
        "objective": "avg_return_bps"
    }


def test_cscv_blocks_and_benchmark_fold_into_the_sweep_canonical():
    opt = dataclasses.replace(BASE, run_type="optimization")
    spec = build(
        dataclasses.replace(opt, cscv_blocks=" 4 ", benchmark='{"stop_loss_bps": 500.0, "kind": "fixed_stop"}')
    )
    assert spec.sweep == {"cscv_blocks": 4, "benchmark": POLICY}
    grid = [{"kind": "fixed_stop", "stop_loss_bps": [500, 1000]}]
    spec = build(dataclasses.replace(opt, sweep={"templates": grid, "cscv_blocks": 2}, cscv_blocks=16))
    assert spec.sweep == {"templates": grid, "cscv_blocks": 16}  # the flag wins, as --per-caller does


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"cscv_blocks": "3.5"}, "cscv_blocks: expected an even integer from 2 to 16, got '3.5'"),
        ({"cscv_blocks": "3"}, "cscv_blocks: expected an even integer from 2 to 16, got 3"),
        ({"cscv_blocks": 1}, "cscv_blocks: expected an even integer from 2 to 16, got 1"),
        ({"benchmark": '{"kind": "fixed_stop"}'}, "benchmark.stop_loss_bps: missing"),
        ({"benchmark": "{"}, "benchmark: invalid JSON"),
        (
            {"cscv_blocks": 8, "window_to": "2024-01-05"},
            "cscv_blocks: 8 blocks need 8 days of a month in the window; the window has at most 5",
        ),
        (
            {"sweep": {"cscv_blocks": 16}, "window_from": "2024-01-20", "window_to": "2024-02-04"},
            "sweep.cscv_blocks: 16 blocks need 16 days of a month in the window; the window has at most 12",
        ),
        ({"run_type": "policy", "policy_id": "p", "policy": POLICY, "cscv_blocks": 4}, "cscv_blocks: not used"),
    ],
)
def test_cscv_blocks_and_benchmark_are_validated_in_one_line(changes, message):
    with pytest.raises(SpecError) as info:
        build(dataclasses.replace(BASE, **{"run_type": "optimization", **changes}))
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)


def test_the_default_blocks_are_never_refused_and_a_long_enough_month_suffices():
    opt = dataclasses.replace(BASE, run_type="optimization", window_to="2024-01-05")
    assert build(opt).sweep is None  # a 5-day window: its month reports no PBO, the run goes on
    two_months = dataclasses.replace(opt, window_from="2024-01-27", window_to="2024-02-29", cscv_blocks=16)
    assert build(two_months).sweep == {"cscv_blocks": 16}  # February has 29 days in the window


@pytest.mark.parametrize("fee", [math.nan, math.inf, -1.0, 10_000.0])
def test_costs_must_be_finite_and_sane(fee):
    request = dataclasses.replace(BASE, run_type="policy", policy_id="p", policy=POLICY, fee_bps=fee)
    with pytest.raises(SpecError, match=r"^run spec: execution\.fee_bps: must be a number in \[0, 10000\) bps"):
        build(request)


def test_durations_are_bounded():
    with pytest.raises(SpecError, match="horizon must be a positive duration of at most 3650d"):
        build(dataclasses.replace(BASE, horizon="99999999999d"))
    policy = {"kind": "time_stop", "max_hold": "4000d"}
    with pytest.raises(SpecError, match=r"policy\.max_hold: must be a positive duration of at most 3650d"):
        build(dataclasses.replace(BASE, run_type="policy", policy_id="p", policy=policy))


def test_windows_outside_the_months_a_run_may_cover_are_refused(monkeypatch):
    from quantlab_pipeline.orchestration import partitions

    monkeypatch.setattr(partitions, "last_month", lambda: "2027-01")  # as on 2026-12-07
    check_months_exist(["2009-01", "2024-01", "2027-01"])  # through next month
    with pytest.raises(
        SpecError,
        match=r"^window: month\(s\) 2008-11\.\.2008-12 are outside the months a run may cover, "
        r"2009-01\.\.2027-01 \(2009-01 through next month\)$",
    ):
        check_months_exist(["2008-11", "2008-12", "2009-01"])
    with pytest.raises(SpecError, match=r"month\(s\) 2027-02\.\.2027-02 are outside"):
        check_months_exist(["2027-01", "2027-02"])


def test_next_month_is_the_last_month_a_window_may_reach():
    from quantlab_pipeline.orchestration.partitions import last_month

    today = dt.datetime.now(dt.UTC).date()
    expected = dt.date(today.year + today.month // 12, today.month % 12 + 1, 1).strftime("%Y-%m")
    assert last_month() == expected
