"""Policy specs (docs/inputs.md "Policies"): parse and validate the user's JSON, normalise it, give it a stable id.

A policy is a tree of frozen dataclasses. The four leaf kinds are exit rules; a `Combo` holds
sub-policies that each run from the same entry, the earliest exit winning. `leaves()` flattens a
combo depth-first, which is the order "first listed" refers to. Every validation failure is one
`SpecError` line naming the field path (`policy.policies[1].trail_bps: …`).

Optional fields may be omitted or given as `null` (the same thing: absent).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from quantlab_pipeline.core import json_text
from quantlab_pipeline.core.durations import format_duration_ms, parse_duration_ms
from quantlab_pipeline.core.errors import SpecError

BPS = 10_000.0
# Fractions are user decimals (0.1 + 0.2 + 0.7 is 1.0000000000000002 in binary); this much slack
# over 1 is accepted, and a remainder this small counts as a fully closed position.
FRACTION_TOLERANCE = 1e-9
# Bounds on a policy's size: deeper or larger trees are mistakes, and would bloat every run.json.
MAX_COMBO_DEPTH = 8
MAX_LEAVES = 64
MAX_LADDER_LEVELS = 64
MAX_DURATION_MS = 3650 * 86_400_000  # ten years: past it a duration is a typo, and ms sums overflow


@dataclass(frozen=True)
class FixedStop:
    stop_loss_bps: float
    take_profit_bps: float | None = None
    kind: ClassVar[str] = "fixed_stop"


@dataclass(frozen=True)
class TrailingStop:
    activation_bps: float
    trail_bps: float
    hard_stop_bps: float | None = None
    kind: ClassVar[str] = "trailing_stop"


@dataclass(frozen=True)
class TimeStop:
    max_hold_ms: int
    take_profit_bps: float | None = None
    stop_loss_bps: float | None = None
    kind: ClassVar[str] = "time_stop"


@dataclass(frozen=True)
class LadderLevel:
    multiple: float
    fraction: float


@dataclass(frozen=True)
class Ladder:
    levels: tuple[LadderLevel, ...]  # ascending multiples
    stop_loss_bps: float | None = None
    kind: ClassVar[str] = "ladder"


@dataclass(frozen=True)
class Combo:
    policies: tuple[Policy, ...]
    kind: ClassVar[str] = "combo"


Leaf = FixedStop | TrailingStop | TimeStop | Ladder
Policy = FixedStop | TrailingStop | TimeStop | Ladder | Combo

# kind -> (required keys, optional keys); "kind" itself is always required.
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fixed_stop": (("stop_loss_bps",), ("take_profit_bps",)),
    "trailing_stop": (("activation_bps", "trail_bps"), ("hard_stop_bps",)),
    "time_stop": (("max_hold",), ("take_profit_bps", "stop_loss_bps")),
    "ladder": (("levels",), ("stop_loss_bps",)),
    "combo": (("policies",), ()),
}
KINDS: tuple[str, ...] = tuple(_KEYS)


def leaves(policy: Policy) -> list[Leaf]:
    """The exit rules of `policy`, depth-first: a combo's "first listed" order."""
    if isinstance(policy, Combo):
        return [leaf for sub in policy.policies for leaf in leaves(sub)]
    return [policy]


# -- parsing -----------------------------------------------------------------------------------


def parse_policy(value: str | dict[str, Any], *, root: str = "policy") -> Policy:
    """A policy from JSON text or a parsed dict; `root` prefixes error paths. (`@file.json`
    arguments are read by the caller: `storage.run_creation.load_json_arg`.)"""
    if isinstance(value, str):
        value = json_text.loads(value, field=root)
    return _parse_node(value, root, depth=1)


def _parse_node(node: Any, path: str, depth: int) -> Policy:
    if not isinstance(node, dict):
        raise SpecError(f'{path}: expected a policy object like {{"kind": "fixed_stop", …}}, got {_show(node)}')
    if "kind" not in node:
        raise SpecError(f"{path}.kind: missing (one of {', '.join(KINDS)})")
    kind = node["kind"]
    if not isinstance(kind, str) or kind not in _KEYS:
        raise SpecError(f"{path}.kind: unknown kind {_show(kind)} (expected one of {', '.join(KINDS)})")
    required, optional = _KEYS[kind]
    for key in node:
        if key != "kind" and key not in required and key not in optional:
            allowed = ", ".join(("kind", *required, *optional))
            raise SpecError(f"{path}.{key}: unknown key for kind {kind!r} (allowed: {allowed})")
    for key in required:
        if node.get(key) is None:
            raise SpecError(f"{path}.{key}: missing (required for kind {kind!r})")

    def opt_stop(key: str) -> float | None:
        return None if node.get(key) is None else _stop_bps(node[key], f"{path}.{key}")

    def opt_profit(key: str) -> float | None:
        return None if node.get(key) is None else _positive(node[key], f"{path}.{key}")

    if kind == "fixed_stop":
        return FixedStop(_stop_bps(node["stop_loss_bps"], f"{path}.stop_loss_bps"), opt_profit("take_profit_bps"))
    if kind == "trailing_stop":
        activation = _number(node["activation_bps"], f"{path}.activation_bps")
        if activation < 0:
            raise SpecError(
                f"{path}.activation_bps: must be >= 0 (0 arms the trail from the entry), got {activation:g}"
            )
        trail = _positive(node["trail_bps"], f"{path}.trail_bps")
        if trail >= BPS:
            raise SpecError(f"{path}.trail_bps: must be < 10000 (a 100 % trail), got {trail:g}")
        return TrailingStop(activation, trail, opt_stop("hard_stop_bps"))
    if kind == "time_stop":
        max_hold = parse_duration_ms(node["max_hold"], field=f"{path}.max_hold")
        if not 0 < max_hold <= MAX_DURATION_MS:
            raise SpecError(
                f"{path}.max_hold: must be a positive duration of at most 3650d, got {_show(node['max_hold'])}"
            )
        return TimeStop(max_hold, opt_profit("take_profit_bps"), opt_stop("stop_loss_bps"))
    if kind == "ladder":
        return Ladder(_parse_levels(node["levels"], f"{path}.levels"), opt_stop("stop_loss_bps"))
    subs = node["policies"]
    if not isinstance(subs, list) or not subs:
        raise SpecError(f"{path}.policies: expected a non-empty list of policies, got {_show(subs)}")
    if depth >= MAX_COMBO_DEPTH:
        raise SpecError(f"{path}.policies: combos nest at most {MAX_COMBO_DEPTH} deep")
    combo = Combo(tuple(_parse_node(sub, f"{path}.policies[{i}]", depth + 1) for i, sub in enumerate(subs)))
    if len(leaves(combo)) > MAX_LEAVES:
        raise SpecError(f"{path}.policies: a combo holds at most {MAX_LEAVES} exit rules, got {len(leaves(combo))}")
    return combo


