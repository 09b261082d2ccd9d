"""Confidence (docs/confidence.md): the daily matrix, PBO by CSCV on hand-made matrices with known
answers, SPA and the bootstrap intervals against `arch` called directly, and the sentence."""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from quantlab_pipeline.core.confidence import (
    DAILY_SCHEMA,
    OVERFITTING_SCHEMA,
    benchmark_phrase,
    block_bounds,
    cscv,
    daily_matrix,
    daily_matrix_of_trades,
    daily_values,
    overfitting,
    overfitting_sentence,
    return_intervals,
    spa,
)
from quantlab_pipeline.core.policy_spec import parse_policy, policy_id_of
from quantlab_pipeline.core.summary import summarize_trades
from quantlab_pipeline.core.sweep_spec import hold_to_horizon

arch_bootstrap = pytest.importorskip("arch.bootstrap", reason="arch is a dev dependency: pip install -e '.[dev]'")

DAY = 86_400_000
D0 = dt.date(2024, 1, 1)
EPOCH_D0 = (D0 - dt.date(1970, 1, 1)).days


def frame(rows: dict[str, list[float]]) -> pl.DataFrame:
    """A daily matrix with one trade per (policy, day) and the given daily means, days from D0."""
    ids = list(rows)
    values = np.array([rows[i] for i in ids], dtype=np.float64)
    days = EPOCH_D0 + np.arange(values.shape[1])
    return daily_matrix(ids, days, values, np.ones_like(values, dtype=np.int64), run_id="r")


# -- the daily matrix -------------------------------------------------------------------------


def test_daily_matrix_from_sums_and_counts_has_no_row_without_trades():
    sums = np.array([[300.0, 0.0, -50.0], [10.0, 20.0, 30.0]])
    counts = np.array([[3, 0, 2], [1, 1, 1]])
    out = daily_matrix(["zz", "aa"], EPOCH_D0 + np.arange(3), sums, counts, run_id="r")
    assert out.schema == DAILY_SCHEMA
    assert out.rows() == [
        ("r", "aa", D0, 1, 10.0),
        ("r", "aa", D0 + dt.timedelta(1), 1, 20.0),
        ("r", "aa", D0 + dt.timedelta(2), 1, 30.0),
        ("r", "zz", D0, 3, 100.0),  # 300 / 3
        ("r", "zz", D0 + dt.timedelta(2), 2, -25.0),  # day 1: no trade, no row (not a fake 0)
    ]


def test_daily_matrix_of_trades_cuts_days_at_utc_midnight_and_equals_the_sums_path():
    t0 = EPOCH_D0 * DAY
    trades = pl.DataFrame(
        {
            "policy_id": ["p", "p", "p", "p", "q"],
            "entry_ts_ms": [t0, t0 + DAY - 1, t0 + DAY, t0 + 3 * DAY + 5, t0 + 5],
            "realized_return_bps": [100.0, -40.0, 7.0, 1.5, -3.0],
        }
    )
    out = daily_matrix_of_trades(trades, run_id="r")
    assert out.rows() == [
        ("r", "p", D0, 2, 30.0),  # 23:59:59.999 is still the first day: (100 - 40) / 2
        ("r", "p", D0 + dt.timedelta(1), 1, 7.0),
        ("r", "p", D0 + dt.timedelta(3), 1, 1.5),
        ("r", "q", D0, 1, -3.0),
    ]
    sums = np.array([[60.0, 7.0, 0.0, 1.5], [-3.0, 0.0, 0.0, 0.0]])
    counts = np.array([[2, 1, 0, 1], [1, 0, 0, 0]])
    assert daily_matrix(["p", "q"], EPOCH_D0 + np.arange(4), sums, counts, run_id="r").equals(out)


def test_daily_values_fill_a_day_without_trades_with_zero_over_the_matrix_days():
    matrix = pl.concat([frame({"a": [1.0, 2.0, 3.0]}), frame({"b": [5.0]})])
    values = daily_values(matrix, ["b", "a", "missing"])
    assert values.tolist() == [[5.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]


# -- PBO by CSCV ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "days, blocks, bounds",
    [(10, 4, [0, 3, 6, 8, 10]), (8, 8, list(range(9))), (31, 8, [0, 4, 8, 12, 16, 20, 24, 28, 31]), (5, 2, [0, 3, 5])],
)
def test_blocks_are_contiguous_and_the_first_d_mod_s_are_one_day_longer(days, blocks, bounds):
    assert block_bounds(days, blocks).tolist() == bounds


