"""What the figures mean: the §12 targets checked at the reference size, how time and memory grow
with size, and the table printed at the end of a run."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

# The performance targets (docs/performance.md "Performance"), checked on the reference month (scale 1).
TARGETS = {
    "truth_candles_per_s": {"op": ">=", "target": 150e6, "stretch": 300e6},
    "single_policy_candles_per_s": {"op": ">=", "target": 100e6},
    "sweep_100_policies_s": {"op": "<=", "target": 30.0},
    "e2e_policy_to_bare_scan": {"op": "<=", "target": 3.5},
    "peak_rss_to_candles": {"op": "<=", "target": 2.0},
}
# Four months of the reference size with `--parallel 2` (docs/performance.md "Performance", Months in parallel):
# within 1.5× the bare scan of their candles on this 2-core machine, and faster than `--parallel 1`.
MONTHS_TARGETS = {
    "months_parallel_2_to_bare_scan": {"op": "<=", "target": 1.5},
    "months_parallel_1_over_2": {"op": ">", "target": 1.0},
}
# Issue 13, checked when vectorbt was measured: the slowest ratio over the comparable kinds (this
# project's time over vectorbt's fastest engine) and the exits that differ between them.
PEER_TARGETS = {
    "peer_slowest_ratio": {"op": ">=", "target": 2.0},
    "peer_differing_exits": {"op": "<=", "target": 0},
}

# Figures followed across scales: (name, path in a scale's results, kind).
SCALING_FIGURES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("read_candles", ("read_candles", "seconds"), "time"),
    ("streaming_floor", ("floor", "seconds"), "time"),
    ("truth_kernel", ("truth", "seconds"), "time"),
    ("policy_fixed_stop", ("policies", "fixed_stop", "seconds"), "time"),
    ("sweep_100", ("sweep", "seconds"), "time"),
    ("bare_scan", ("bare_scan", "seconds"), "time"),
    ("e2e_path_only", ("e2e", "path-only", "wall_s"), "time"),
    ("e2e_policy", ("e2e", "policy", "wall_s"), "time"),
    ("e2e_path_only_peak_rss", ("e2e", "path-only", "peak_rss_bytes"), "memory"),
    ("e2e_policy_peak_rss", ("e2e", "policy", "peak_rss_bytes"), "memory"),
)


def _get(node: dict, path: tuple[str, ...]) -> float:
    for key in path:
        node = node[key]
    return node["median"]


def scale_key(scale: float) -> str:
    return f"{scale:g}"


def scaling(scales: dict[str, dict]) -> dict:
    """Each figure at every scale relative to the base (scale 1 when measured, else the smallest):
    the time or memory ratio, the candle ratio, and the growth exponent log(ratio)/log(candle
    ratio) — 1.0 is linear growth, below 1 a fixed cost amortised, above 1 worse than linear."""
    if len(scales) < 2:
        return {"base_scale": None, "figures": {}}
    ordered = sorted(scales.values(), key=lambda s: s["scale"])
    base = next((s for s in ordered if s["scale"] == 1.0), ordered[0])
    figures = {}
    for name, path, kind in SCALING_FIGURES:
        rows = {}
        for s in ordered:
            candles_ratio = s["dataset"]["candles"] / base["dataset"]["candles"]
            ratio = _get(s, path) / _get(base, path)
            exponent = (
                math.log(ratio) / math.log(candles_ratio)
                if s is not base and candles_ratio != 1 and ratio > 0
                else None
            )
            rows[scale_key(s["scale"])] = {
                "median": _get(s, path),
                "ratio": ratio,
                "candles_ratio": candles_ratio,
                "exponent": exponent,
            }
        figures[name] = {"kind": kind, "by_scale": rows}
    return {"base_scale": base["scale"], "figures": figures}


def checks(scales: dict[str, dict]) -> dict:
    """The §12 targets, on the reference month when it was measured (else the largest scale,
    flagged `reference: false`). Values are medians."""
    ordered = sorted(scales.values(), key=lambda s: s["scale"])
    s = next((x for x in ordered if x["scale"] == 1.0), ordered[-1])
    values = {
        "truth_candles_per_s": s["truth"]["candles_per_s"]["median"],
        "single_policy_candles_per_s": min(p["candles_per_s"]["median"] for p in s["policies"].values()),
        "sweep_100_policies_s": s["sweep"]["seconds"]["median"],
        "e2e_policy_to_bare_scan": s["e2e"]["policy"]["ratio_to_bare_scan"]["median"],
        "peak_rss_to_candles": max(e["peak_rss_to_candles"]["median"] for e in s["e2e"].values()),
    }
    targets = dict(TARGETS)
    months = next((x["months"] for x in reversed(ordered) if "months" in x), None)
    if months:
        values["months_parallel_2_to_bare_scan"] = months["parallel_2"]["ratio_to_bare_scan"]["median"]
        values["months_parallel_1_over_2"] = months["speedup"]["median"]
        targets.update(MONTHS_TARGETS)
    kinds = s.get("peer", {}).get("kinds")
    if kinds:
        values["peer_slowest_ratio"] = min(k["ratio_to_fastest"] for k in kinds.values())
        values["peer_differing_exits"] = sum(
            e["differing_exits"] for k in kinds.values() for e in k["engines"].values()
        )
        targets.update(PEER_TARGETS)
    out = {"scale": s["scale"], "reference": s["scale"] == 1.0}
    for name, value in values.items():
        target = targets[name]
        ok = {">=": value >= target["target"], ">": value > target["target"], "<=": value <= target["target"]}[
            target["op"]
        ]
        out[name] = {**target, "value": value, "pass": bool(ok)}
    return out


# -- the table ---------------------------------------------------------------------------------


def _fmt(figure: dict, scale_by: float = 1.0, digits: int = 2) -> str:
    med, lo, hi = (figure[k] / scale_by for k in ("median", "min", "max"))
    if lo == hi:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} [dim]({lo:,.{digits}f}–{hi:,.{digits}f})[/dim]"


def _rows(s: dict) -> list[tuple[str, str, str]]:
    """(figure, cell, target) rows of one scale's results."""
    d = s["dataset"]
    rows = [
        ("alerts / paths / mints", f"{d['alerts']:,} / {d['paths']:,} / {d['mints']:,}", ""),
        ("candles (M) / in memory (GB)", f"{d['candles'] / 1e6:,.2f} / {d['candle_bytes'] / 1e9:,.2f}", ""),
        ("window candles (M)", f"{d['window_candles'] / 1e6:,.2f}", ""),
        (
            "load average 1 min, start → end",
            f"{s['load_average_1m']['start']:.1f} → {s['load_average_1m']['end']:.1f}",
            "",
        ),
        ("read_candles (s)", _fmt(s["read_candles"]["seconds"]), ""),
        ("streaming floor (GB/s)", _fmt(s["floor"]["gb_per_s"]), ""),
        ("streaming floor (M candles/s)", _fmt(s["floor"]["candles_per_s"], 1e6, 0), ""),
        ("truth kernel (M candles/s)", _fmt(s["truth"]["candles_per_s"], 1e6, 0), "≥ 150 (300)"),
        ("truth kernel (fraction of floor)", _fmt(s["truth"]["fraction_of_floor"]), ""),
    ]
    for kind, p in s["policies"].items():
        rows.append((f"policy {kind} (M candles/s)", _fmt(p["candles_per_s"], 1e6, 0), "≥ 100"))
        rows.append(
            (
                f"  visited {100 * p['visited_candles'] / p['window_candles']:.0f}% (M visited/s)",
                _fmt(p["visited_candles_per_s"], 1e6, 0),
                "",
            )
        )
    sw = s["sweep"]
    rows += [
        (f"sweep {sw['policies']} policies, {sw['threads']} threads (s)", _fmt(sw["seconds"]), "≤ 30"),
        ("  of which kernel (s)", _fmt(sw["kernel_seconds"]), ""),
        ("bare DuckDB scan → Arrow (s)", _fmt(s["bare_scan"]["seconds"]), ""),
        ("  without the mint strings (s)", _fmt(s["bare_scan"]["numeric_seconds"]), ""),
    ]
    for run_type, e in s["e2e"].items():
        rows += [
            (f"e2e {run_type} (s)", _fmt(e["wall_s"]), ""),
            ("  first run of the month (own process, candles read from DuckDB) (s)", _fmt(e["first_run_s"]), ""),
            ("  × bare scan", _fmt(e["ratio_to_bare_scan"]), "≤ 3.5" if run_type == "policy" else ""),
            ("  × scan without mint strings", _fmt(e["ratio_to_numeric_scan"]), ""),
            ("  Dagster overhead (s)", _fmt(e["dagster_overhead_s"]), ""),
            ("  peak RSS, first run (GB)", _fmt(e["peak_rss_bytes"], 1e9), ""),
            ("  peak RSS × candles", _fmt(e["peak_rss_to_candles"]), "≤ 2"),
        ]
    return rows


