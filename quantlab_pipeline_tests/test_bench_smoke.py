"""`bench/run.py --quick` runs end to end and reports every figure of the benchmark.

Numbers are never asserted (the machine is shared and noisy); what is checked is that each figure
exists as a median / min / max of finite samples, that ratios were derived from the figures they
relate, and that the scaling and target sections are there.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from quantlab_pipeline_tests.helpers import child_env

REPO = Path(__file__).resolve().parents[1]
POLICY_KINDS = ("fixed_stop", "trailing_stop", "time_stop", "ladder", "combo")
TARGETS = (
    "truth_candles_per_s",
    "single_policy_candles_per_s",
    "sweep_100_policies_s",
    "e2e_policy_to_bare_scan",
    "peak_rss_to_candles",
)


def _figure(node: dict, *path: str) -> dict:
    for key in path:
        assert key in node, f"missing {'.'.join(path)} (no {key!r})"
        node = node[key]
    assert set(node) >= {"median", "min", "max", "unit", "samples"}, f"{'.'.join(path)} is not a figure: {node}"
    assert node["samples"], f"{'.'.join(path)} has no samples"
    assert all(math.isfinite(v) for v in node["samples"]), f"{'.'.join(path)}: non-finite sample"
    assert node["min"] <= node["median"] <= node["max"]
    return node


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str, str]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "latest.json"
    page = tmp / "performance.md"
    page.write_text(
        "# Performance\n\nProse before.\n\n<!-- make bench: begin (old) -->\nold figures\n<!-- make bench: end -->\n\nProse after.\n"
    )
    env = child_env(("DAGSTER_", "QUANTLAB_", "NUMBA_"))
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--quick",
            "--cache-dir",
            str(tmp / "cache"),
            "--json",
            str(out),
            "--docs",
            str(page),
        ],
        cwd=REPO,
        env={**env, "NO_COLOR": "1", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout, page.read_text()


@pytest.mark.slow
def test_the_docs_page_gets_the_printed_tables_between_its_markers(quick_run):
    _, stdout, page = quick_run
    assert page.startswith("# Performance\n\nProse before.\n\n<!-- make bench: begin")
    assert page.endswith("<!-- make bench: end -->\n\nProse after.\n")
    assert "old figures" not in page and page.count("<!-- make bench: begin") == 1
    assert "quantlab benchmark" in page and "Measured " in page
    assert "quantlab benchmark" in stdout


@pytest.mark.slow
def test_quick_run_reports_every_figure(quick_run):
    results, _, _ = quick_run
    assert results["meta"]["quick"] is True and results["meta"]["repeat"] == 1
    (scale,) = results["scales"].values()
    for key in ("alerts", "paths", "mints", "candles", "candle_bytes", "window_candles"):
        assert scale["dataset"][key] > 0, key

    _figure(scale, "read_candles", "seconds")
    for key in ("seconds", "gb_per_s", "candles_per_s"):
        _figure(scale, "floor", key)
    for key in ("seconds", "candles_per_s", "fraction_of_floor"):
        _figure(scale, "truth", key)
    assert set(scale["policies"]) == set(POLICY_KINDS)
    for kind in POLICY_KINDS:
        for key in (
            "seconds",
            "candles_per_s",
            "visited_candles_per_s",
            "fraction_of_floor",
            "simulate_trades_seconds",
        ):
            _figure(scale, "policies", kind, key)
        assert 0 < scale["policies"][kind]["visited_candles"] <= scale["policies"][kind]["window_candles"]
    assert scale["sweep"]["policies"] == 100
    for key in ("seconds", "kernel_seconds", "policy_candles_per_s", "kernel_policy_candles_per_s"):
        _figure(scale, "sweep", key)
    _figure(scale, "bare_scan", "seconds")
    _figure(scale, "bare_scan", "numeric_seconds")
    assert scale["bare_scan"]["rows"] >= scale["dataset"]["candles"]  # the scan keeps bad and duplicate rows

    for run_type in ("path-only", "policy"):
        for key in (
            "wall_s",
            "first_run_s",
            "peak_rss_bytes",
            "dagster_overhead_s",
            "ratio_to_bare_scan",
            "ratio_to_numeric_scan",
            "peak_rss_to_candles",
        ):
            _figure(scale, "e2e", run_type, key)
        e2e = scale["e2e"][run_type]
        assert e2e["ratio_to_bare_scan"]["median"] == pytest.approx(
            e2e["wall_s"]["median"] / scale["bare_scan"]["seconds"]["median"]
        )
        assert e2e["peak_rss_to_candles"]["median"] == pytest.approx(
            e2e["peak_rss_bytes"]["median"] / scale["dataset"]["candle_bytes"]
        )
    assert {"alerts_compute", "alerts_write", "paths_compute", "paths_write"} <= set(
        scale["e2e"]["path-only"]["steps_s"]
    )
    assert {"trades_compute", "summary_write"} <= set(scale["e2e"]["policy"]["steps_s"])

    for state in ("cold", "warm"):
        for key in ("process_s", "import_core_s", "import_dagster_s", "jit_s", "peak_rss_bytes"):
            _figure(results, "cold_start", state, key)
    for key in ("backtest_s", "interpreter_s", "handoff_s", "run_handling_s", "server_start_s", "imports_s"):
        _figure(results, "fixed_cost", key)
    _figure(results, "fixed_cost", "new_instance_s")
    fixed = results["fixed_cost"]
    assert fixed["handoff_s"]["median"] < fixed["server_start_s"]["median"]  # the server is what is warm

    months = scale["months"]  # the largest scale measured carries the `--parallel` figure
    assert months["months"] == ["2024-01", "2024-02", "2024-03", "2024-04"]
    assert months["bare_scan"]["rows"] > scale["bare_scan"]["rows"]  # four months' candles, not one
    for parallel in (1, 2):
        figure = months[f"parallel_{parallel}"]
        _figure(figure, "wall_s")
        assert _figure(figure, "ratio_to_bare_scan")["median"] == pytest.approx(
            figure["wall_s"]["median"] / months["bare_scan"]["seconds"]["median"]
        )
    assert _figure(months, "speedup")["median"] == pytest.approx(
        months["parallel_1"]["wall_s"]["samples"][0] / months["parallel_2"]["wall_s"]["samples"][0]
    )

    portfolio = scale["portfolio"]  # the portfolio step's share of the policy run, and vectorbt's Portfolio
    assert portfolio["trades"] > 0 and 0 < portfolio["step_share"] < 1
    assert portfolio["step_share"] == pytest.approx(
        portfolio["step_seconds"] / scale["e2e"]["policy"]["wall_s"]["median"]
    )
    _figure(portfolio, "marks_seconds")
    _figure(portfolio, "simulate_seconds")
    if "skipped" in portfolio["vectorbt"]:
        assert "vectorbt" in portfolio["vectorbt"]["skipped"]
    else:
        assert portfolio["vectorbt"]["equal"], portfolio["vectorbt"]

    peer = scale["peer"]  # vectorbt is the optional `bench` extra: measured when installed
    if "skipped" in peer:
        assert "vectorbt" in peer["skipped"]
    else:
        assert peer["paths"] == scale["dataset"]["paths"]
        for kind, figure in peer["kinds"].items():
            assert figure["trades"] == peer["paths"], kind
            _figure(peer, "kinds", kind, "seconds")
            for engine in ("rust", "numba"):
                _figure(peer, "kinds", kind, "engines", engine, "seconds")
                assert figure["engines"][engine]["differing_exits"] == 0, (kind, engine)

    sweep = scale["sweep_10k"]  # the 10,000-policy row (docs/performance.md)
    assert sweep["end_to_end"]["policies"] == sweep["end_to_end"]["frontier_rows"] == 10_000
    _figure(sweep, "end_to_end", "wall_s")
    _figure(sweep, "end_to_end", "frontier_compute_s")
    ratio = _figure(sweep, "aggregation", "ratio")
    seconds, kernel = sweep["aggregation"]["seconds"]["samples"], sweep["aggregation"]["kernel_seconds"]["samples"]
    assert ratio["samples"] == pytest.approx([s / k for s, k in zip(seconds, kernel)])
    assert sweep["aggregation"]["polars_check"]["differing_values"] == 0
    if "skipped" in sweep["vectorbt"]:
        assert "vectorbt" in sweep["vectorbt"]["skipped"]
    else:
        assert sweep["vectorbt"]["differing_exits"] == 0 and sweep["vectorbt_over_ours"] > 0
    assert "quick" in scale["first_backtest"]["skipped"]  # the prebuild alone is minutes under load


@pytest.mark.slow
def test_quick_run_checks_targets_and_prints_the_table(quick_run):
    results, stdout, _ = quick_run
    checks = results["checks"]
    assert checks["reference"] is False  # the quick size is not the reference month
    for name in (*TARGETS, "months_parallel_2_to_bare_scan", "months_parallel_1_over_2"):
        assert isinstance(checks[name]["pass"], bool) and math.isfinite(checks[name]["value"])
    assert results["scaling"] == {"base_scale": None, "figures": {}}  # one scale: nothing to compare
    for title in ("quantlab benchmark", "cold start", "per-run fixed cost", "4 months", "Performance targets"):
        assert title in stdout


# -- the derived sections, on hand-made figures --------------------------------------------------


BENCH_MODULES = (
    "coldstart_child",
    "dataset",
    "endtoend",
    "kernels",
    "measure",
    "peer",
    "portfolio_peer",
    "report",
    "rusage_child",
    "year",
)


@pytest.fixture
def bench(monkeypatch):
    """Imports `bench/` modules under their own names (a script directory: they import each other
    that way), and forgets them afterwards so no other test sees these generic top-level names."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    yield importlib.import_module
    for name in BENCH_MODULES:
        sys.modules.pop(name, None)


