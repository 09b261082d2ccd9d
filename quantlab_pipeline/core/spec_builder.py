"""The one place a user's request becomes a run spec: the CLI's flags and the launchpad's config
both fill a `SpecRequest`, and `build_spec` decides what each run type requires or rejects.

Pure: paths are resolved against a `base_dir` the caller passes, JSON arguments arrive parsed
(reading `@file.json` is the caller's I/O), and the id, creation time and provenance are given.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

from quantlab_pipeline.core import json_text
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.policy_spec import parse_policy, policy_to_dict
from quantlab_pipeline.core.spec import (
    DEFAULT_CAPITAL,
    DEFAULT_POSITION_SIZE,
    RUN_TYPES,
    Execution,
    PortfolioParams,
    Provenance,
    RunSpec,
    Source,
)
from quantlab_pipeline.core.sweep_spec import parse_cscv_blocks

# The defaults users see in `--help` and in the README; nowhere else.
DEFAULT_ALERTS_PATH = "data/alerts.duckdb"
DEFAULT_ALERTS_TABLE: str = Source.model_fields["alerts_table"].default
DEFAULT_INTERVAL: str = RunSpec.model_fields["interval"].default
DEFAULT_HORIZON: str = RunSpec.model_fields["horizon"].default
DEFAULT_FEE_BPS: float = Execution.model_fields["fee_bps"].default
DEFAULT_SLIPPAGE_BPS: float = Execution.model_fields["slippage_bps"].default

_PORTFOLIO_FIELDS = ("capital", "position_size", "position_fraction", "max_positions")
# Which optional request fields each run type accepts (anything else given is refused).
_ACCEPTS: dict[str, frozenset[str]] = {
    "path-only": frozenset({"features"}),
    "policy": frozenset(
        {"policy_id", "policy", "fee_bps", "slippage_bps", "features", *_PORTFOLIO_FIELDS, "portfolio"}
    ),
    "optimization": frozenset(
        {"sweep", "per_caller", "fee_bps", "slippage_bps", "train_months", "cscv_blocks", "benchmark"}
    ),
}
_REQUIRES: dict[str, tuple[str, ...]] = {"path-only": (), "policy": ("policy_id", "policy"), "optimization": ()}


@dataclass(frozen=True)
class SpecRequest:
    """What a user asks for. `None` means "not given"; the builder applies the documented
    defaults (interval, horizon, costs) and refuses what does not fit the run type."""

    run_type: str
    alerts: str | None
    window_from: str | None
    window_to: str | None
    alerts_table: str | None = None
    candles: str | None = None
    interval: str | None = None
    horizon: str | None = None
    callers: tuple[str, ...] = ()
    chains: tuple[str, ...] = ()
    policy_id: str | None = None
    policy: dict[str, Any] | str | None = None  # JSON text or parsed; `@file` is read by the caller
    fee_bps: float | None = None
    slippage_bps: float | None = None
    sweep: dict[str, Any] | list[Any] | str | None = None
    per_caller: bool = False
    features: bool = True  # False: skip features/features.parquet
    train_months: int | None = None  # walk-forward optimization over K training months
    cscv_blocks: int | str | None = None  # PBO's blocks; text as typed on the command line
    benchmark: dict[str, Any] | str | None = None  # SPA's benchmark policy (JSON text or parsed)
    portfolio: bool = True  # policy runs: False skips the portfolio (docs/portfolio.md)
    capital: float | None = None
    position_size: float | None = None
    position_fraction: float | None = None
    max_positions: int | None = None

    def given(self) -> set[str]:
        return (
            {
                name
                for name in (
                    "policy_id",
                    "policy",
                    "fee_bps",
                    "slippage_bps",
                    "sweep",
                    "train_months",
                    "cscv_blocks",
                    "benchmark",
                    *_PORTFOLIO_FIELDS,
                )
                if getattr(self, name) is not None
            }
            | ({"per_caller"} if self.per_caller else set())
            | (set() if self.features else {"features"})
            | (set() if self.portfolio else {"portfolio"})
        )


# What a policy id may hold: it names the run's partition keys, tags and tables (docs/faults.md).
POLICY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")


def _show(value: str) -> str:
    """`value` quoted, cut to 60 characters (a newline shown as \\n: the error stays one line)."""
    return repr(value if len(value) <= 60 else value[:57] + "...")


def resolve_path(path: str, base_dir: str) -> str:
    """`path` made absolute against `base_dir` (globs stay globs), so a stored spec names the same
    file whatever the working directory of whoever reads it later."""
    return posixpath.normpath(posixpath.join(base_dir, path))


def build_spec(request: SpecRequest, *, run_id: str, created_at: str, provenance: Provenance, base_dir: str) -> RunSpec:
    """Validate `request` for its run type and return the spec; any problem is one `SpecError`
    naming the field."""
    if request.run_type not in RUN_TYPES:
        raise SpecError(f"run_type: expected one of {', '.join(RUN_TYPES)}, got {request.run_type!r}")
    for name in ("alerts", "window_from", "window_to"):
        if not getattr(request, name):
            raise SpecError(f"{name}: required")
    refused = sorted(request.given() - _ACCEPTS[request.run_type])
    if refused:
        raise SpecError(f"{refused[0]}: not used by a {request.run_type} run")
    unused = [name for name in _PORTFOLIO_FIELDS if name in request.given()] if not request.portfolio else []
    if unused:
        raise SpecError(f"{unused[0]}: not used when the portfolio is off")
    for name in _REQUIRES[request.run_type]:
        if getattr(request, name) in (None, ""):
            raise SpecError(f"{name}: required for a {request.run_type} run")
    if request.policy_id is not None and not POLICY_ID_RE.match(request.policy_id):
        raise SpecError(
            f"policy_id: 1 to 48 letters, digits, '_', '-' or '.', starting with a letter or digit, "
            f"got {_show(request.policy_id)}"
        )

    source: dict[str, Any] = {"alerts": resolve_path(request.alerts or "", base_dir)}
    if request.alerts_table is not None:
        source["alerts_table"] = request.alerts_table
    if request.candles:
        source["candles"] = resolve_path(request.candles, base_dir)
    fields: dict[str, Any] = {
        "run_id": run_id,
        "run_type": request.run_type,
        "created_at": created_at,
        "window": {"from": request.window_from, "to": request.window_to},
        "source": source,
        "filters": {"callers": list(request.callers), "chains": list(request.chains)},
        "provenance": provenance.model_dump(mode="json"),
    }
    for name in ("interval", "horizon", "policy_id"):
        if getattr(request, name) is not None:
            fields[name] = getattr(request, name)
    if request.policy is not None:  # stored in canonical form: equal policies, equal specs
        fields["policy"] = policy_to_dict(parse_policy(request.policy))
    execution = {k: getattr(request, k) for k in ("fee_bps", "slippage_bps") if getattr(request, k) is not None}
    if execution:
        fields["execution"] = execution
    if request.run_type == "optimization":
        sweep = json_text.loads(request.sweep, field="sweep") if isinstance(request.sweep, str) else request.sweep
        fields["sweep"] = _sweep_with_flags(sweep, request)
        fields["confidence"] = True
    else:
        fields["features"] = request.features
    if request.run_type == "policy" and request.portfolio:
        fields["portfolio"] = _portfolio(request).model_dump(mode="json")
    spec = RunSpec.from_dict(fields)
    if request.run_type == "optimization":
        _check_blocks_fit(spec, field="cscv_blocks" if request.cscv_blocks is not None else "sweep.cscv_blocks")
    return spec


def _sweep_with_flags(sweep: dict[str, Any] | list[Any] | None, request: SpecRequest) -> Any:
    """`--per-caller`, `--walk-forward --train-months`, `--cscv-blocks` and `--benchmark` (or the
    launchpad's fields) folded into the sweep spec; the benchmark in canonical form."""
    flags: dict[str, Any] = {"per_caller": True} if request.per_caller else {}
    if request.train_months is not None:
        flags["walk_forward"] = {"train_months": request.train_months}
    if request.cscv_blocks is not None:
        blocks = request.cscv_blocks
        if isinstance(blocks, str) and blocks.strip().isdigit():  # as typed; "3.5" stays text and is refused
            blocks = int(blocks)
        flags["cscv_blocks"] = parse_cscv_blocks(blocks, "cscv_blocks")
    if request.benchmark is not None:
        flags["benchmark"] = policy_to_dict(parse_policy(request.benchmark, root="benchmark"))
    if not flags:
        return sweep
    if sweep is None:
        return flags
    if isinstance(sweep, list):
        return {"templates": sweep, **flags}
    if isinstance(sweep, dict):
        return {**sweep, **flags}
    raise SpecError(f"sweep: expected a list of policy templates or an object, got {type(sweep).__name__}")


def _portfolio(request: SpecRequest) -> PortfolioParams:
    """The account a policy run follows its trades with: the documented defaults (capital 10,000,
    100 quote units an entry, no cap) for what is not given."""
    if request.position_size is not None and request.position_fraction is not None:
        raise SpecError("position_fraction: not with position_size (an entry spends one or the other)")
    given = {name: getattr(request, name) for name in _PORTFOLIO_FIELDS if getattr(request, name) is not None}
    if request.position_fraction is None:
        given.setdefault("position_size", DEFAULT_POSITION_SIZE)
    return PortfolioParams.parse({"capital": DEFAULT_CAPITAL, **given})


def _check_blocks_fit(spec: RunSpec, *, field: str) -> None:
    """A `cscv_blocks` given is refused when no month of the window has that many days: no month
    could be cut (docs/confidence.md). A month shorter than S reports no PBO; the default S is
    never refused."""
    sweep = spec.sweep
    if not isinstance(sweep, dict) or "cscv_blocks" not in sweep:
        return
    longest = max((hi - lo).days + 1 for lo, hi in (spec.month_window(m) for m in spec.months()))
    blocks = sweep["cscv_blocks"]
    if blocks > longest:
        raise SpecError(
            f"{field}: {blocks} blocks need {blocks} days of a month in the window; the window has at most {longest}"
        )
