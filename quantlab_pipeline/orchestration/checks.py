"""Asset checks: what must hold of every run-month partition, shown on each asset's Checks tab.

The backtest checks are declared on their asset (`check_specs`) and evaluated inside its step, on
the values the step has just computed and the inputs it already read: a month runs one step per
artifact, not one more per check, and nothing is read back through the IO manager. Each check can
still run alone (the UI's "Execute checks", a check-only selection): the step then reads the
stored artifact and does not recompute it. The content checks are evaluated before the artifact is
written, so their outcome goes into the month's `logs/stdout.txt`; `manifest_consistent` checks
the write itself, after it (and after `_SUCCESS` nothing in the directory changes), so its outcome
is in Dagster and the progress lines only.

Blocking checks stop the downstream steps of the same run: trades are never simulated on paths
that looked ahead, and a summary never describes trades that disagree with their paths. A check
never recomputes the artifact it checks.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    Config,
    MetadataValue,
)
from pydantic import Field

from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.core.summary import summarize_trades
from quantlab_pipeline.orchestration.resources import CandleStoreResource
from quantlab_pipeline.storage.artifact_files import LoadedArtifact
from quantlab_pipeline.storage.atomic import sha256_file
from quantlab_pipeline.storage.completion import changed_months
from quantlab_pipeline.storage.layout import ARTIFACT_INPUTS
from quantlab_pipeline.storage.run_dir import RunDirectory

_EXAMPLES = 5  # offending rows shown in a failed check's metadata
# Partitioned checks are "preview" in Dagster 1.13; their use here is the documented one.


DEFAULT_MAX_EXCLUDED_SHARE = 0.25


class ExclusionConfig(Config):
    """The `paths` step's config: the threshold of its `excluded_share` check."""

    max_excluded_share: float = Field(
        default=DEFAULT_MAX_EXCLUDED_SHARE,
        description="Warn when more than this share of the partition's alert rows is excluded.",
    )


@dataclass(frozen=True)
class CheckSubject:
    """What a check of one partition's artifact looks at: the artifact's frame (as computed, or as
    stored when the check runs alone), the upstream artifacts its step read, and the partition."""

    artifact: str
    frame: pl.DataFrame
    inputs: Mapping[str, LoadedArtifact]
    spec: RunSpec
    run_dir: RunDirectory
    candle_store: CandleStoreResource
    max_excluded_share: float = DEFAULT_MAX_EXCLUDED_SHARE
    outputs: Mapping[str, pl.DataFrame] = field(default_factory=dict)  # every artifact of the step, by name

    def previous_month(self) -> RunDirectory | None:
        """The directory of the window's month before this one (None for the first)."""
        month = self.spec.previous_month(self.run_dir.month)
        return None if month is None else RunDirectory(self.run_dir.runs_dir, month, self.run_dir.run_id)


@dataclass(frozen=True)
class ArtifactCheck:
    name: str
    description: str
    evaluate: Callable[[CheckSubject], AssetCheckResult]
    blocking: bool = True
    after_write: bool = False  # checks the written file and run.json, so runs after the IO manager

    def spec(self, artifact: str) -> AssetCheckSpec:
        """Not partitioned: each evaluation targets the partition's materialization its step just
        recorded. A partitioned check would make the UI compute every check's status per
        run-month on each asset page (minutes at 10,000 runs: docs/performance.md "At a lab's scale")."""
        return AssetCheckSpec(
            self.name,
            asset=artifact,
            description=self.description,
            blocking=self.blocking,
        )

    def result(self, subject: CheckSubject) -> AssetCheckResult:
        result = self.evaluate(subject)
        return AssetCheckResult(
            asset_key=subject.artifact,
            check_name=self.name,
            passed=result.passed,
            severity=result.severity,
            metadata=result.metadata,
        )


def _examples(values: list[Any]) -> MetadataValue:
    return MetadataValue.json([str(v) for v in values[:_EXAMPLES]])


