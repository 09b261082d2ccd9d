"""The portfolio step in the pipeline (docs/portfolio.md): months chain through the run store, the
last month's row is one simulation of the window's trades, a month waits for or refuses the month
before it, and a rewritten month makes the next one stale."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
import weakref

import polars as pl
import pytest

from quantlab_pipeline.cli.backtest import _naming_flags
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.portfolio import PortfolioState, simulate_portfolio, trade_marks
from quantlab_pipeline.core.spec import RunSpec
from quantlab_pipeline.core.spec_builder import SpecRequest
from quantlab_pipeline.orchestration import portfolio as portfolio_step
from quantlab_pipeline.orchestration.launch import create_run
from quantlab_pipeline.orchestration.month_runner import MonthPlan, run_months
from quantlab_pipeline.orchestration.month_runs import materialize_month
from quantlab_pipeline.orchestration.steps import progress_logger
from quantlab_pipeline.sources.candles import CandleBuffers, read_candles
from quantlab_pipeline.storage.layout import required_artifacts
from quantlab_pipeline.storage.lifecycle import month_status, steps_to_finish
from quantlab_pipeline.storage.paths import ProjectPaths
from quantlab_pipeline.storage.run_creation import create_run_spec
from quantlab_pipeline.storage.run_dir import RunDirectory
from quantlab_pipeline_tests.helpers import run_cli

MONTHS = ("2024-01", "2024-02")
POLICY = {"kind": "fixed_stop", "stop_loss_bps": 500}
FEB_MS = 1_706_745_600_000  # 2024-02-01 00:00 UTC


def policy_spec(sample_db, **extra) -> RunSpec:
    request = SpecRequest("policy", str(sample_db), "2024-01-01", "2024-02-29", policy_id="p", policy=POLICY, **extra)
    return create_run_spec(request)


def one_pass(runs_dir, spec: RunSpec, months=MONTHS):
    """One simulation over the trades of every month (each with its mint), from the capital, with
    the candles read from the source over the whole span."""
    frames = []
    for month in months:
        rd = RunDirectory(runs_dir, month, spec.run_id)
        mints = rd.read_artifact("paths").frame.select("call_id", "mint")
        frames.append(rd.read_artifact("trades").frame.join(mints, on="call_id"))
    trades = pl.concat(frames)
    candles = read_candles(
        spec.source.candles_source,
        mints=trades.get_column("mint").unique().to_list(),
        interval=spec.interval,
        start_ms=int(trades.get_column("entry_ts_ms").min()),
        end_ms=int(trades.get_column("exit_ts_ms").max()) + 1,
    ).candles
    marks = trade_marks(
        candles,
        trades.get_column("mint"),
        trades.get_column("entry_ts_ms").to_numpy(),
        trades.get_column("exit_ts_ms").to_numpy(),
        spec.interval_ms,
    )
    assert spec.portfolio is not None
    return simulate_portfolio(
        PortfolioState.start(spec.portfolio.capital), trades, marks, spec.portfolio, until_ms=None
    )


def assert_last_month_is_one_pass(runs_dir, spec: RunSpec) -> None:
    dirs = [RunDirectory(runs_dir, month, spec.run_id) for month in MONTHS]
    one = one_pass(runs_dir, spec)
    row = dirs[-1].read_artifact("portfolio").frame.row(0, named=True)
    assert {k: row[k] for k in one.figures} == one.figures
    curve = pl.concat([d.read_artifact("equity").frame for d in dirs])
    assert curve.equals(one.curve)  # the months' files are the one curve, split by month
    assert dirs[-1].read_artifact("positions").frame.height == 0  # nothing is left after the last month


# -- the spec ---------------------------------------------------------------------------------


def test_policy_runs_have_a_portfolio_by_default_and_a_flag_turns_it_off(sample_db):
    spec = policy_spec(sample_db)
    assert spec.portfolio is not None and (spec.portfolio.capital, spec.portfolio.position_size) == (10_000.0, 100.0)
    assert spec.portfolio.max_positions is None
    assert {"equity", "positions", "portfolio"} <= set(required_artifacts("policy", spec.to_dict()))
    off = policy_spec(sample_db, portfolio=False)
    assert off.portfolio is None and "portfolio" not in required_artifacts("policy", off.to_dict())
    # a spec written before the portfolio existed has none, and is complete without it
    old = {k: v for k, v in spec.to_dict().items() if k != "portfolio"}
    assert RunSpec.from_dict(old).portfolio is None and "equity" not in required_artifacts("policy", old)


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        ({"capital": float("nan")}, "--capital: must be a number > 0"),
        ({"capital": 1e15}, "--capital: must be a number > 0 and at most 1e+12"),
        ({"position_size": 0.0}, "--position-size: must be a number > 0"),
        ({"position_size": 20_000.0}, "--position-size: 20000 is above capital 10000"),
        ({"position_fraction": float("inf")}, "--position-fraction: must be a fraction of equity in (0, 1]"),
        ({"position_size": 10.0, "position_fraction": 0.1}, "--position-fraction: not with position_size"),
        ({"max_positions": -2}, "--max-positions: must be a whole number from 1"),
        ({"portfolio": False, "max_positions": 3}, "--max-positions: not used when the portfolio is off"),
    ],
)
def test_bad_portfolio_numbers_are_one_line_naming_the_flag(sample_db, extra, line):
    with pytest.raises(SpecError) as raised:
        policy_spec(sample_db, **extra)
    assert str(_naming_flags(raised.value)).startswith(line)


def test_only_policy_runs_take_a_portfolio(sample_db):
    with pytest.raises(SpecError, match="capital: not used by a path-only run"):
        create_run_spec(SpecRequest("path-only", str(sample_db), "2024-01-01", "2024-01-31", capital=5.0))
    with pytest.raises(SpecError, match="portfolio: not used by a path-only run"):
        create_run_spec(SpecRequest("path-only", str(sample_db), "2024-01-01", "2024-01-31", portfolio=False))


# -- months chain -----------------------------------------------------------------------------


@pytest.fixture
def january(sample_db, runs_dir, dagster_instance):
    """A policy run over January and February with a small account, January materialized."""
    spec = policy_spec(sample_db, capital=1000.0, position_size=100.0, max_positions=5)
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    result = materialize_month(spec, "2024-01", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert result.status == "completed", result.error
    return spec


@pytest.fixture
def two_months(january, runs_dir, dagster_instance):
    """The same run, both months materialized."""
    result = materialize_month(january, "2024-02", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert result.status == "completed", result.error
    return january


def test_the_last_months_row_is_one_simulation_of_the_windows_trades(two_months, runs_dir, dagster_instance):
    spec = two_months
    january, february = (RunDirectory(runs_dir, month, spec.run_id) for month in MONTHS)
    for rd in (january, february):
        recorded = rd.manifest()["artifacts"]
        assert {"equity", "positions", "portfolio"} <= set(recorded)
        assert (rd.path / "portfolio/equity.parquet").is_file() and (rd.path / "results/portfolio.parquet").is_file()
        row = rd.read_artifact("portfolio").frame.row(0, named=True)
        assert (row["run_id"], row["month"]) == (spec.run_id, rd.month)
        times = rd.read_artifact("equity").frame.get_column("ts_ms")
        assert (times < FEB_MS).all() if rd.month == "2024-01" else (times >= FEB_MS).all()
    assert_last_month_is_one_pass(runs_dir, spec)
    # February was computed from January's positions, recorded like any other input
    for artifact in ("equity", "positions", "portfolio"):
        inputs = february.manifest()["artifacts"][artifact]["inputs"]
        assert inputs["positions@2024-01"] == january.manifest()["artifacts"]["positions"]["sha256"]
        assert set(inputs) == {"alerts", "paths", "trades", "positions@2024-01"}
    assert "positions@2023-12" not in january.manifest()["artifacts"]["portfolio"]["inputs"]
    # the headline the CLI's table and the UI show
    result = materialize_month(
        spec, "2024-02", paths=ProjectPaths.of(runs_dir), instance=dagster_instance, steps=["portfolio"]
    )
    headline = result.headline["portfolio"]
    row = february.read_artifact("portfolio").frame.row(0, named=True)
    assert headline["equity_end"] == round(row["equity_end"], 2)
    assert headline["max_drawdown_pct"] == round(100 * row["max_drawdown"], 1)
    assert {"total_return_pct", "sharpe", "sortino", "exposure_pct", "calls_taken"} <= set(headline)


def test_rewriting_the_month_before_makes_a_month_stale_until_it_is_recomputed(two_months, runs_dir, dagster_instance):
    spec = two_months
    january, february = (RunDirectory(runs_dir, month, spec.run_id) for month in MONTHS)
    before = february.read_artifact("portfolio").frame.row(0, named=True)
    # January's state with 1 more in cash: other bytes, so February no longer follows from it
    stored = january.read_artifact("positions")
    account = PortfolioState.from_stored(stored.frame, stored.metadata).account
    richer = PortfolioState(dataclasses.replace(account, cash=account.cash + 1.0), stored.frame)
    inputs = january.manifest()["artifacts"]["positions"]["inputs"]
    january.write_artifact(
        "positions",
        stored.frame,
        spec,
        inputs=inputs,
        dagster_run_id=None,
        elapsed_ms=0,
        parquet_metadata=richer.metadata(),
    )
    assert month_status(january).state == "completed"
    status = month_status(february)
    assert status.state == "stale" and "2024-01" in status.detail
    assert steps_to_finish(february) == ("equity", "portfolio", "positions")
    result = materialize_month(
        spec, "2024-02", paths=ProjectPaths.of(runs_dir), instance=dagster_instance, steps=steps_to_finish(february)
    )
    assert result.status == "completed", result.error
    after = february.read_artifact("portfolio").frame.row(0, named=True)
    assert after["equity_end"] == pytest.approx(before["equity_end"] + 1.0)


def test_a_month_whose_month_before_is_missing_fails_at_once_naming_it(sample_db, runs_dir, dagster_instance):
    spec = policy_spec(sample_db)
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    started = time.monotonic()
    result = materialize_month(spec, "2024-02", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert result.status == "failed" and time.monotonic() - started < 60
    assert result.error.startswith("portfolio: month 2024-01 of run")
    assert "is missing" in result.error and f"quantlab runs resume {spec.run_id}" in result.error
    assert "\n" not in result.error


class _Waiting(logging.Handler):
    """Notices a step's "waiting for" progress line (`steps.progress_logger`)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("waiting for"):
            self.seen.set()


