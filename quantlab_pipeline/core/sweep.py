"""Optimization runs (DESIGN §8): a grid of policies over the same entries, and its frontier.

A sweep spec is `None` (the default grid below), a list of policy templates, or
`{"templates": [...], "per_caller": bool, "constraints": {...}, "objective": "..."}` with every
key optional. A template is a policy whose scalar fields (numbers, durations, and the `multiple` /
`fraction` of ladder levels, in combos too) may be lists of alternatives; the grid is their
cartesian product, `null` in a list meaning "this optional field absent". Each grid point is
validated by `parse_policy`; equal policies (same `policy_id`) are kept once, first wins.

Constraints (any may be `null` to disable it): `stop_out_rate <= max_stop_out_rate`,
`p95_mae_bps >= min_p95_mae_bps`, average time exposed `<= max_avg_time_exposed`; a group with no
trades never meets them. `pareto` = not dominated on (median_return_bps higher, p95_mae_bps
higher) within the caller group, rows without trades never on it. `rank` within the group:
feasible first, then the objective descending (nulls last), ties by `policy_id`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from quantlab_pipeline.core.candles import Candles
from quantlab_pipeline.core.durations import parse_duration_ms
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.policy import simulate_policies
from quantlab_pipeline.core.policy_spec import Policy, parse_policy, policy_id_of, policy_json
from quantlab_pipeline.core.spec import Execution
from quantlab_pipeline.core.summary import metric_exprs

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
MAX_POLICIES = 2_000
# Policies simulated per kernel call: bounds the per-trade outcome frame (policies x trades rows).
POLICY_CHUNK = 128

FRONTIER_SCHEMA = pl.Schema(
    {
        "run_id": pl.String,
        "caller_name": pl.String,
        "policy_id": pl.String,
        "policy_params": pl.String,
        "meets_constraints": pl.Boolean,
        "objective_score": pl.Float64,
        "avg_return_bps": pl.Float64,
        "median_return_bps": pl.Float64,
        "stop_out_rate": pl.Float64,
        "p95_mae_bps": pl.Float64,
        "avg_tail_capture": pl.Float64,
        "trades_count": pl.Int64,
        "pareto": pl.Boolean,
        "rank": pl.Int64,
    }
)


@dataclass(frozen=True)
class Constraints:
    max_stop_out_rate: float | None = 0.3
    min_p95_mae_bps: float | None = -3000.0
    max_avg_time_exposed_ms: int | None = 48 * 3_600_000


@dataclass(frozen=True)
class Sweep:
    policies: tuple[Policy, ...]
    per_caller: bool = False
    constraints: Constraints = field(default_factory=Constraints)
    objective: str = "median_return_bps"


# -- parsing -----------------------------------------------------------------------------------


def parse_sweep(value: dict[str, Any] | list[Any] | None, *, root: str = "sweep") -> Sweep:
    """Validate a sweep spec; any problem is one `SpecError` naming the field."""
    if value is None:
        return Sweep(policies=_grid(list(DEFAULT_GRID), f"{root}.templates"))
    if isinstance(value, list):
        return Sweep(policies=_grid(value, root))
    if not isinstance(value, dict):
        raise SpecError(f"{root}: expected a list of policy templates or an object, got {type(value).__name__}")
    allowed = ("templates", "per_caller", "constraints", "objective")
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
    )


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
                raise SpecError(f"{path}: the grid has more than {MAX_POLICIES} policies; narrow the parameter lists")
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
        raise SpecError(f"{path}: expands to {size} policies, more than {MAX_POLICIES}; narrow the parameter lists")
    return list(itertools.product(*choices))


# -- the frontier ------------------------------------------------------------------------------


_STAT_NAMES = (
    "trades_count",
    "avg_return_bps",
    "median_return_bps",
    "stop_out_rate",
    "p95_mae_bps",
    "avg_tail_capture",
    "avg_time_exposed_ms",
)


def run_sweep(
    segments: Iterable[tuple[pl.DataFrame, Candles]],
    sweep: Sweep,
    *,
    run_id: str,
    interval_ms: int,
    horizon_ms: int,
    execution: Execution,
) -> pl.DataFrame:
    """`results/frontier.parquet`: one row per policy (and per policy x caller with `per_caller`).

    `segments` are the partition's `(paths, candles)`: one pair, or several when a large month is
    streamed in parts (re-iterable: it is walked once per `POLICY_CHUNK` policies). Each chunk of
    policies is one parallel kernel call per segment; the per-trade outcomes are then aggregated
    by polars, never per policy in Python. Rows: the all-callers group (`caller_name` null)
    first, then callers by name; within a group by `rank`.
    """
    stats = []
    callers: set[str] = set()
    for lo in range(0, len(sweep.policies), POLICY_CHUNK):
        parts = []
        for paths, candles in segments:
            # a null caller is the default "unknown" (§2)
            caller = paths.get_column("caller_name").cast(pl.String).fill_null("unknown")
            callers.update(caller.unique().to_list())
            outcomes = simulate_policies(
                paths,
                candles,
                sweep.policies[lo : lo + POLICY_CHUNK],
                interval_ms=interval_ms,
                horizon_ms=horizon_ms,
                execution=execution,
            )
            parts.append(
                outcomes.with_columns(
                    pl.col("policy_index") + lo, caller.gather(outcomes.get_column("path_index")).alias("caller_name")
                )
            )
            del candles  # a streamed part is freed before the next one is read
        outcomes = pl.concat(parts)
        stats.append(outcomes.group_by("policy_index").agg(metric_exprs(*_STAT_NAMES)).with_columns(_group=pl.lit(0)))
        if sweep.per_caller:
            stats.append(outcomes.group_by("policy_index", "caller_name").agg(metric_exprs(*_STAT_NAMES)))
    # _group 0 = all callers, k >= 1 = caller_names[k - 1]
    caller_names = sorted(callers)
    codes = pl.DataFrame(
        {"caller_name": caller_names, "_group": range(1, len(caller_names) + 1)},
        schema={"caller_name": pl.String, "_group": pl.Int64},
    )
    stats_frame = pl.concat(
        [
            (s if "_group" in s.columns else s.join(codes, on="caller_name")).select(
                pl.col("policy_index", "_group").cast(pl.Int64), *_STAT_NAMES
            )
            for s in stats
        ]
    )

    groups = pl.DataFrame(
        {
            "_group": [0, *range(1, len(caller_names) + 1)] if sweep.per_caller else [0],
            "caller_name": [None, *caller_names] if sweep.per_caller else [None],
        },
        schema={"_group": pl.Int64, "caller_name": pl.String},
    )
    policies = pl.DataFrame(
        {
            "policy_index": range(len(sweep.policies)),
            "policy_id": [policy_id_of(p) for p in sweep.policies],
            "policy_params": [policy_json(p) for p in sweep.policies],
        },
        schema={"policy_index": pl.Int64, "policy_id": pl.String, "policy_params": pl.String},
    )
    frame = (
        groups.join(policies, how="cross")
        .join(stats_frame, on=["policy_index", "_group"], how="left")
        .with_columns(
            pl.col("trades_count").fill_null(0),
            _feasible(sweep.constraints).fill_null(False).alias("meets_constraints"),
            pl.col(sweep.objective).alias("objective_score"),
        )
    )
    frame = frame.with_columns(pl.Series("pareto", _pareto_by_group(frame)))
    return (
        frame.sort(
            ["_group", "meets_constraints", "objective_score", "policy_id"],
            descending=[False, True, True, False],
            nulls_last=True,
        )
        .with_columns(
            pl.lit(run_id, dtype=pl.String).alias("run_id"),
            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("_group").alias("rank"),
        )
        .select(FRONTIER_SCHEMA.names())
        .cast(dict(FRONTIER_SCHEMA))
    )


def _feasible(constraints: Constraints) -> pl.Expr:
    ok = pl.col("trades_count") > 0
    if constraints.max_stop_out_rate is not None:
        ok = ok & (pl.col("stop_out_rate") <= constraints.max_stop_out_rate)
    if constraints.min_p95_mae_bps is not None:
        ok = ok & (pl.col("p95_mae_bps") >= constraints.min_p95_mae_bps)
    if constraints.max_avg_time_exposed_ms is not None:
        ok = ok & (pl.col("avg_time_exposed_ms") <= constraints.max_avg_time_exposed_ms)
    return ok


def _pareto_by_group(frame: pl.DataFrame) -> np.ndarray:
    """Per row: not dominated within its `_group` on (median_return_bps, p95_mae_bps), both higher
    is better; a row dominates another when it is >= on both and > on one. Rows without trades
    (null metrics) are neither dominated nor on the frontier."""
    median = frame.get_column("median_return_bps").fill_null(np.nan).to_numpy()
    mae = frame.get_column("p95_mae_bps").fill_null(np.nan).to_numpy()
    group = frame.get_column("_group").to_numpy()
    pareto = np.zeros(frame.height, dtype=bool)
    for g in np.unique(group):
        rows = np.flatnonzero((group == g) & ~np.isnan(median) & ~np.isnan(mae))
        m, a = median[rows], mae[rows]
        # dominated[i, j]: row j dominates row i
        dominated = (
            (m[None, :] >= m[:, None])
            & (a[None, :] >= a[:, None])
            & ((m[None, :] > m[:, None]) | (a[None, :] > a[:, None]))
        )
        pareto[rows] = ~dominated.any(axis=1)
    return pareto
