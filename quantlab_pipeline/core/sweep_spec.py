"""Optimization run specs (README "A first backtest", Optimization): a grid of policy templates,
the constraints a policy must meet, and the objective it is ranked by.

A sweep spec is `None` (the default grid below), a list of policy templates, or
`{"templates": [...], "per_caller": bool, "constraints": {...}, "objective": "...",
"walk_forward": {"train_months": K}, "cscv_blocks": S, "benchmark": {...}}` with every key optional
(docs/research.md "Walk-forward optimization"; docs/confidence.md for the last two: the blocks PBO cuts a
month's days into, and the policy SPA tests the grid against, by default holding to the horizon).
A template is a policy whose scalar fields (numbers, durations, and the `multiple` /
`fraction` of ladder levels, in combos too) may be lists of alternatives; the grid is their
cartesian product, `null` in a list meaning "this optional field absent". Each grid point is
validated by `parse_policy`; equal policies (same `policy_id`) are kept once, first wins.

Constraints (any may be `null` to disable it): `stop_out_rate <= max_stop_out_rate`,
`p95_mae_bps >= min_p95_mae_bps`, average time exposed `<= max_avg_time_exposed`. The frontier
they select is computed by `core.frontier`; this module is the specification only, so the run
spec can validate a sweep without importing the simulation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantlab_pipeline.core import display
from quantlab_pipeline.core.durations import UNIT_MS, parse_duration_ms
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.policy_spec import Policy, TimeStop, parse_policy, policy_id_of

# The default grid: 96 policies over the five kinds. Levels in bps of p0, ladder multiples of p0.
_LADDER_STOPS = [2000, 3000, 5000, None]
DEFAULT_GRID: tuple[dict[str, Any], ...] = (
    # 4 stops x 4 targets (None = no target) = 16
    {"kind": "fixed_stop", "stop_loss_bps": [1000, 2000, 3000, 5000], "take_profit_bps": [5000, 10000, 20000, None]},
    # 4 activations x 4 trails x 2 hard stops = 32
    {
        "kind": "trailing_stop",
        "activation_bps": [0, 2000, 5000, 10000],
        "trail_bps": [1000, 2000, 3000, 5000],
        "hard_stop_bps": [5000, None],
    },
    # 5 holds x 2 targets x 2 stops = 20
    {
        "kind": "time_stop",
        "max_hold": ["1h", "4h", "12h", "24h", "48h"],
        "take_profit_bps": [10000, None],
        "stop_loss_bps": [3000, None],
    },
    # 4 ladders x 4 stops = 16
    {
        "kind": "ladder",
        "levels": [{"multiple": 2, "fraction": 0.5}, {"multiple": 4, "fraction": 0.5}],
        "stop_loss_bps": _LADDER_STOPS,
    },
    {"kind": "ladder", "levels": [{"multiple": 2, "fraction": 0.5}], "stop_loss_bps": _LADDER_STOPS},
    {
        "kind": "ladder",
        "levels": [
            {"multiple": 1.5, "fraction": 0.25},
            {"multiple": 3, "fraction": 0.25},
            {"multiple": 5, "fraction": 0.5},
        ],
        "stop_loss_bps": _LADDER_STOPS,
    },
    {
        "kind": "ladder",
        "levels": [{"multiple": m, "fraction": 0.25} for m in (2, 3, 5, 10)],
        "stop_loss_bps": _LADDER_STOPS,
    },
    # trailing stop capped in time: 2 activations x 2 trails x 2 holds = 8
    {
        "kind": "combo",
        "policies": [
            {"kind": "trailing_stop", "activation_bps": [2000, 5000], "trail_bps": [2000, 3000], "hard_stop_bps": 5000},
            {"kind": "time_stop", "max_hold": ["24h", "48h"]},
        ],
    },
    # ladder capped in time: 4
    {
        "kind": "combo",
        "policies": [
            {
                "kind": "ladder",
                "levels": [{"multiple": 2, "fraction": 0.5}, {"multiple": 4, "fraction": 0.5}],
                "stop_loss_bps": [3000, 5000],
            },
            {"kind": "time_stop", "max_hold": ["12h", "48h"]},
        ],
    },
)
OBJECTIVES: tuple[str, ...] = ("median_return_bps", "avg_return_bps", "p95_mae_bps", "avg_tail_capture")
# A guard against a mistyped list, checked before a grid is built: what limits a sweep is the
# memory it needs over its entries (`core.frontier.check_sweep_memory`, docs/performance.md).
MAX_POLICIES = 1_000_000
MAX_TRAIN_MONTHS = 24
DEFAULT_CSCV_BLOCKS = 8
MAX_CSCV_BLOCKS = 16  # C(16, 8) = 12,870 splits; C(18, 9) would be 48,620


@dataclass(frozen=True)
class Constraints:
    """What a policy must meet to be feasible; `None` turns a constraint off."""

    max_stop_out_rate: float | None = 0.3
    min_p95_mae_bps: float | None = -3000.0
    max_avg_time_exposed_ms: int | None = 48 * 3_600_000

    def describe(self) -> str:
        """The constraints as a reader states them: `stop-out ≤ 30.0%, p95 MAE ≥ -3,000 bps, avg exposure ≤ 48.0 h`."""
        exposure = None if self.max_avg_time_exposed_ms is None else self.max_avg_time_exposed_ms / UNIT_MS["h"]
        parts = [
            f"stop-out ≤ {display.pct(self.max_stop_out_rate)}" if self.max_stop_out_rate is not None else "",
            f"p95 MAE ≥ {display.bps_text(self.min_p95_mae_bps)}" if self.min_p95_mae_bps is not None else "",
            f"avg exposure ≤ {display.hours(exposure)}" if exposure is not None else "",
        ]
        return ", ".join(p for p in parts if p) or "no constraints"


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the grid's distinct policies, in template order, and how to rank them."""

    policies: tuple[Policy, ...]
    per_caller: bool = False
    constraints: Constraints = field(default_factory=Constraints)
    objective: str = "median_return_bps"
    train_months: int | None = None  # walk-forward: months selected on before each tested month
    cscv_blocks: int = DEFAULT_CSCV_BLOCKS  # PBO: blocks a month's days are cut into
    benchmark: Policy | None = None  # SPA's benchmark; None: `hold_to_horizon`