def _fig(value: float) -> dict:
    return {"median": value, "min": value, "max": value, "unit": "s", "samples": [value]}


def _scale_with(report, scale: float, candles: int, value: float) -> dict:
    """A scale's results where every followed figure has the median `value`."""
    result: dict = {"scale": scale, "dataset": {"candles": candles}}
    for _, path, _ in report.SCALING_FIGURES:
        node = result
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = _fig(value)
    return result


def test_scaling_is_relative_to_the_reference_scale_with_growth_exponents(bench):
    report = bench("report")
    scales = {
        "0.25": _scale_with(report, 0.25, 250, 0.5),
        "1": _scale_with(report, 1.0, 1000, 2.0),
        "4": _scale_with(report, 4.0, 4000, 4.0),
    }
    growth = report.scaling(scales)
    assert growth["base_scale"] == 1.0
    rows = growth["figures"]["truth_kernel"]["by_scale"]
    # 0.25: time 0.5 / 2.0 = 0.25 for candles 250 / 1000 = 0.25 -> exponent log 0.25 / log 0.25 = 1 (linear)
    assert rows["0.25"]["ratio"] == pytest.approx(0.25)
    assert rows["0.25"]["candles_ratio"] == pytest.approx(0.25)
    assert rows["0.25"]["exponent"] == pytest.approx(1.0)
    # the base itself: ratio 1, no exponent
    assert rows["1"]["ratio"] == 1.0 and rows["1"]["exponent"] is None
    # 4: time 4.0 / 2.0 = 2 for candles ×4 -> exponent log 2 / log 4 = 0.5 (a fixed cost amortised)
    assert rows["4"]["ratio"] == pytest.approx(2.0)
    assert rows["4"]["exponent"] == pytest.approx(0.5)
    assert growth["figures"]["e2e_policy_peak_rss"]["kind"] == "memory"