def _parse_levels(raw: Any, path: str) -> tuple[LadderLevel, ...]:
    if not isinstance(raw, list) or not raw:
        raise SpecError(f'{path}: expected a non-empty list of {{"multiple": m, "fraction": f}}, got {_show(raw)}')
    if len(raw) > MAX_LADDER_LEVELS:
        raise SpecError(f"{path}: a ladder has at most {MAX_LADDER_LEVELS} levels, got {len(raw)}")
    levels, seen = [], set()
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise SpecError(f'{where}: expected {{"multiple": m, "fraction": f}}, got {_show(item)}')
        for key in item:
            if key not in ("multiple", "fraction"):
                raise SpecError(f"{where}.{key}: unknown key for a ladder level (allowed: multiple, fraction)")
        for key in ("multiple", "fraction"):
            if item.get(key) is None:
                raise SpecError(f"{where}.{key}: missing")
        multiple = _number(item["multiple"], f"{where}.multiple")
        if not multiple > 1:
            raise SpecError(f"{where}.multiple: must be > 1 (a multiple of p0 above the entry), got {multiple:g}")
        if multiple in seen:
            raise SpecError(f"{where}.multiple: duplicate level {multiple:g}")
        seen.add(multiple)
        fraction = _positive(item["fraction"], f"{where}.fraction")
        if fraction > 1:
            raise SpecError(f"{where}.fraction: must be <= 1, got {fraction:g}")
        levels.append(LadderLevel(multiple, fraction))
    total = math.fsum(level.fraction for level in levels)
    if total > 1 + FRACTION_TOLERANCE:
        raise SpecError(f"{path}: fractions sum to {total:g}, must be <= 1")
    return tuple(sorted(levels, key=lambda level: level.multiple))


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{path}: expected a number, got {_show(value)}")
    if not math.isfinite(value):
        raise SpecError(f"{path}: must be finite, got {value}")
    return float(value)


def _positive(value: Any, path: str) -> float:
    number = _number(value, path)
    if number <= 0:
        raise SpecError(f"{path}: must be > 0, got {number:g}")
    return number


def _stop_bps(value: Any, path: str) -> float:
    number = _positive(value, path)
    if number >= BPS:
        raise SpecError(f"{path}: must be < 10000 (a stop at 100 % below p0 never fires), got {number:g}")
    return number


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


# -- canonical form and id ---------------------------------------------------------------------


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The canonical dict: fixed key order, absent optionals omitted, integral numbers as ints,
    durations in their largest exact unit, ladder levels ascending. Parsing it gives `policy` back."""
    if isinstance(policy, Combo):
        return {"kind": "combo", "policies": [policy_to_dict(sub) for sub in policy.policies]}
    out: dict[str, Any] = {"kind": policy.kind}
    if isinstance(policy, FixedStop):
        out["stop_loss_bps"] = _num(policy.stop_loss_bps)
        _put(out, "take_profit_bps", policy.take_profit_bps)
    elif isinstance(policy, TrailingStop):
        out["activation_bps"] = _num(policy.activation_bps)
        out["trail_bps"] = _num(policy.trail_bps)
        _put(out, "hard_stop_bps", policy.hard_stop_bps)
    elif isinstance(policy, TimeStop):
        out["max_hold"] = format_duration_ms(policy.max_hold_ms)
        _put(out, "take_profit_bps", policy.take_profit_bps)
        _put(out, "stop_loss_bps", policy.stop_loss_bps)
    else:
        out["levels"] = [{"multiple": _num(lv.multiple), "fraction": _num(lv.fraction)} for lv in policy.levels]
        _put(out, "stop_loss_bps", policy.stop_loss_bps)
    return out


def policy_json(policy: Policy) -> str:
    """Compact canonical JSON text of `policy` (what `policy_id_of` hashes)."""
    return json.dumps(policy_to_dict(policy), separators=(",", ":"))


def policy_id_of(policy: Policy) -> str:
    """Stable 12-hex id: equal policies, however written, share it."""
    return hashlib.sha256(policy_json(policy).encode("utf-8")).hexdigest()[:12]


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _put(out: dict[str, Any], key: str, value: float | None) -> None:
    if value is not None:
        out[key] = _num(value)