def hold_to_horizon(horizon_ms: int) -> Policy:
    """The default benchmark, `{"kind":"time_stop","max_hold":"<horizon>"}`: its time stop is never
    inside the window (which ends at alert + horizon), so every trade exits at the window's last close."""
    return TimeStop(max_hold_ms=horizon_ms)


def benchmark_policy(sweep: Sweep, horizon_ms: int) -> Policy:
    """The policy the sweep's policies are tested against (SPA)."""
    return sweep.benchmark if sweep.benchmark is not None else hold_to_horizon(horizon_ms)


def parse_cscv_blocks(value: Any, path: str) -> int:
    """S: an even integer from 2 to `MAX_CSCV_BLOCKS` (whether a month has S days is the run
    spec's check; a month with fewer days than S reports no PBO)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value > MAX_CSCV_BLOCKS or value % 2:
        raise SpecError(f"{path}: expected an even integer from 2 to {MAX_CSCV_BLOCKS}, got {value!r}")
    return value


def parse_sweep(value: dict[str, Any] | list[Any] | None, *, root: str = "sweep") -> Sweep:
    """Validate a sweep spec; any problem is one `SpecError` naming the field."""
    if value is None:
        return Sweep(policies=_grid(list(DEFAULT_GRID), f"{root}.templates"))
    if isinstance(value, list):
        return Sweep(policies=_grid(value, root))
    if not isinstance(value, dict):
        raise SpecError(f"{root}: expected a list of policy templates or an object, got {type(value).__name__}")
    allowed = ("templates", "per_caller", "constraints", "objective", "walk_forward", "cscv_blocks", "benchmark")
    for key in value:
        if key not in allowed:
            raise SpecError(f"{root}.{key}: unknown key (allowed: {', '.join(allowed)})")
    templates = value.get("templates")
    if templates is None:
        templates = list(DEFAULT_GRID)
    elif not isinstance(templates, list) or not templates:
        raise SpecError(f"{root}.templates: expected a non-empty list of policy templates")
    per_caller = value.get("per_caller", False)
    if not isinstance(per_caller, bool):
        raise SpecError(f"{root}.per_caller: expected true or false, got {per_caller!r}")
    objective = value.get("objective", "median_return_bps")
    if objective not in OBJECTIVES:
        raise SpecError(f"{root}.objective: unknown objective {objective!r} (expected one of {', '.join(OBJECTIVES)})")
    return Sweep(
        policies=_grid(templates, f"{root}.templates"),
        per_caller=per_caller,
        constraints=_parse_constraints(value.get("constraints") or {}, f"{root}.constraints"),
        objective=objective,
        train_months=_parse_walk_forward(value.get("walk_forward"), f"{root}.walk_forward"),
        cscv_blocks=parse_cscv_blocks(value.get("cscv_blocks", DEFAULT_CSCV_BLOCKS), f"{root}.cscv_blocks"),
        benchmark=_parse_benchmark(value.get("benchmark"), f"{root}.benchmark"),
    )


def _parse_benchmark(raw: Any, path: str) -> Policy | None:
    return None if raw is None else parse_policy(raw, root=path)


def _parse_walk_forward(raw: Any, path: str) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"train_months"}:
        raise SpecError(f'{path}: expected {{"train_months": K}}, got {raw!r}')
    months = raw.get("train_months", 1)
    if isinstance(months, bool) or not isinstance(months, int) or not 1 <= months <= MAX_TRAIN_MONTHS:
        raise SpecError(f"{path}.train_months: expected an integer from 1 to {MAX_TRAIN_MONTHS}, got {months!r}")
    return months


def _parse_constraints(raw: Any, path: str) -> Constraints:
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected an object, got {type(raw).__name__}")
    allowed = ("max_stop_out_rate", "min_p95_mae_bps", "max_avg_time_exposed")
    for key in raw:
        if key not in allowed:
            raise SpecError(f"{path}.{key}: unknown constraint (allowed: {', '.join(allowed)})")
    default = Constraints()
    rate, mae, exposed = default.max_stop_out_rate, default.min_p95_mae_bps, default.max_avg_time_exposed_ms
    if "max_stop_out_rate" in raw:
        rate = _optional_number(raw["max_stop_out_rate"], f"{path}.max_stop_out_rate")
        if rate is not None and not 0 <= rate <= 1:
            raise SpecError(f"{path}.max_stop_out_rate: must be between 0 and 1, got {rate:g}")
    if "min_p95_mae_bps" in raw:
        mae = _optional_number(raw["min_p95_mae_bps"], f"{path}.min_p95_mae_bps")
        if mae is not None and mae > 0:
            raise SpecError(
                f"{path}.min_p95_mae_bps: must be <= 0 (an adverse excursion is never positive), got {mae:g}"
            )
    if "max_avg_time_exposed" in raw:
        given = raw["max_avg_time_exposed"]
        exposed = None if given is None else parse_duration_ms(given, field=f"{path}.max_avg_time_exposed")
    return Constraints(rate, mae, exposed)


def _optional_number(value: Any, path: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise SpecError(f"{path}: expected a number or null, got {value!r}")
    return float(value)


def _grid(templates: list[Any], path: str) -> tuple[Policy, ...]:
    policies: dict[str, Policy] = {}
    for i, template in enumerate(templates):
        where = f"{path}[{i}]"
        for point in _expand(template, where):
            policy = parse_policy(point, root=where)
            policies.setdefault(policy_id_of(policy), policy)
            if len(policies) > MAX_POLICIES:
                raise SpecError(f"{path}: the grid has more than {MAX_POLICIES:,} policies; narrow the parameter lists")
    return tuple(policies.values())


def _expand(node: Any, path: str) -> list[Any]:
    """Every concrete policy dict a template stands for (non-dicts pass through for parse_policy)."""
    if not isinstance(node, dict):
        return [node]
    choices: list[list[Any]] = []
    for key, value in node.items():
        if key == "policies" and isinstance(value, list):
            subs = [_expand(sub, f"{path}.policies[{j}]") for j, sub in enumerate(value)]
            choices.append([list(combo) for combo in _product(subs, f"{path}.policies")])
        elif key == "levels" and isinstance(value, list):
            levels = [_expand_scalars(lv, f"{path}.levels[{j}]") for j, lv in enumerate(value)]
            choices.append([list(combo) for combo in _product(levels, f"{path}.levels")])
        elif key != "kind" and isinstance(value, list):
            if not value:
                raise SpecError(f"{path}.{key}: empty list of values")
            choices.append(value)
        else:
            choices.append([value])
    return [dict(zip(node, combo)) for combo in _product(choices, path)]


def _expand_scalars(node: Any, path: str) -> list[Any]:
    """A ladder level whose `multiple` / `fraction` may be lists."""
    if not isinstance(node, dict):
        return [node]
    choices = []
    for key, value in node.items():
        if isinstance(value, list) and not value:
            raise SpecError(f"{path}.{key}: empty list of values")
        choices.append(value if isinstance(value, list) else [value])
    return [dict(zip(node, combo)) for combo in _product(choices, path)]


def _product(choices: list[list[Any]], path: str) -> list[tuple[Any, ...]]:
    size = int(np.prod([len(c) for c in choices], dtype=np.float64))
    if size > MAX_POLICIES:
        raise SpecError(f"{path}: expands to {size:,} policies, more than {MAX_POLICIES:,}; narrow the parameter lists")
    return list(itertools.product(*choices))
