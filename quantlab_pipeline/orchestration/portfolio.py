"""The portfolio step of policy runs (docs/portfolio.md): an account following the run's trades,
month by month, as one sequence over the window.

Month m starts from what month m-1 of the same run left (`portfolio/positions.parquet`: cash, the
positions still open and what marks them, the running figures), read through the run store as
walk-forward reads its training months — not through a partition mapping — and records that
file's sha256 among its inputs (`positions@<m-1>`), so rewriting month m-1 makes month m stale.
When month m-1 is still being written (`--parallel`: another worker has it) the step waits for
it; when nobody is writing it, the step fails at once, naming the month.
"""

# No `from __future__ import annotations`: Dagster reads the `context` annotation at definition.
import datetime as dt
import time
from collections.abc import Iterator

import polars as pl
from dagster import AssetCheckResult, AssetExecutionContext, DagsterRunStatus, Output, RunsFilter

from quantlab_pipeline.core import display
from quantlab_pipeline.core.errors import QuantlabError
from quantlab_pipeline.core.portfolio import (
    TRADE_COLUMNS,
    Marks,
    PortfolioState,
    portfolio_row,
    simulate_portfolio,
    trade_marks,
)
from quantlab_pipeline.core.spec import RunSpec, date_to_ms, month_bounds
from quantlab_pipeline.orchestration.assets import checked_artifact_asset
from quantlab_pipeline.orchestration.headlines import portfolio_headline
from quantlab_pipeline.orchestration.launch import run_tags
from quantlab_pipeline.orchestration.resources import CandleStoreResource, RunStoreResource
from quantlab_pipeline.orchestration.steps import ArtifactOutput, ArtifactStep, checked_step
from quantlab_pipeline.storage.artifact_files import LoadedArtifact
from quantlab_pipeline.storage.layout import required_artifacts
from quantlab_pipeline.storage.lifecycle import month_status
from quantlab_pipeline.storage.run_dir import RunDirectory

# How long a month waits for the month before it to be written by a live writer. Months are
# claimed in order, so with `--parallel` the wait is at most one month's work (seconds to minutes).
PREVIOUS_MONTH_WAIT_S = 3600.0
# A poll reads the month's manifest (~0.1 ms); the month before usually completes within a second
# of the wait starting, so a coarse poll would be most of the wait.
POLL_S = 0.1
# A Dagster run of the month before that has not written yet: queued, or starting up.
_ON_ITS_WAY = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]

COMPANIONS = {
    "equity": "The portfolio's equity curve (`portfolio/equity.parquet`): cash, positions' worth, equity and "
    "open positions at every entry and exit and every UTC midnight of the month.",
    "positions": "What the next month's portfolio starts from (`portfolio/positions.parquet`): the calls still "
    "open or not yet entered at the month's end with the closes that mark them; the account in its metadata.",
}


# Last among the month's ready steps: it may wait for the month before (`--parallel`), and the
# summary and features need not wait with it (docs/portfolio.md, "What the launch modes do").
LAST_STEP = {"dagster/priority": "-1"}


@checked_artifact_asset(kinds={"numba", "parquet"}, companions=COMPANIONS, op_tags=LAST_STEP)
def portfolio(
    context: AssetExecutionContext,
    alerts: LoadedArtifact,
    paths: LoadedArtifact,
    trades: LoadedArtifact,
    run_store: RunStoreResource,
    candle_store: CandleStoreResource,
) -> Iterator[Output | AssetCheckResult]:
    """Window-to-date figures of an account following the run's trades (`results/portfolio.parquet`):
    equity, return, drawdown, Sharpe and Sortino, exposure, calls taken and skipped."""
    run_spec = run_store.spec(context.partition_key)
    if "portfolio" not in required_artifacts(run_spec.run_type, run_spec.to_dict()):
        context.log.info(f"run {run_spec.run_id} has no portfolio ({run_spec.run_type} run, or turned off); skipped")
        return
    params = run_spec.portfolio
    assert params is not None  # required_artifacts says so

    def compute(step: ArtifactStep) -> ArtifactOutput:
        previous = run_spec.previous_month(step.month)
        with step.untimed():
            stored = None if previous is None else _previous_positions(step, run_store, run_spec, previous)
        state = (
            PortfolioState.start(params.capital)
            if stored is None
            else PortfolioState.from_stored(stored.frame, stored.metadata)
        )
        month_trades, marks = _trades_and_marks(run_spec, alerts, paths, trades, candle_store)
        last = step.month == run_spec.months()[-1]
        until = None if last else date_to_ms(month_bounds(step.month)[1] + dt.timedelta(days=1))
        result = simulate_portfolio(state, month_trades, marks, params, until_ms=until)
        row = portfolio_row(result.figures, run_id=run_spec.run_id, month=step.month)
        figures = row.row(0, named=True)
        step.log(
            f"{result.curve.height} points; equity {display.num(figures['equity_end'])}, return "
            f"{display.pct(figures['total_return'])}, max drawdown {display.pct(figures['max_drawdown'])}, "
            f"Sharpe {display.num(figures['sharpe'])}; {figures['calls_taken']} calls taken, "
            f"{figures['calls_skipped_cash'] + figures['calls_skipped_max_positions']} skipped (window to date)"
        )
        read = (alerts, paths, trades)
        before = {} if stored is None or previous is None else {previous: stored}
        positions = result.state.positions
        companions = {
            "equity": step.output(
                result.curve, inputs=read, other_months=before, headline={"points": result.curve.height}
            ),
            "positions": step.output(
                positions,
                inputs=read,
                other_months=before,
                parquet_metadata=result.state.metadata(),
                headline={
                    "open_positions": positions.filter(pl.col("status") == "open").height,
                    "not_yet_entered": positions.filter(pl.col("status") == "pending").height,
                },
            ),
        }
        headline = portfolio_headline(figures)
        return step.output(row, inputs=read, other_months=before, headline=headline, companions=companions)

    yield from checked_step(
        context,
        run_store,
        run_spec,
        "portfolio",
        compute,
        inputs={"alerts": alerts, "paths": paths, "trades": trades},
        candle_store=candle_store,
    )