def test_a_dominant_policy_is_never_overfit():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 100, (9, 40))
    values = np.vstack([noise, noise.max(axis=0) + 1.0])  # best every single day
    result = cscv(values, 8)
    assert (result.splits, result.pbo) == (70, 0.0)
    # always ranked N = 10 of 10 out of sample: ω = 10/11, λ = ln 10
    assert result.logits == pytest.approx(np.full(70, math.log(10)))
    assert result.logit_median == pytest.approx(math.log(10))


def test_independent_noise_policies_give_pbo_near_one_half():
    # With i.i.d. policies the out-of-sample days are independent of the in-sample choice, so
    # n*'s rank is uniform on 1..N: P(rank <= (N + 1)/2) = 5/10 exactly for N = 10. One matrix's
    # PBO varies a lot (its 70 splits share days: standard deviation 0.23 here), so the test
    # averages 200 matrices: standard error 0.016 (at most 0.5/sqrt(200) = 0.035 for any variable
    # in [0, 1]), and 0.06 is ~4 of them. The generator is seeded: the test is deterministic.
    rng = np.random.default_rng(7)
    pbos = [cscv(rng.normal(0, 100, (10, 32)), 8).pbo for _ in range(200)]
    assert np.mean(pbos) == pytest.approx(0.5, abs=0.06)


def test_two_blocks_by_hand_with_in_sample_ties_to_the_smallest_policy_id():
    # S = 2 on days (d0 | d1). Split 1: in-sample d0: a 1, b 3, c 3 -> tie, b (smaller id); out of
    # sample d1: a 5, b 5, c 2 -> b is above c and tied with a: rank 1 + (2 + 1)/2 = 2.5, ω = 2.5/4.
    # Split 2: in-sample d1: a 5, b 5 -> a; out of sample d0: a 1 is the worst: rank 1, ω = 1/4.
    matrix = frame({"c": [3.0, 2.0], "b": [3.0, 5.0], "a": [1.0, 5.0]})
    result = cscv(daily_values(matrix, ["a", "b", "c"]), 2)
    assert result.logits == pytest.approx([math.log(0.625 / 0.375), math.log(0.25 / 0.75)])
    assert (result.splits, result.pbo) == (2, 0.5)
    assert result.logit_median == pytest.approx((math.log(5 / 3) + math.log(1 / 3)) / 2)
    row = overfitting(matrix, run_id="r", policy_ids=["c", "b", "a"], benchmark_policy_id="a", cscv_blocks=2)
    assert row.schema == OVERFITTING_SCHEMA
    assert row.select("n_policies", "n_days", "cscv_blocks", "cscv_splits", "pbo").row(0) == (3, 2, 2, 2, 0.5)
    assert row.item(0, "spa_pvalue") is None  # 2 days: too few for SPA


def test_four_blocks_of_five_days_by_hand_with_out_of_sample_ties_averaged():
    # D = 5, S = 4: blocks {d0, d1}, {d2}, {d3}, {d4}. Block sums a 2, 4, 1, 5; b 2, 1, 4, 1; c 0, 3, 3, 0.
    matrix = frame({"a": [2.0, 0.0, 4.0, 1.0, 5.0], "b": [1.0, 1.0, 1.0, 4.0, 1.0], "c": [0.0, 0.0, 3.0, 3.0, 0.0]})
    result = cscv(daily_values(matrix, ["a", "b", "c"]), 4)
    # in-sample blocks: means (a, b, c) in / out -> n*, its rank out of sample
    #   (0,1): 2, 1, 1      / 3, 2.5, 1.5    -> a, rank 3       ω 3/4
    #   (0,2): 1, 2, 1      / 4.5, 1, 1.5    -> b, rank 1       ω 1/4
    #   (0,3): 7/3, 1, 0    / 2.5, 2.5, 3    -> a, tied with b: rank 0 + (2 + 1)/2 = 1.5, ω 3/8
    #   (1,2): 2.5, 2.5, 3  / 7/3, 1, 0      -> c, rank 1       ω 1/4
    #   (1,3): 4.5, 1, 1.5  / 1, 2, 1        -> a, tied with c: rank 1.5, ω 3/8
    #   (2,3): 3, 2.5, 1.5  / 2, 1, 1        -> a, rank 3       ω 3/4
    third, quarter, eighth = math.log(3), math.log(1 / 3), math.log(0.6)
    assert result.logits == pytest.approx([third, quarter, eighth, quarter, eighth, third])
    assert (result.n_days, result.splits) == (5, 6)
    assert result.pbo == pytest.approx(4 / 6)
    assert result.logit_median == pytest.approx(eighth)  # sorted: 1/3, 1/3, .6, .6, 3, 3 (as ln)