def render(results: dict, console: Console) -> None:
    scales = sorted(results["scales"].values(), key=lambda s: s["scale"])
    table = Table(
        title=f"quantlab benchmark — median (min–max) of {results['meta']['repeat']} run(s); one-thread rates per CPU second",
        title_justify="left",
    )
    table.add_column("figure")
    for s in scales:
        table.add_column(f"scale {scale_key(s['scale'])}", justify="right")
    table.add_column("target", justify="right")
    per_scale = [_rows(s) for s in scales]
    for i, (name, _, target) in enumerate(per_scale[0]):
        table.add_row(name, *(rows[i][1] for rows in per_scale), target)
    console.print(table)

    cold = Table(title="cold start (fresh process, tiny month)", title_justify="left")
    cold.add_column("numba cache")
    for col in ("process", "import core", "import dagster", "JIT", "peak RSS (GB)"):
        cold.add_column(col, justify="right")
    for state, c in results["cold_start"].items():
        cold.add_row(
            state,
            _fmt(c["process_s"]),
            _fmt(c["import_core_s"]),
            _fmt(c["import_dagster_s"]),
            _fmt(c["jit_s"]),
            _fmt(c["peak_rss_bytes"], 1e9),
        )
    console.print(cold)

    fixed = results["fixed_cost"]
    cost = Table(
        title="per-run fixed cost (policy backtest of a tiny month; instance exists, warm server running)",
        title_justify="left",
    )
    cost.add_column("part")
    cost.add_column("s", justify="right")
    for name, key in (
        ("whole backtest", "backtest_s"),
        ("  interpreter start", "interpreter_s"),
        ("  handing the command to the warm server (whole `quantlab --version`)", "handoff_s"),
        ("  instance, run and step handling", "run_handling_s"),
        ("starting the warm server (once, then idle 15 min)", "server_start_s"),
        ("  of which imports of CLI, Dagster, definitions", "imports_s"),
        ("creating a new Dagster instance (first run only)", "new_instance_s"),
    ):
        cost.add_row(name, _fmt(fixed[key]))
    console.print(cost)

    for s in scales:
        if "months" in s:
            _render_months(s, console)

    growth = results["scaling"]
    if growth["figures"]:
        sc = Table(
            title=f"scaling vs scale {scale_key(growth['base_scale'])} — ratio (growth exponent; 1 = linear)",
            title_justify="left",
        )
        sc.add_column("figure")
        for s in scales:
            sc.add_column(f"scale {scale_key(s['scale'])}", justify="right")
        for name, fig in growth["figures"].items():
            cells = []
            for s in scales:
                row = fig["by_scale"][scale_key(s["scale"])]
                exp = "" if row["exponent"] is None else f" ({row['exponent']:.2f})"
                cells.append(f"×{row['ratio']:.2f}{exp}")
            sc.add_row(f"{name} ({fig['kind']})", *cells)
        console.print(sc)

    for s in scales:
        _render_peer(s, console)

    chk = results["checks"]
    where = "reference month" if chk["reference"] else f"scale {scale_key(chk['scale'])} (not the reference size)"
    ct = Table(title=f"Performance targets on the {where}", title_justify="left")
    for col in ("target", "value", "goal", "result"):
        ct.add_column(col, justify="right" if col != "target" else "left")
    for name in [*TARGETS, *(n for n in (*MONTHS_TARGETS, *PEER_TARGETS) if n in chk)]:
        c = chk[name]
        value = f"{c['value'] / 1e6:,.0f} M/s" if name.endswith("per_s") else f"{c['value']:,.2f}"
        goal = f"{c['op']} {c['target'] / 1e6:,.0f} M/s" if name.endswith("per_s") else f"{c['op']} {c['target']:g}"
        ct.add_row(name, value, goal, "[green]pass[/green]" if c["pass"] else "[red]miss[/red]")
    console.print(ct)