def _trades_and_marks(
    spec: RunSpec,
    alerts: LoadedArtifact,
    paths: LoadedArtifact,
    trades: LoadedArtifact,
    candle_store: CandleStoreResource,
) -> tuple[pl.DataFrame, Marks]:
    """The month's trades with their mint, and their marks from the month's candles, part by part
    (a large month is read in parts of whole mints: one part's candles in memory at a time)."""
    frame = trades.frame.join(paths.frame.select("call_id", "mint"), on="call_id", how="left").select(TRADE_COLUMNS)
    whole = len(candle_store.plan(spec, alerts.frame)) == 1
    parts, marks = [], []
    for part, read in candle_store.parts(spec, alerts.frame):
        mine = frame.filter(pl.col("call_id").is_in(part.get_column("call_id").implode()))
        entry = mine.get_column("entry_ts_ms").to_numpy()
        exit_ = mine.get_column("exit_ts_ms").to_numpy()
        found = trade_marks(read.candles, mine.get_column("mint"), entry, exit_, spec.interval_ms)
        marks.append(found if whole else found.compact())  # a part's own rows: its candles can go
        parts.append(mine)
        del read, found  # free this part before the next one is read
    return pl.concat(parts), Marks.concat(marks)  # `parts` yields at least one part


def _previous_positions(step: ArtifactStep, run_store: RunStoreResource, spec: RunSpec, month: str) -> LoadedArtifact:
    """Month `month`'s positions, once it is completed: waited for while a live writer (or a queued
    or starting Dagster run) has it, at most `PREVIOUS_MONTH_WAIT_S`; one line naming it otherwise."""
    run_dir = run_store.directory(month, spec.run_id)
    started = time.monotonic()
    deadline = started + PREVIOUS_MONTH_WAIT_S
    waiting = False
    while True:
        status = month_status(run_dir)
        if status.state == "completed":
            if waiting:  # not counted in the step's time (timing.portfolio_ms)
                step.log(
                    f"{month} completed after {time.monotonic() - started:.1f} s of waiting; its positions are read"
                )
            return run_dir.read_artifact("positions")
        if status.state != "running" and not _run_on_its_way(step.context, run_dir, spec, month):
            detail = f" ({status.detail})" if status.detail else ""
            raise QuantlabError(
                f"portfolio: month {month} of run {spec.run_id} is {status.state}{detail}; this month starts "
                f"from its portfolio: finish it with `quantlab runs resume {spec.run_id}`"
            )
        if time.monotonic() > deadline:
            raise QuantlabError(
                f"portfolio: month {month} of run {spec.run_id} is still being written after "
                f"{PREVIOUS_MONTH_WAIT_S:.0f} s; this month starts from its portfolio: finish the run with "
                f"`quantlab runs resume {spec.run_id}`"
            )
        if not waiting:
            step.log(f"waiting for {month} ({status.state}): this month's portfolio starts from its positions")
            waiting = True
        time.sleep(POLL_S)


def _run_on_its_way(context: AssetExecutionContext, run_dir: RunDirectory, spec: RunSpec, month: str) -> bool:
    """Whether a Dagster run of `month` that has not written into its directory yet is queued or
    starting: not the one its directory records as the last writer (that one is dead)."""
    last_writer = ((run_dir.manifest() or {}).get("writer") or {}).get("dagster_run_id")
    tags = {k: v for k, v in run_tags(spec, month).items() if k in ("quantlab/run_id", "quantlab/month")}
    runs = context.instance.get_runs(RunsFilter(tags=tags, statuses=_ON_ITS_WAY))
    return any(run.run_id != last_writer for run in runs)


PORTFOLIO_ASSETS = [portfolio]
