"""The run spec (README "A first backtest"): one backtest configuration, immutable once written.

Also the identifiers that may become paths (run ids, months) and the month arithmetic of a run's
window. Validation errors are `SpecError`s whose message names the offending field.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quantlab_pipeline.core.durations import interval_ms, parse_duration_ms
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.policy_spec import BPS, MAX_DURATION_MS, Policy, parse_policy
from quantlab_pipeline.core.sweep_spec import parse_sweep

RUN_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
MONTH_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RunType = Literal["path-only", "policy", "optimization"]
RUN_TYPES: tuple[str, ...] = ("path-only", "policy", "optimization")


def validate_run_id(value: str) -> str:
    """Return `value` if it is a lowercase UUID4; nothing else may become a path."""
    if not isinstance(value, str) or not RUN_ID_RE.match(value):
        raise SpecError(f"run_id: expected a lowercase UUID4, got {value!r}")
    return value


def validate_month(value: str) -> str:
    if not isinstance(value, str) or not MONTH_RE.match(value):
        raise SpecError(f"month: expected YYYY-MM, got {value!r}")
    return value


def validate_identifier(value: str, *, field: str) -> str:
    """A plain SQL identifier (table names are interpolated, so they must be exactly this)."""
    if not isinstance(value, str) or not IDENTIFIER_RE.match(value):
        raise SpecError(f"{field}: expected a plain identifier [A-Za-z_][A-Za-z0-9_]*, got {value!r}")
    return value


def new_run_id() -> str:
    return str(uuid.uuid4())


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def date_to_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


def month_bounds(month: str) -> tuple[dt.date, dt.date]:
    """First and last day of a `YYYY-MM` month."""
    year, mon = (int(x) for x in validate_month(month).split("-"))
    return dt.date(year, mon, 1), dt.date(year, mon, calendar.monthrange(year, mon)[1])


def months_between(first: dt.date, last: dt.date) -> list[str]:
    months, year, mon = [], first.year, first.month
    while (year, mon) <= (last.year, last.month):
        months.append(f"{year:04d}-{mon:02d}")
        year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return months


def validation_line(exc: ValidationError, *, where: str = "") -> str:
    """A validation error as one line naming the field (`capital: must be …`); `where` names an
    error of no field (a message of its own then names one)."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or where
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Window(_Strict):
    """Inclusive UTC dates; either end may be open."""

    from_: dt.date | None = Field(default=None, alias="from")
    to: dt.date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.from_ and self.to and self.to < self.from_:
            raise ValueError(f"window: 'to' ({self.to}) is before 'from' ({self.from_})")
        return self


class Source(_Strict):
    alerts: str
    alerts_table: str = "alerts"
    candles: str | None = None  # None: the alerts database

    @field_validator("alerts_table")
    @classmethod
    def _table(cls, v: str) -> str:
        try:
            return validate_identifier(v, field="alerts_table")
        except SpecError as exc:
            raise ValueError(str(exc)) from None

    @property
    def candles_source(self) -> str:
        return self.candles or self.alerts


class Filters(_Strict):
    callers: tuple[str, ...] = ()
    chains: tuple[str, ...] = ()


class TruthParams(_Strict):
    multiples: tuple[float, ...] = (2.0, 3.0, 4.0)
    activity_move: float = 0.10
    max_entry_delay_candles: int = 3

    @field_validator("multiples")
    @classmethod
    def _multiples(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not (1.0 < m < math.inf) for m in v):
            raise ValueError("multiples must be a non-empty list of finite numbers > 1")
        return tuple(sorted(set(v)))

    @field_validator("activity_move")
    @classmethod
    def _move(cls, v: float) -> float:
        if not (0.0 < v < 1.0):
            raise ValueError("activity_move must be in (0, 1)")
        return v

    @field_validator("max_entry_delay_candles")
    @classmethod
    def _delay(cls, v: int) -> int:
        if v < 1:
            raise ValueError("max_entry_delay_candles must be >= 1")
        return v


class Execution(_Strict):
    """Costs per side, in basis points."""

    fee_bps: float = 30.0
    slippage_bps: float = 10.0

    @field_validator("fee_bps", "slippage_bps")
    @classmethod
    def _cost(cls, v: float) -> float:
        if not (0 <= v < BPS):  # NaN fails too: a NaN cost would make every return NaN
            raise ValueError(f"must be a number in [0, {BPS:g}) bps, got {v!r}")
        return v


MAX_CAPITAL = 1e12  # a trillion quote units: past it a capital is a typo
MAX_POSITIONS = 1_000_000
DEFAULT_CAPITAL = 10_000.0
DEFAULT_POSITION_SIZE = 100.0