def test_identical_policies_tie_exactly_at_any_size():
    # 1,001 copies of one noisy row: every split ties them all, n* is the first, its rank the
    # middle (N + 1)/2: ω = 1/2, λ = 0, counted (λ <= 0). Any rounding difference between rows
    # would break the tie.
    row = np.random.default_rng(3).normal(0, 1000, 31)
    result = cscv(np.tile(row, (1001, 1)), 8)
    assert (result.pbo, result.logit_median) == (1.0, 0.0)
    assert np.all(result.logits == 0.0)


def test_cscv_does_not_apply_to_too_few_days_or_one_policy():
    assert cscv(np.zeros((5, 7)), 8).pbo is None and cscv(np.zeros((5, 7)), 8).splits == 0
    assert cscv(np.zeros((1, 31)), 8).pbo is None
    with pytest.raises(ValueError, match="even"):
        cscv(np.zeros((5, 31)), 3)


def test_sixteen_blocks_over_many_policies_stay_fast_enough():
    values = np.random.default_rng(0).normal(0, 100, (500, 31))
    result = cscv(values, 16)
    assert result.splits == 12_870 and 0.0 <= result.pbo <= 1.0


# -- SPA --------------------------------------------------------------------------------------


def arch_spa(benchmark: np.ndarray, models: np.ndarray):
    test = arch_bootstrap.SPA(-benchmark, -models.T, reps=1000, bootstrap="stationary", seed=0)
    test.compute()
    return test.pvalues


def test_spa_equals_arch_called_directly_on_the_same_losses():
    rng = np.random.default_rng(2)
    days = 31
    grid = {f"p{i:02d}": rng.normal(-20, 150, days).tolist() for i in range(12)}
    grid["p05"] = (np.array(grid["p05"]) + 120).tolist()  # one clearly better policy
    bench = rng.normal(-40, 150, days).tolist()
    matrix = pl.concat([frame(grid), frame({"bench": bench})])
    row = overfitting(matrix, run_id="r", policy_ids=list(grid), benchmark_policy_id="bench", cscv_blocks=8)
    expected = arch_spa(np.array(bench), np.array([grid[k] for k in sorted(grid)]))
    got = row.select("spa_pvalue_lower", "spa_pvalue", "spa_pvalue_upper").row(0)
    assert got == (expected["lower"], expected["consistent"], expected["upper"])
    assert got[1] < 0.05  # p05 beats the benchmark
    assert row.item(0, "n_policies") == 12  # the benchmark, outside the grid, is not a swept policy


@pytest.mark.parametrize("seed", range(12))
def test_the_numpy_spa_equals_arch_bit_for_bit_at_any_shape(seed):
    # core.spa replays arch's SPA (its draws, recentring and variance) without importing arch
    rng = np.random.default_rng(seed)
    days, policies = int(rng.integers(3, 70)), int(rng.integers(1, 120))
    bench = rng.normal(-20, 150, days)
    models = rng.normal(-20, 150, (policies, days)) + rng.normal(0, 60, (policies, 1))
    got = spa(bench, models)
    assert got is not None and (got.lower, got.consistent, got.upper) == tuple(arch_spa(bench, models))


def test_spa_reads_a_day_without_trades_as_zero_and_needs_three_days():
    models = np.array([[10.0, 0.0, -5.0, 3.0]])
    bench = np.array([1.0, 2.0, 0.0, -1.0])
    got = spa(bench, models)
    expected = arch_spa(bench, models)
    assert got is not None and (got.lower, got.consistent, got.upper) == tuple(expected)
    assert spa(bench[:2], models[:, :2]) is None


# -- bootstrap intervals ----------------------------------------------------------------------


def arch_intervals(x: np.ndarray) -> tuple[float, ...]:
    ci = arch_bootstrap.IIDBootstrap(x, seed=0).conf_int(
        lambda v: np.array([np.median(v), v.mean()]), reps=1000, method="percentile"
    )
    return (ci[0, 0], ci[1, 0], ci[0, 1], ci[1, 1])