def _render_months(s: dict, console: Console) -> None:
    m = s["months"]
    table = Table(
        title=f"{len(m['months'])} months × {s['alerts_per_month']:,} alerts, policy backtest ({m['months'][0]} … "
        f"{m['months'][-1]}, {m['bare_scan']['rows'] / 1e6:,.1f} M candles read)",
        title_justify="left",
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_row("bare DuckDB scan of their candles (s)", _fmt(m["bare_scan"]["seconds"]), "")
    for parallel in (1, 2):
        figure = m[f"parallel_{parallel}"]
        table.add_row(f"--parallel {parallel} (s)", _fmt(figure["wall_s"]), "")
        table.add_row("  × bare scan", _fmt(figure["ratio_to_bare_scan"]), "≤ 1.5" if parallel == 2 else "")
    table.add_row("--parallel 1 ÷ --parallel 2", _fmt(m["speedup"]), "> 1")
    console.print(table)


def _render_peer(s: dict, console: Console) -> None:
    """The vectorbt comparison of one scale: CPU ms (median, min–max), ratios, differing exits."""
    p = s.get("peer")
    if p is None:
        return
    title = f"peer at scale {scale_key(s['scale'])}: vectorbt 1.2 OHLC stop generator vs simulate_policies, one thread"
    if "skipped" in p:
        console.print(f"{title}: skipped, {p['skipped']}")
        return
    table = Table(
        title=f"{title} — CPU ms, {p['paths']:,} windows, {p['window_candles'] / 1e6:,.1f} M candles",
        title_justify="left",
    )
    for col in (
        "kind",
        "simulate_policies",
        "  kernel",
        "vectorbt rust",
        "vectorbt numba",
        "× fastest",
        "differing exits",
    ):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for kind, k in p["kinds"].items():
        rust, nb = k["engines"]["rust"], k["engines"]["numba"]
        table.add_row(
            kind,
            _fmt(k["seconds"], 1e-3, 1),
            _fmt(k["kernel_seconds"], 1e-3, 1),
            _fmt(rust["seconds"], 1e-3, 1),
            _fmt(nb["seconds"], 1e-3, 1),
            f"{k['ratio_to_fastest']:.2f}",
            f"{rust['differing_exits']} / {nb['differing_exits']}",
        )
    console.print(table)
    console.print(
        f"  vectorbt needs the windows as a padded {p['rows']:,}-row matrix: laying it out took "
        f"{p['layout_seconds'] * 1e3:,.0f} ms (not in its times). Not expressible in its generator: "
        + "; ".join(f"{k} ({why})" for k, why in p["not_expressible"].items())
    )