class PortfolioParams(_Strict):
    """The account of a policy run's portfolio (docs/portfolio.md): starting cash, what each entry
    spends (a fixed size in quote units, or a fraction of equity at entry), and a cap on open positions."""

    capital: float = DEFAULT_CAPITAL
    position_size: float | None = None
    position_fraction: float | None = None
    max_positions: int | None = None  # None: no cap

    @field_validator("capital")
    @classmethod
    def _capital(cls, v: float) -> float:
        if not (0 < v <= MAX_CAPITAL):  # NaN fails too
            raise ValueError(f"must be a number > 0 and at most {MAX_CAPITAL:g}, got {v!r}")
        return v

    @field_validator("position_size")
    @classmethod
    def _size(cls, v: float | None) -> float | None:
        if v is not None and not (0 < v <= MAX_CAPITAL):
            raise ValueError(f"must be a number > 0 and at most {MAX_CAPITAL:g} quote units, got {v!r}")
        return v

    @field_validator("position_fraction")
    @classmethod
    def _fraction(cls, v: float | None) -> float | None:
        if v is not None and not (0 < v <= 1):
            raise ValueError(f"must be a fraction of equity in (0, 1], got {v!r}")
        return v

    @field_validator("max_positions", mode="before")
    @classmethod
    def _cap(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_POSITIONS):
            raise ValueError(f"must be a whole number from 1 to {MAX_POSITIONS:,}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _sizing(self) -> PortfolioParams:
        # Messages start with the field they are about: `parse` has no location for them.
        if (self.position_size is None) == (self.position_fraction is None):
            raise ValueError("position_fraction: give exactly one of position_size and position_fraction")
        if self.position_size is not None and self.position_size > self.capital:
            raise ValueError(
                f"position_size: {self.position_size:g} is above capital {self.capital:g}, so no call could be taken"
            )
        return self

    @classmethod
    def parse(cls, data: dict[str, Any]) -> PortfolioParams:
        """Validate; any problem is one `SpecError` naming the field (`capital: must be …`)."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(validation_line(exc)) from None


class Provenance(_Strict):
    git_commit: str | None = None
    git_branch: str | None = None
    git_dirty: bool | None = None
    quantlab_version: str | None = None


class RunSpec(_Strict):
    run_id: str
    run_type: RunType
    created_at: str
    interval: str = "5m"
    window: Window = Window()
    horizon: str = "5d"
    source: Source
    filters: Filters = Filters()
    truth: TruthParams = TruthParams()
    policy_id: str | None = None
    policy: dict[str, Any] | None = None
    execution: Execution = Execution()
    sweep: dict[str, Any] | list[Any] | None = None
    features: bool = True  # path-only and policy runs: write features/features.parquet (docs/research.md "Features")
    # Policy runs: the account that follows the trades (docs/portfolio.md); None: no portfolio, as
    # in every spec written before it existed.
    portfolio: PortfolioParams | None = None
    # Optimization runs: the daily matrix and PBO/SPA written with the frontier (docs/confidence.md);
    # false in every spec written before they existed.
    confidence: bool = False
    provenance: Provenance = Provenance()

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v: str) -> str:
        if not RUN_ID_RE.match(v):
            raise ValueError(f"expected a lowercase UUID4, got {v!r}")
        return v

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: str) -> str:
        try:
            interval_ms(v)
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("horizon")
    @classmethod
    def _horizon(cls, v: str) -> str:
        try:
            if not 0 < parse_duration_ms(v, field="horizon") <= MAX_DURATION_MS:
                raise ValueError(f"horizon must be a positive duration of at most 3650d, got {v!r}")
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _by_type(self) -> RunSpec:
        if self.run_type == "policy":
            if self.policy is None or not self.policy_id:
                raise ValueError("a policy run needs 'policy_id' and 'policy'")
            parse_policy(self.policy)  # raises SpecError naming the bad field
        if self.run_type == "optimization":
            parse_sweep(self.sweep)
        if self.portfolio is not None and self.run_type != "policy":
            raise ValueError(f"portfolio: only policy runs have a portfolio, this is a {self.run_type} run")
        if self.confidence and self.run_type != "optimization":
            raise ValueError(f"confidence: only optimization runs have it, this is a {self.run_type} run")
        return self

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """Validate a spec; any problem becomes one `SpecError` line naming the field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(f"run spec: {validation_line(exc, where='spec')}") from None
        except SpecError as exc:
            raise SpecError(f"run spec: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    # -- derived quantities --------------------------------------------------------------------

    def policy_and_id(self) -> tuple[str, Policy]:
        """`(policy_id, parsed policy)` of a policy run; a `SpecError` for any other run type."""
        if self.run_type != "policy" or self.policy is None or not self.policy_id:
            raise SpecError(f"run {self.run_id} is a {self.run_type} run; only policy runs have a policy")
        return self.policy_id, parse_policy(self.policy)

    @property
    def interval_ms(self) -> int:
        return interval_ms(self.interval)

    @property
    def horizon_ms(self) -> int:
        return parse_duration_ms(self.horizon, field="horizon")

    def months(self) -> list[str]:
        """Every month the window touches; an open-ended window has no finite list."""
        if self.window.from_ is None or self.window.to is None:
            raise SpecError("window: an open-ended window has no finite month list; give 'from' and 'to'")
        return months_between(self.window.from_, self.window.to)

    def previous_month(self, month: str) -> str | None:
        """The month of the window before `month`, None for the first (the window must be closed)."""
        months = self.months()
        position = months.index(validate_month(month))
        return months[position - 1] if position else None

    def covers_month(self, month: str) -> bool:
        first, last = month_bounds(month)
        w = self.window
        return (w.to is None or first <= w.to) and (w.from_ is None or last >= w.from_)

    def month_window(self, month: str) -> tuple[dt.date, dt.date]:
        """The inclusive dates of `month` inside the run's window (raises if outside)."""
        if not self.covers_month(month):
            raise SpecError(
                f"month {month} is outside run {self.run_id}'s window "
                f"{self.window.from_ or '…'}..{self.window.to or '…'}"
            )
        first, last = month_bounds(month)
        lo = max(first, self.window.from_) if self.window.from_ else first
        hi = min(last, self.window.to) if self.window.to else last
        return lo, hi

    def month_range_ms(self, month: str) -> tuple[int, int]:
        """`[start, end)` epoch ms of the alerts that belong to partition (month, this run)."""
        lo, hi = self.month_window(month)
        return date_to_ms(lo), date_to_ms(hi + dt.timedelta(days=1))