def assert_arch_intervals(got: tuple, expected: tuple) -> None:
    """The medians' bounds exactly; the means' up to the rounding of a sum (docs/confidence.md)."""
    assert got[:2] == expected[:2]
    assert got[2:] == pytest.approx(expected[2:], rel=1e-13, abs=1e-9)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 9, 101, 2_000, 19_188])
def test_intervals_equal_arch(n):
    rng = np.random.default_rng(n)
    x = np.round(rng.standard_t(3, n) * 800 - 100, 1)  # heavy tails, many ties, like returns in bps
    assert_arch_intervals(return_intervals([x]).row(0), arch_intervals(x))


def test_intervals_per_statistic_equal_a_fresh_arch_bootstrap_each():
    x = np.random.default_rng(4).normal(0, 500, 300)
    got = return_intervals([x]).row(0)
    for statistic, (low, high) in ((np.median, got[:2]), (np.mean, got[2:])):
        ci = arch_bootstrap.IIDBootstrap(x, seed=0).conf_int(statistic, reps=1000, method="percentile")
        assert (low, high) == pytest.approx((ci[0, 0], ci[1, 0]), rel=1e-13)


def test_samples_of_one_length_share_draws_and_empty_ones_are_null():
    rng = np.random.default_rng(9)
    a, b, c = rng.normal(0, 100, 50), rng.normal(5, 100, 50), rng.normal(0, 100, 70)
    out = return_intervals([a, np.array([]), b, c])
    assert out.row(1) == (None, None, None, None)
    for i, x in ((0, a), (2, b), (3, c)):
        assert_arch_intervals(out.row(i), arch_intervals(x))
    # more resamples than one block of draws holds: the blocks follow one another in arch's order
    long = np.round(rng.normal(0, 300, 9_000), 0)
    assert_arch_intervals(return_intervals([long, long[::-1]]).row(1), arch_intervals(long[::-1]))


def test_summary_carries_the_intervals_of_its_trades():
    returns = [-500.0, 100.0, 300.0, 1000.0, 20.0]
    trades = pl.DataFrame({"realized_return_bps": returns, "stop_out": [False] * 5}).with_columns(
        pl.lit(-1.0).alias("max_adverse_excursion_bps"),
        pl.lit(1).alias("time_exposed_ms"),
        pl.lit(None, dtype=pl.Float64).alias("tail_capture"),
    )
    row = summarize_trades(trades, run_id="r", month="2024-01", policy_id="p", calls_processed=5, calls_excluded=0)
    names = ["median_return_bps_ci_low", "median_return_bps_ci_high", "avg_return_bps_ci_low", "avg_return_bps_ci_high"]
    assert row.select(names).row(0) == arch_intervals(np.array(returns))


# -- in words ---------------------------------------------------------------------------------


def sentence_row(**kw):
    row = {"n_policies": 96, "n_days": 31, "cscv_blocks": 8, "cscv_splits": 70, "pbo": 0.62, "spa_pvalue": 0.31}
    return {**row, **kw}


def test_the_sentence_of_the_issue_and_its_other_cases():
    hold = benchmark_phrase(hold_to_horizon(5 * DAY), 5 * DAY)
    assert overfitting_sentence(sentence_row(), benchmark=hold) == (
        "PBO 0.62: the in-sample winner lands in the bottom half out of sample in 62 % of splits; "
        "SPA p = 0.31 against holding to the horizon: no policy reliably beats it"
    )
    assert overfitting_sentence(sentence_row(pbo=0.1, spa_pvalue=0.012), benchmark=hold) == (
        "PBO 0.10: the in-sample winner lands in the bottom half out of sample in only 10 % of splits; "
        "SPA against holding to the horizon: at least one policy beats it (p = 0.012)"
    )
    assert overfitting_sentence(sentence_row(pbo=1 / 12_870, spa_pvalue=0.049), benchmark="the benchmark X") == (
        "PBO 0.00: the in-sample winner lands in the bottom half out of sample in fewer than 1 % of splits; "
        "SPA against the benchmark X: at least one policy beats it (p = 0.049)"
    )
    assert overfitting_sentence(sentence_row(pbo=1.0, spa_pvalue=1.0), benchmark=hold) == (
        "PBO 1.00: the in-sample winner lands in the bottom half out of sample in 100 % of splits; "
        "SPA p = 1 against holding to the horizon: no policy reliably beats it"
    )
    assert overfitting_sentence(sentence_row(pbo=0.0, spa_pvalue=0.0), benchmark=hold) == (
        "PBO 0.00: the in-sample winner never lands in the bottom half out of sample (70 splits); "
        "SPA against holding to the horizon: at least one policy beats it (p < 0.001)"
    )
    assert overfitting_sentence(sentence_row(n_days=2, cscv_splits=0, pbo=None, spa_pvalue=None), benchmark=hold) == (
        "PBO n/a: 2 days with trades, too few for 8 CSCV blocks; "
        "SPA n/a: 2 days with trades, fewer than the 3 the test needs"
    )
    assert overfitting_sentence(sentence_row(n_days=1, cscv_splits=0, pbo=None, spa_pvalue=None), benchmark=hold) == (
        "PBO n/a: 1 day with trades, too few for 8 CSCV blocks; "
        "SPA n/a: 1 day with trades, fewer than the 3 the test needs"
    )
    assert overfitting_sentence(sentence_row(n_policies=1, pbo=None), benchmark=hold).startswith(
        "PBO n/a: a single policy, nothing was selected; SPA p = 0.31"
    )