def _manifest_consistent(subject: CheckSubject) -> AssetCheckResult:
    artifact, rd = subject.artifact, subject.run_dir
    manifest = rd.manifest() or {}
    record = manifest.get("artifacts", {}).get(artifact)
    problems = []
    if record is None:
        problems.append(f"{artifact} is not recorded in run.json")
    else:
        path = rd.path / record["path"]
        if not path.is_file():
            problems.append(f"{record['path']} is missing")
        elif sha256_file(path) != record["sha256"]:
            problems.append(f"{record['path']} does not match its recorded sha256")
        for upstream in ARTIFACT_INPUTS[artifact]:
            current = manifest["artifacts"].get(upstream, {}).get("sha256")
            if record.get("inputs", {}).get(upstream) != current:
                problems.append(f"computed from an older {upstream}")
        problems += [
            f"computed from an older version of {month}" for month in changed_months(rd.runs_dir, rd.run_id, record)
        ]
    return AssetCheckResult(
        passed=not problems,
        metadata={"problems": MetadataValue.json(problems), "run_status": manifest.get("status", "missing")},
    )


def _manifest_check(artifact: str) -> ArtifactCheck:
    return ArtifactCheck(
        "manifest_consistent",
        f"run.json records {artifact} at its size and sha256, computed from the current version of "
        "each upstream artifact (what completion of the run relies on).",
        _manifest_consistent,
        after_write=True,
    )


def _size(value: float | None) -> MetadataValue:
    """A figure shown with a check but not plotted: the UI plots each numeric metadata key as one
    series across the check's evaluations, i.e. across every run and month, where sizes and
    amounts are not comparable. Numeric, and so plotted, stay only what a check measures — its
    violations and shares — which read the same in any month of any run (docs/architecture.md)."""
    return MetadataValue.text("none" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:,.2f}")


def _call_id_unique(subject: CheckSubject) -> AssetCheckResult:
    frame = subject.frame
    repeated = frame.filter(pl.col("call_id").is_duplicated()).get_column("call_id").unique().sort().to_list()
    return AssetCheckResult(
        passed=not repeated,
        metadata={"alerts": _size(frame.height), "repeated_call_ids": len(repeated), "examples": _examples(repeated)},
    )


def _no_look_ahead(subject: CheckSubject) -> AssetCheckResult:
    spec, frame = subject.spec, subject.frame
    limit = pl.col("alert_ts_ms") + spec.truth.max_entry_delay_candles * spec.interval_ms
    early = frame.filter((pl.col("entry_ts_ms") < pl.col("alert_ts_ms")) | (pl.col("entry_ts_ms") >= limit))
    wrong_p0: list[str] = []
    # The candles the step read (shared by the run's steps when the month is read whole).
    for part, read in subject.candle_store.parts(spec, subject.inputs["alerts"].frame):
        rows = frame.filter(pl.col("call_id").is_in(part.get_column("call_id").implode()))
        entry = rows.get_column("entry_ts_ms").to_numpy().astype(np.int64)
        start, stop = read.candles.window_bounds(rows.get_column("mint"), entry, entry + 1)
        found = stop > start
        opens = np.full(rows.height, np.nan)
        opens[found] = read.candles.open[start[found]]
        bad = ~found | (opens != rows.get_column("p0").to_numpy())
        wrong_p0 += rows.filter(pl.Series(bad)).get_column("call_id").to_list()
    offenders = sorted({*early.get_column("call_id").to_list(), *wrong_p0})
    return AssetCheckResult(
        passed=not offenders,
        metadata={
            "paths": _size(frame.height),
            "entries_outside_the_entry_window": early.height,
            "p0_not_the_entry_open": len(wrong_p0),
            "examples": _examples(offenders),
        },
    )


def _excluded_share(subject: CheckSubject) -> AssetCheckResult:
    loaded = subject.inputs["alerts"]
    source_rows = int(loaded.metadata.get("source_rows", loaded.frame.height))
    processed = subject.frame.height
    share = (source_rows - processed) / source_rows if source_rows else 0.0
    return AssetCheckResult(
        passed=share <= subject.max_excluded_share,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "alert_rows": _size(source_rows),
            "calls_processed": _size(processed),
            "excluded_share_pct": round(100 * share, 1),
            "threshold_pct": round(100 * subject.max_excluded_share, 1),
        },
    )