def test_scaling_without_the_reference_uses_the_smallest_scale(bench):
    report = bench("report")
    growth = report.scaling({"0.5": _scale_with(report, 0.5, 500, 1.0), "2": _scale_with(report, 2.0, 2000, 8.0)})
    assert growth["base_scale"] == 0.5
    # time 8 / 1 = 8 for candles ×4 -> exponent log 8 / log 4 = 1.5 (worse than linear)
    assert growth["figures"]["sweep_100"]["by_scale"]["2"]["exponent"] == pytest.approx(1.5)


def test_checks_take_the_reference_month_and_the_worst_policy_and_memory(bench):
    report = bench("report")

    def scale(
        s: float, truth: float, policies: tuple[float, float], sweep: float, e2e_ratio: float, rss: tuple[float, float]
    ) -> dict:
        return {
            "scale": s,
            "truth": {"candles_per_s": _fig(truth)},
            "policies": {"a": {"candles_per_s": _fig(policies[0])}, "b": {"candles_per_s": _fig(policies[1])}},
            "sweep": {"seconds": _fig(sweep)},
            "e2e": {
                "path-only": {"peak_rss_to_candles": _fig(rss[0]), "ratio_to_bare_scan": _fig(1.0)},
                "policy": {"peak_rss_to_candles": _fig(rss[1]), "ratio_to_bare_scan": _fig(e2e_ratio)},
            },
        }

    got = report.checks(
        {
            "1": scale(1.0, 200e6, (120e6, 90e6), 31.0, 2.5, (1.5, 2.2)),
            "4": scale(4.0, 1.0, (1.0, 1.0), 1.0, 1.0, (1.0, 1.0)),
        }
    )
    assert got["scale"] == 1.0 and got["reference"] is True
    assert got["truth_candles_per_s"]["value"] == 200e6 and got["truth_candles_per_s"]["pass"]  # 200 M >= 150 M
    assert got["single_policy_candles_per_s"]["value"] == 90e6  # the slowest kind, min(120 M, 90 M)
    assert not got["single_policy_candles_per_s"]["pass"]  # 90 M < 100 M
    assert not got["sweep_100_policies_s"]["pass"]  # 31 s > 30 s
    assert got["e2e_policy_to_bare_scan"]["pass"]  # 2.5 <= 3
    assert got["peak_rss_to_candles"]["value"] == 2.2 and not got["peak_rss_to_candles"]["pass"]  # max(1.5, 2.2) > 2
    assert "peer_slowest_ratio" not in got  # no vectorbt figures: no peer targets

    reference = scale(1.0, 200e6, (120e6, 90e6), 31.0, 2.5, (1.5, 2.2))
    engines = {"rust": {"differing_exits": 0}, "numba": {"differing_exits": 1}}
    reference["peer"] = {
        "kinds": {
            "a": {"ratio_to_fastest": 2.5, "engines": engines},
            "b": {"ratio_to_fastest": 1.9, "engines": engines},
        }
    }
    got = report.checks({"1": reference})
    assert got["peer_slowest_ratio"]["value"] == 1.9 and not got["peer_slowest_ratio"]["pass"]  # min(2.5, 1.9) < 2
    assert got["peer_differing_exits"]["value"] == 2 and not got["peer_differing_exits"]["pass"]  # 1 per kind