def test_the_benchmark_is_named_holding_to_the_horizon_only_when_it_is():
    assert benchmark_phrase(parse_policy({"kind": "time_stop", "max_hold": "120h"}), 5 * DAY) == (
        "holding to the horizon"
    )
    stop = parse_policy({"kind": "fixed_stop", "stop_loss_bps": 500})
    assert benchmark_phrase(stop, 5 * DAY) == 'the benchmark {"kind":"fixed_stop","stop_loss_bps":500}'
    assert policy_id_of(hold_to_horizon(5 * DAY)) == policy_id_of(parse_policy('{"kind":"time_stop","max_hold":"5d"}'))


# -- the flags --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, line",
    [
        (["--cscv-blocks", "3.5"], "error: --cscv-blocks: expected an even integer from 2 to 16, got '3.5'"),
        (["--cscv-blocks", "7"], "error: --cscv-blocks: expected an even integer from 2 to 16, got 7"),
        (["--cscv-blocks", "0"], "error: --cscv-blocks: expected an even integer from 2 to 16, got 0"),
        (
            ["--cscv-blocks", "8", "--to", "2024-01-05"],
            "error: --cscv-blocks: 8 blocks need 8 days of a month in the window; the window has at most 5",
        ),
        (["--benchmark", '{"kind":"hold"}'], 'error: --benchmark: benchmark.kind: unknown kind "hold"'),
        (["--benchmark", "@nope.json"], "error: --benchmark: cannot read 'nope.json'"),
    ],
)
def test_optimize_flags_are_refused_in_one_line_exit_2_before_anything_is_created(tmp_path, monkeypatch, args, line):
    from click.testing import CliRunner

    from quantlab_pipeline.cli.backtest import optimize

    monkeypatch.chdir(tmp_path)
    window = ["--from", "2024-01-01", *([] if "--to" in args else ["--to", "2024-01-31"])]
    result = CliRunner().invoke(optimize, [*window, *args, "--runs-dir", str(tmp_path / "runs")])
    lines = [text for text in result.output.splitlines() if text.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(line), result.output
    assert not (tmp_path / "runs").exists()


def test_the_summary_headline_and_the_closing_table_show_the_median_interval():
    from types import SimpleNamespace

    from rich.console import Console

    from quantlab_pipeline.cli.months import headline_table
    from quantlab_pipeline.orchestration.headlines import report_link, summary_headline

    row = {
        "calls_processed": 5,
        "calls_excluded": 1,
        "trades_count": 4,
        "avg_return_bps": 12.3,
        "median_return_bps": -4.0,
        "p25_return_bps": -10.0,
        "p75_return_bps": 20.0,
        "stop_out_rate": 0.1,
        "win_rate": 0.5,
        "median_tail_capture": 0.2,
        "median_return_bps_ci_low": -30.2,
        "median_return_bps_ci_high": 15.6,
        "avg_return_bps_ci_low": -1.0,
        "avg_return_bps_ci_high": 1234.0,
    }
    headline = summary_headline(row, report_link(Path("runs"), "00000000-0000-4000-8000-000000000001"))
    assert headline["median_return_bps_ci"] == "-30 … 16"
    assert "| 12 (-1 … 1,234) | -4 (-30 … 16) |" in headline["headline"].value
    console = Console(width=200, record=True)
    result = SimpleNamespace(month="2024-01", status="completed", headline={"summary": headline})
    console.print(headline_table("policy", [result]))
    assert re.search(r"Median 95% CI\s*│\s*-30 … 16", console.export_text())
