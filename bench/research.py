"""The research figures of docs/performance.md "Performance": what `features` adds to a path-only backtest of the
reference month, and what `--walk-forward` adds to a three-month optimization.

Both are ratios of real `quantlab backtest` subprocesses (as in `endtoend`), the runs with and
without the feature interleaved so load on the shared machine hits both alike.
"""

from __future__ import annotations

import time
from pathlib import Path

from dataset import MONTH
from endtoend import _backtest_argv, _run_dir, _step_times, backtest_child, dagster_home
from measure import summarize
from rich.console import Console
from rich.table import Table

WALK_FORWARD_MONTHS = ("2024-01", "2024-02", "2024-03")
WALK_FORWARD_SCALE = 0.25  # alerts per month relative to the reference month: three sweeps stay short
FEATURES_TARGET = 0.25  # features add at most 25 % to a path-only backtest of the reference month
WALK_FORWARD_TARGET = 1.15  # "about" three frontier months: within 15 %


def _run(argv: list[str], months: tuple[str, ...], work_dir: Path, numba_cache: Path) -> dict:
    """One `quantlab` run with its own Dagster home: its wall time and each step's summed compute."""
    with dagster_home(work_dir, numba_cache) as (scratch, env):
        runs_dir = scratch / "runs"
        child = backtest_child([*argv, "--runs-dir", str(runs_dir)], scratch, env)
        compute: dict[str, float] = {}
        for month in months:
            for step, ms in _step_times(_run_dir(runs_dir, month))[0].items():
                compute[step] = compute.get(step, 0.0) + ms / 1000
        return {"wall_s": child.wall_s, "compute_s": compute}


def _compare(variants: dict[str, list[str]], months: tuple[str, ...], repeat: int, **run_args) -> dict:
    """Each variant `repeat` times, interleaved; medians of wall time and of each step's compute."""
    samples: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, argv in variants.items():
            samples[name].append(_run(argv, months, **run_args))
    out = {}
    for name, runs in samples.items():
        steps = sorted({s for r in runs for s in r["compute_s"]})
        out[name] = {
            "wall_s": summarize([r["wall_s"] for r in runs], "s"),
            "compute_s": {s: summarize([r["compute_s"].get(s, 0.0) for r in runs], "s") for s in steps},
        }
    return out


def features_overhead(db: Path, *, repeat: int, numba_cache: Path, work_dir: Path) -> dict:
    """`quantlab backtest path-only` of the month with features (the default) and `--no-features`."""
    argv = _backtest_argv("path-only", db, None)
    runs = _compare(
        {"with_features": argv, "without_features": [*argv, "--no-features"]},
        (MONTH,),
        repeat,
        work_dir=work_dir,
        numba_cache=numba_cache,
    )
    with_s = runs["with_features"]["wall_s"]["median"]
    without_s = runs["without_features"]["wall_s"]["median"]
    step_s = runs["with_features"]["compute_s"]["features"]["median"]
    # the wall-time ratio carries the shared machine's noise; the step's own share does not
    return {**runs, "overhead": with_s / without_s - 1, "step_share": step_s / without_s, "target": FEATURES_TARGET}


def walk_forward_cost(db: Path, *, repeat: int, numba_cache: Path, work_dir: Path) -> dict:
    """`quantlab backtest optimize` over three months: plain, `--walk-forward` (K = 1) and
    `--train-months 2`; the walk-forward ratio is its wall time over the plain optimization's."""
    # the months one after the other, as walk-forward runs them: the same work
    argv = [*_backtest_argv("optimize", db, None, WALK_FORWARD_MONTHS), "--parallel", "1"]
    started = time.perf_counter()
    runs = _compare(
        {
            "optimize": argv,
            "walk_forward": [*argv, "--walk-forward"],
            "walk_forward_k2": [*argv, "--walk-forward", "--train-months", "2"],
        },
        WALK_FORWARD_MONTHS,
        repeat,
        work_dir=work_dir,
        numba_cache=numba_cache,
    )
    plain = runs["optimize"]["wall_s"]["median"]
    return {
        **runs,
        "ratio": runs["walk_forward"]["wall_s"]["median"] / plain,
        "ratio_k2": runs["walk_forward_k2"]["wall_s"]["median"] / plain,
        "target": WALK_FORWARD_TARGET,
        "elapsed_s": time.perf_counter() - started,
    }


def render(research: dict, console: Console) -> None:
    table = Table(title="Research figures (medians)", title_justify="left")
    for name in ("figure", "value", "target"):
        table.add_column(name)
    for row in rows(research):
        table.add_row(*row)
    console.print(table)


def rows(research: dict) -> list[tuple[str, str, str]]:
    """(figure, value, target) rows of the research table."""
    out = []
    f = research.get("features")
    if f:
        with_s, without_s = (f[k]["wall_s"]["median"] for k in ("with_features", "without_features"))
        step = f["with_features"]["compute_s"].get("features", {}).get("median", 0.0)
        ok = "✓" if f["overhead"] <= f["target"] else "✗"
        out.append(
            (
                "features on a path-only backtest (s)",
                f"{with_s:.2f} vs {without_s:.2f} --no-features = {100 * f['overhead']:+.0f} %; "
                f"the step {step:.2f} s = {100 * f['step_share']:.1f} %",
                f"≤ +{100 * f['target']:.0f} % {ok}",
            )
        )
    w = research.get("walk_forward")
    if w:
        plain, wf, k2 = (w[k]["wall_s"]["median"] for k in ("optimize", "walk_forward", "walk_forward_k2"))
        frontier = w["optimize"]["compute_s"].get("frontier", {}).get("median", 0.0)
        ok = "✓" if w["ratio"] <= w["target"] else "✗"
        out.append(
            (
                "optimize 3 months: plain / --walk-forward / K=2 (s)",
                f"{plain:.1f} / {wf:.1f} (×{w['ratio']:.2f}) / {k2:.1f} (×{w['ratio_k2']:.2f}); frontiers {frontier:.1f}",
                f"≈ ×1 (≤ ×{w['target']:.2f}) {ok}",
            )
        )
    return out