def test_a_month_waits_while_a_live_writer_finishes_the_month_before(january, runs_dir, dagster_instance, monkeypatch):
    """January reopened by this (live) process: February's portfolio waits, and goes on once
    January is completed again."""
    spec = january
    first = RunDirectory(runs_dir, "2024-01", spec.run_id)
    summary = first.read_artifact("summary")
    summary_inputs = first.manifest()["artifacts"]["summary"]["inputs"]
    first.begin(spec)
    assert month_status(first).state == "running"
    waiting = _Waiting()

    def finish_january() -> None:
        assert waiting.seen.wait(timeout=300)
        time.sleep(3.0)  # February polls a while
        first.write_artifact("summary", summary.frame, spec, inputs=summary_inputs, dagster_run_id=None, elapsed_ms=0)

    monkeypatch.setattr(portfolio_step, "PREVIOUS_MONTH_WAIT_S", 300.0)  # a failure, not a hang
    level = progress_logger.level
    progress_logger.addHandler(waiting)
    progress_logger.setLevel(logging.INFO)
    finisher = threading.Thread(target=finish_january)
    finisher.start()
    try:
        result = materialize_month(spec, "2024-02", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    finally:
        progress_logger.removeHandler(waiting)
        progress_logger.setLevel(level)
        finisher.join()
    assert result.status == "completed", result.error
    log = (RunDirectory(runs_dir, "2024-02", spec.run_id).path / "logs/stdout.txt").read_text()
    assert "waiting for 2024-01 (running)" in log and "2024-01 completed after" in log
    assert log.index("checks: summary_matches_trades") < log.index("waiting for 2024-01")  # not held up
    timing = RunDirectory(runs_dir, "2024-02", spec.run_id).manifest()["timing"]
    assert timing["portfolio_ms"] < 2500  # the 3 s of waiting are not the step's time
    assert_last_month_is_one_pass(runs_dir, spec)


def test_the_wait_is_bounded(january, runs_dir, dagster_instance, monkeypatch):
    spec = january
    RunDirectory(runs_dir, "2024-01", spec.run_id).begin(spec)  # live, and never finished
    monkeypatch.setattr(portfolio_step, "PREVIOUS_MONTH_WAIT_S", 1.0)
    result = materialize_month(spec, "2024-02", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert result.status == "failed"
    assert "month 2024-01" in result.error and "still being written after 1 s" in result.error


def test_a_policy_month_without_portfolio_writes_none(sample_db, runs_dir, dagster_instance):
    spec = policy_spec(sample_db, portfolio=False)
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    result = materialize_month(spec, "2024-02", paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    assert result.status == "completed", result.error
    rd = RunDirectory(runs_dir, "2024-02", spec.run_id)
    assert not ({"equity", "positions", "portfolio"} & set(rd.manifest()["artifacts"]))
    assert not (rd.path / "portfolio").exists()


# -- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_backtest_policy_with_an_account_over_two_months(tmp_path, sample_db):
    (tmp_path / "data").mkdir()
    shutil.copy(sample_db, tmp_path / "data" / "alerts.duckdb")
    args = [
        "backtest",
        "policy",
        "--calls-from-duckdb",
        "data/alerts.duckdb",
        "--policy-id",
        "p",
        "--policy",
        '{"kind":"fixed_stop","stop_loss_bps":500}',
        "--from",
        "2024-01-01",
        "--to",
        "2024-02-29",
    ]
    refused = run_cli([*args, "--position-size", "100", "--position-fraction", "0.1"], cwd=tmp_path)
    assert refused.returncode == 2 and not (tmp_path / "runs").exists()
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--position-fraction: not with position_size" in lines[0], refused.stderr

    # two workers: February's portfolio waits for January's
    account = ["--capital", "1000", "--position-size", "100", "--max-positions", "5", "--parallel", "2"]
    proc = run_cli([*args, *account], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for title in ("Equity end", "Total return", "Max drawdown", "Sharpe"):
        assert title in proc.stdout
    run_id = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("run_id"))
    runs_dir = tmp_path / "runs"
    spec = RunSpec.from_dict(RunDirectory.read_manifest(runs_dir / "2024-01" / f"run_id={run_id}")["spec"])
    assert spec.portfolio is not None and (spec.portfolio.capital, spec.portfolio.max_positions) == (1000.0, 5)
    for month in MONTHS:
        rd = runs_dir / month / f"run_id={run_id}"
        assert (rd / "_SUCCESS").is_file()
        assert (rd / "portfolio" / "equity.parquet").is_file() and (rd / "results" / "portfolio.parquet").is_file()
    assert_last_month_is_one_pass(runs_dir, spec)


def test_months_run_one_after_another_read_into_the_month_befores_candle_memory(
    sample_db, runs_dir, dagster_instance, monkeypatch
):
    """The month runner keeps the candle columns from one month to the next (docs/performance.md):
    by February's read nothing holds January's candles any more, so February writes into them."""
    monkeypatch.setenv("QUANTLAB_CANDLE_CACHE_GB", "0")  # both months read from DuckDB
    reads: list[tuple[weakref.ref, weakref.ref, int]] = []  # weak: holding them would stop the reuse
    columns = CandleBuffers.columns

    def recorded(self: CandleBuffers, n: int) -> list:
        out = columns(self, n)
        reads.append((weakref.ref(self), weakref.ref(out[0].base), n))
        return out

    monkeypatch.setattr(CandleBuffers, "columns", recorded)
    spec = policy_spec(sample_db)
    create_run(spec, paths=ProjectPaths.of(runs_dir), instance=dagster_instance)
    outcome = run_months(
        spec,
        [MonthPlan(month) for month in MONTHS],
        paths=ProjectPaths.of(runs_dir),
        instance=dagster_instance,
        on_progress=lambda record: None,
    )
    assert [r.status for r in outcome.results] == ["completed", "completed"], [r.error for r in outcome.results]
    (january, jan_memory, jan_rows), (february, feb_memory, feb_rows) = reads
    assert 0 < feb_rows <= jan_rows + jan_rows // 8
    # CPython hands out one weak reference per live object: the same one means the same object
    assert february is january and feb_memory is jan_memory