def test_a_child_reports_its_own_peak_memory_not_the_benchmarks(bench, tmp_path):
    """Linux carries the pre-exec peak RSS into a child's `ru_maxrss`: a child forked straight
    from a process that once held 800 MB would report 800 MB. Measured through the wrapper, a
    child holding 200 MB reports about that (Python itself adds some tens of MB)."""
    measure = bench("measure")
    held = np.ones(800_000_000 // 8)  # this process's peak RSS is now >= 800 MB
    held.sum()
    del held
    child = measure.run_child(
        [sys.executable, "-c", "import numpy as np; a = np.ones(200_000_000 // 8); print(a.size)"],
        env=measure.child_env(),
        cwd=tmp_path,
        log_dir=tmp_path / "child",
    )
    assert child.returncode == 0 and child.stdout.strip() == "25000000"  # 200e6 / 8 float64s
    assert 200e6 <= child.peak_rss_bytes < 400e6
    assert child.wall_s > 0


def test_step_times_read_compute_from_run_json_and_writes_from_the_step_log(bench, tmp_path):
    endtoend = bench("endtoend")
    run_dir = tmp_path / "run_id=x"
    (run_dir / "logs").mkdir(parents=True)
    artifacts = {
        "alerts": {"path": "inputs/alerts.parquet"},
        "paths": {"path": "truth/paths.parquet"},
        "errors": {"path": "errors/errors.parquet"},
    }
    manifest = {
        "status": "completed",
        "timing": {"alerts_ms": 50, "paths_ms": 1200, "total_ms": 1250},
        "artifacts": artifacts,
    }
    (run_dir / "run.json").write_text(json.dumps(manifest))
    (run_dir / "logs" / "stdout.txt").write_text(
        "2024-01-01T00:00:00.000Z [alerts] 10 alerts kept of 12 rows (2 skipped)\n"
        "wrote inputs/alerts.parquet: 10 rows, 900 bytes in 7 ms\n"
        "wrote truth/paths.parquet: 9 rows, 800 bytes in 12 ms\n"
    )
    compute, writes = endtoend._step_times(run_dir)
    assert compute == {"alerts": 50, "paths": 1200}  # total_ms is their sum, not a step
    assert writes == {"alerts": 7, "paths": 12}  # errors.parquet is written inside its phase's write
    # a run of wall 2.0 s then has 2.0 - (50 + 1200 + 7 + 12) / 1000 = 0.731 s of Dagster overhead

    (run_dir / "logs" / "stdout.txt").write_text("wrote inputs/alerts.parquet: 10 rows, 900 bytes in 7 ms\n")
    with pytest.raises(RuntimeError, match=r"truth/paths\.parquet"):
        endtoend._step_times(run_dir)
    (run_dir / "run.json").write_text(json.dumps({**manifest, "status": "failed"}))
    with pytest.raises(RuntimeError, match="not completed"):
        endtoend._step_times(run_dir)


def test_visited_candles_run_from_the_entry_to_the_exit_candle(bench):
    """One mint, candles at ts 0, 10, …, 90 (Δ = 10), one window [0, 100) per trade."""
    kernels = bench("kernels")
    from quantlab_pipeline.core.candles import Candles

    ts = np.arange(0, 100, 10, dtype=np.int64)
    prices = np.ones(10)
    candles = Candles(("m",), np.array([0, 10]), ts, prices, prices, prices, prices)
    paths = pl.DataFrame({"mint": ["m"] * 4, "entry_ts_ms": [0, 20, 0, 0], "p0": [1.0] * 4, "alert_ts_ms": [0] * 4})
    inputs = kernels._trade_inputs(paths, candles, horizon_ms=100)
    exit_ts = np.array([30, 50, 100, 0])  # intrabar at ts 30; at ts 50; close fill of ts 90 (90 + Δ); none
    reason = np.array([0, 2, 6, -1])  # stop_loss, time_stop, end_of_data, no trade
    # trade 0: ts 0..30 = 4 candles; trade 1: ts 20..50 = 4; trade 2: the whole window = 10; trade 3 none
    assert kernels._visited_candles(paths, candles, inputs, exit_ts, reason) == 4 + 4 + 10


@pytest.mark.slow
def test_quick_run_reports_the_research_figures(quick_run):
    results, stdout, _ = quick_run
    research = results["research"]
    features = research["features"]
    for variant in ("with_features", "without_features"):
        _figure(features, variant, "wall_s")
    assert "features" in features["with_features"]["compute_s"]
    assert "features" not in features["without_features"]["compute_s"]
    assert features["overhead"] == pytest.approx(
        features["with_features"]["wall_s"]["median"] / features["without_features"]["wall_s"]["median"] - 1
    )
    assert features["step_share"] == pytest.approx(
        features["with_features"]["compute_s"]["features"]["median"] / features["without_features"]["wall_s"]["median"]
    )
    walk = research["walk_forward"]
    for variant in ("optimize", "walk_forward", "walk_forward_k2"):
        _figure(walk, variant, "wall_s")
    assert "walkforward" in walk["walk_forward"]["compute_s"] and "walkforward" not in walk["optimize"]["compute_s"]
    assert walk["ratio"] == pytest.approx(
        walk["walk_forward"]["wall_s"]["median"] / walk["optimize"]["wall_s"]["median"]
    )
    assert "Research figures" in stdout and "--walk-forward" in stdout


def test_the_year_row_has_a_block_of_its_own(tmp_path, monkeypatch):
    """`--year-only` rewrites the 12-month block and leaves `make bench`'s figures alone, and the reverse."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    docs_block = importlib.import_module("docs_block")
    meta = {"date": "2026-12-07", "cpus": 2, "processor": "x", "python": "3.11.2", "versions": {}, "repeat": 1}
    page = tmp_path / "performance.md"
    page.write_text("# Performance\n\n<!-- make bench: begin -->\nmain v1\n<!-- make bench: end -->\n\nProse.\n")
    docs_block.update(page, "year v1", meta, docs_block.YEAR)
    docs_block.update(page, "main v2", meta)
    docs_block.update(page, "year v2", meta, docs_block.YEAR)
    text = page.read_text()
    assert "main v1" not in text and "year v1" not in text
    assert text.index("main v2") < text.index("Prose.") < text.index("## The last `make bench --year`")
    assert (
        text.index("## The last `make bench --year`")
        < text.index("year v2")
        < text.index("<!-- make bench --year: end -->")
    )
    assert text.count("<!-- make bench: begin") == 1 and text.count("<!-- make bench --year: begin") == 1


def test_the_year_warms_up_until_a_run_is_no_longer_much_faster(bench):
    """The repeated year's warm-up (`year._until_steady`): at least two runs, then until one is no
    more than 10 % faster than the one before, at most `WARMUP_MAX`."""
    year = bench("year")
    seconds = iter([37.2, 32.6, 24.6, 24.0, 99.0])
    assert year._until_steady(lambda: next(seconds)) == [37.2, 32.6, 24.6, 24.0]
    steady = iter([10.0, 10.5, 99.0])
    assert year._until_steady(lambda: next(steady)) == [10.0, 10.5]
    halving = iter([100 / 2**k for k in range(20)])
    assert len(year._until_steady(lambda: next(halving))) == year.WARMUP_MAX


def test_the_year_row_says_how_its_ratio_was_taken(bench):
    from rich.console import Console

    year = bench("year")
    row = {
        "months": list(year.MONTHS),
        "alerts_per_month": 20_000,
        "rows": 406_000_000,
        "load_average_1m": {"start": 1.0, "end": 2.0},
        "generation": {"wall_s": 560.0, "peak_rss_bytes": 1.1e9},
        "bare_scan_s": _fig(20.0),
        "parallel_2_wall_s": _fig(21.0),
        "ratio_to_bare_scan": _fig(1.05),
        "worker_peak_rss_bytes": _fig(2.2e9),
        "worker_peak_rss_first_quarter_bytes": _fig(2.1e9),
        "target": year.TARGET,
    }
    shown = {}
    for gb, warmups in ((0.0, {}), (25.0, {"scan": [26.4, 16.0], "backtest": [37.2, 32.6, 24.6]})):
        console = Console(record=True, width=200)
        year.render({**row, "candle_cache_gb": gb, "first_run_s": 74.0 if gb else None, "warmup_s": warmups}, console)
        shown[gb] = " ".join(console.export_text().split())  # the title wraps at the table's width
    assert "pairs run back to back" in shown[0.0] and "candle cache off" in shown[0.0]
    assert "warm-up" not in shown[0.0] and "filling the cache" not in shown[0.0]
    assert "each run over the scans' median" in shown[25.0] and "each side warm" in shown[25.0]
    assert "37.2, 32.6, 24.6" in shown[25.0] and "26.4, 16.0" in shown[25.0]
