"""`bench/run.py --quick` runs end to end and reports every figure of the benchmark.

Numbers are never asserted (the machine is shared and noisy); what is checked is that each figure
exists as a median / min / max of finite samples, that ratios were derived from the figures they
relate, and that the scaling and target sections are there.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
POLICY_KINDS = ("fixed_stop", "trailing_stop", "time_stop", "ladder", "combo")
TARGETS = ("truth_candles_per_s", "single_policy_candles_per_s", "sweep_100_policies_s", "e2e_policy_to_bare_scan", "peak_rss_to_candles")


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
def quick_run(tmp_path_factory) -> tuple[dict, str]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "latest.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "QUANTLAB_", "NUMBA_"))}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--cache-dir", str(tmp / "cache"), "--json", str(out)],
        cwd=REPO, env={**env, "NO_COLOR": "1", "COLUMNS": "200"}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_quick_run_reports_every_figure(quick_run):
    results, _ = quick_run
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
        for key in ("seconds", "candles_per_s", "visited_candles_per_s", "fraction_of_floor", "simulate_trades_seconds"):
            _figure(scale, "policies", kind, key)
        assert 0 < scale["policies"][kind]["visited_candles"] <= scale["policies"][kind]["window_candles"]
    assert scale["sweep"]["policies"] == 100
    for key in ("seconds", "kernel_seconds", "policy_candles_per_s", "kernel_policy_candles_per_s"):
        _figure(scale, "sweep", key)
    _figure(scale, "bare_scan", "seconds")
    _figure(scale, "bare_scan", "numeric_seconds")
    assert scale["bare_scan"]["rows"] >= scale["dataset"]["candles"]  # the scan keeps bad and duplicate rows

    for run_type in ("path-only", "policy"):
        for key in ("wall_s", "peak_rss_bytes", "dagster_overhead_s", "ratio_to_bare_scan", "ratio_to_numeric_scan", "peak_rss_to_candles"):
            _figure(scale, "e2e", run_type, key)
        e2e = scale["e2e"][run_type]
        assert e2e["ratio_to_bare_scan"]["median"] == pytest.approx(e2e["wall_s"]["median"] / scale["bare_scan"]["seconds"]["median"])
        assert e2e["peak_rss_to_candles"]["median"] == pytest.approx(e2e["peak_rss_bytes"]["median"] / scale["dataset"]["candle_bytes"])
    assert {"alerts_compute", "alerts_write", "paths_compute", "paths_write"} <= set(scale["e2e"]["path-only"]["steps_s"])
    assert {"trades_compute", "summary_write"} <= set(scale["e2e"]["policy"]["steps_s"])

    for state in ("cold", "warm"):
        for key in ("process_s", "import_core_s", "import_dagster_s", "jit_s", "peak_rss_bytes"):
            _figure(results, "cold_start", state, key)


@pytest.mark.slow
def test_quick_run_checks_targets_and_prints_the_table(quick_run):
    results, stdout = quick_run
    checks = results["checks"]
    assert checks["reference"] is False  # the quick size is not the reference month
    for name in TARGETS:
        assert isinstance(checks[name]["pass"], bool) and math.isfinite(checks[name]["value"])
    assert results["scaling"] == {"base_scale": None, "figures": {}}  # one scale: nothing to compare
    for title in ("quantlab benchmark", "cold start", "DESIGN §12 targets"):
        assert title in stdout


# -- the derived sections, on hand-made figures --------------------------------------------------


def _load_report():
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_scaling_is_relative_to_the_reference_scale_with_growth_exponents():
    report = _load_report()
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


def test_scaling_without_the_reference_uses_the_smallest_scale():
    report = _load_report()
    growth = report.scaling({"0.5": _scale_with(report, 0.5, 500, 1.0), "2": _scale_with(report, 2.0, 2000, 8.0)})
    assert growth["base_scale"] == 0.5
    # time 8 / 1 = 8 for candles ×4 -> exponent log 8 / log 4 = 1.5 (worse than linear)
    assert growth["figures"]["sweep_100"]["by_scale"]["2"]["exponent"] == pytest.approx(1.5)


def test_checks_take_the_reference_month_and_the_worst_policy_and_memory():
    report = _load_report()

    def scale(s: float, truth: float, policies: tuple[float, float], sweep: float, e2e_ratio: float, rss: tuple[float, float]) -> dict:
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

    got = report.checks({"1": scale(1.0, 200e6, (120e6, 90e6), 31.0, 2.5, (1.5, 2.2)), "4": scale(4.0, 1.0, (1.0, 1.0), 1.0, 1.0, (1.0, 1.0))})
    assert got["scale"] == 1.0 and got["reference"] is True
    assert got["truth_candles_per_s"]["value"] == 200e6 and got["truth_candles_per_s"]["pass"]  # 200 M >= 150 M
    assert got["single_policy_candles_per_s"]["value"] == 90e6  # the slowest kind, min(120 M, 90 M)
    assert not got["single_policy_candles_per_s"]["pass"]  # 90 M < 100 M
    assert not got["sweep_100_policies_s"]["pass"]  # 31 s > 30 s
    assert got["e2e_policy_to_bare_scan"]["pass"]  # 2.5 <= 3
    assert got["peak_rss_to_candles"]["value"] == 2.2 and not got["peak_rss_to_candles"]["pass"]  # max(1.5, 2.2) > 2