def _trades_match_paths(subject: CheckSubject) -> AssetCheckResult:
    path_ids = set(subject.inputs["paths"].frame.get_column("call_id").to_list())
    trade_ids = subject.frame.get_column("call_id").to_list()
    missing, extra = sorted(path_ids - set(trade_ids)), sorted(set(trade_ids) - path_ids)
    repeated = len(trade_ids) - len(set(trade_ids))
    return AssetCheckResult(
        passed=not (missing or extra or repeated),
        metadata={
            "paths": _size(len(path_ids)),
            "trades": _size(len(trade_ids)),
            "paths_without_trade": len(missing),
            "trades_without_path": len(extra),
            "repeated_trades": repeated,
            "examples": _examples(missing + extra),
        },
    )


_SUMMARY_TOLERANCE = 1e-9


def _summary_matches_trades(subject: CheckSubject) -> AssetCheckResult:
    stored = subject.frame.row(0, named=True)
    expected = summarize_trades(
        subject.inputs["trades"].frame,
        run_id=stored["run_id"],
        month=stored["month"],
        policy_id=stored["policy_id"],
        calls_processed=stored["calls_processed"],
        calls_excluded=stored["calls_excluded"],
    ).row(0, named=True)
    differ = [
        name
        for name, value in expected.items()
        if not (
            value == stored[name]
            or (
                isinstance(value, float)
                and isinstance(stored[name], float)
                and abs(value - stored[name]) <= _SUMMARY_TOLERANCE * max(1.0, abs(value))
            )
        )
    ]
    return AssetCheckResult(passed=not differ, metadata={"columns_that_differ": MetadataValue.json(differ)})


def _curve_ends_at_equity_end(subject: CheckSubject) -> AssetCheckResult:
    row = subject.frame.row(0, named=True)
    curve = subject.outputs["equity"]
    previous = subject.previous_month()
    if curve.height:
        where, last = "this month's last point", curve.get_column("equity")[-1]
    elif previous is not None:  # no point this month: the window's last point is in a month before
        where, last = f"{previous.month}'s equity_end", previous.read_artifact("portfolio").frame["equity_end"][0]
    else:
        where, last = "the capital (no point yet)", row["capital"]
    return AssetCheckResult(
        passed=last == row["equity_end"],
        metadata={"equity_end": _size(row["equity_end"]), "last_point_equity": _size(last), "last_point": where},
    )


def _cash_never_negative(subject: CheckSubject) -> AssetCheckResult:
    curve = subject.outputs["equity"]
    negative = curve.filter(pl.col("cash") < 0)
    return AssetCheckResult(
        passed=negative.height == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "points": _size(curve.height),
            "points_with_negative_cash": negative.height,
            "lowest_cash": _size(float(curve.get_column("cash").min()) if curve.height else None),  # type: ignore[arg-type]
            "examples": _examples(negative.get_column("ts_ms").to_list()),
        },
    )


def _decided(row: dict[str, Any], positions: pl.DataFrame) -> tuple[int, int, int]:
    """(taken, skipped, not yet entered) calls of the window to date."""
    skipped = row["calls_skipped_cash"] + row["calls_skipped_max_positions"]
    return row["calls_taken"], skipped, positions.filter(pl.col("status") == "pending").height


def _calls_add_up(subject: CheckSubject) -> AssetCheckResult:
    taken, skipped, pending = _decided(subject.frame.row(0, named=True), subject.outputs["positions"])
    trades = subject.inputs["trades"].frame.height
    previous = subject.previous_month()
    before = 0
    if previous is not None:  # the previous month's check holds the same for the months before it
        row = previous.read_artifact("portfolio").frame.row(0, named=True)
        before = sum(_decided(row, previous.read_artifact("positions").frame))
    return AssetCheckResult(
        passed=taken + skipped + pending == before + trades,
        metadata={
            "calls_taken": _size(taken),
            "calls_skipped": _size(skipped),
            "calls_not_yet_entered": _size(pending),
            "trades_before_this_month": _size(before),
            "trades_this_month": _size(trades),
            "calls_unaccounted": before + trades - (taken + skipped + pending),
        },
    )


PBO_WARN_ABOVE = 0.5  # choosing the in-sample best is then worse than choosing at random


def _pbo_at_most_half(subject: CheckSubject) -> AssetCheckResult:
    row = subject.frame.row(0, named=True)
    pbo = row["pbo"]
    return AssetCheckResult(
        passed=pbo is None or pbo <= PBO_WARN_ABOVE,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "pbo": pbo,
            "cscv_splits": row["cscv_splits"],
            "n_policies": row["n_policies"],
            "n_days": row["n_days"],
            "spa_pvalue": row["spa_pvalue"],
        },
    )


# Each checked artifact's checks, in the order they are evaluated and reported.
ARTIFACT_CHECKS: dict[str, tuple[ArtifactCheck, ...]] = {
    "alerts": (
        ArtifactCheck(
            "call_id_unique",
            "Every call_id of the partition's alerts appears once (repeats are skipped at input).",
            _call_id_unique,
        ),
        _manifest_check("alerts"),
    ),
    "paths": (
        ArtifactCheck(
            "no_look_ahead",
            "No look-ahead: every entry is at or after its alert, within the entry delay, and p0 is the open "
            "of the entry candle.",
            _no_look_ahead,
        ),
        ArtifactCheck(
            "excluded_share",
            "The share of the partition's alert rows without a path (skipped or excluded) stays under a "
            "threshold; a warning, since bad data is recorded rather than fatal.",
            _excluded_share,
            blocking=False,
        ),
        _manifest_check("paths"),
    ),
    "trades": (
        ArtifactCheck(
            "trades_match_paths",
            "One trade per path: the trades' call ids are exactly the paths' (every path has its entry candle).",
            _trades_match_paths,
        ),
        _manifest_check("trades"),
    ),
    "summary": (
        ArtifactCheck(
            "summary_matches_trades",
            "The summary row equals the metrics recomputed from the partition's trades.",
            _summary_matches_trades,
            blocking=False,
        ),
        _manifest_check("summary"),
    ),
    "frontier": (_manifest_check("frontier"),),
    "policy_daily": (_manifest_check("policy_daily"),),
    "overfitting": (
        ArtifactCheck(
            "pbo_at_most_half",
            "The probability of backtest overfitting (docs/confidence.md) is at most 0.5: above it, the policy "
            "that is best on half of the month's days lands in the bottom half on the other half more often "
            "than not, so the frontier's winner is mostly luck. A warning: the numbers are right, the winner "
            "is not to be trusted. No PBO (too few days, one policy) passes.",
            _pbo_at_most_half,
            blocking=False,
        ),
        _manifest_check("overfitting"),
    ),
    "portfolio": (
        ArtifactCheck(
            "curve_ends_at_equity_end",
            "The window-to-date equity_end is the equity of the curve's last point.",
            _curve_ends_at_equity_end,
        ),
        ArtifactCheck(
            "cash_never_negative",
            "The account's cash is never below zero at a point of this month's curve. A buy never spends "
            "more than the cash there is (it is skipped), so only a sell can bring cash below zero: a trade "
            "whose net return is below -100 % (a near-total loss plus its fees) returns less than nothing. "
            "A warning: the numbers are right, the account was overdrawn by its costs.",
            _cash_never_negative,
            blocking=False,
        ),
        ArtifactCheck(
            "calls_add_up",
            "Every trade of the window to date was taken, skipped, or is not yet entered (it enters after "
            "the month's end): taken + skipped + not yet entered = the trades of the months so far.",
            _calls_add_up,
        ),
        _manifest_check("portfolio"),
    ),
    "equity": (_manifest_check("equity"),),
    "positions": (_manifest_check("positions"),),
}
