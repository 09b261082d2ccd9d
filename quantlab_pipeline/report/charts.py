"""The report's charts, built from artifact frames (drawn by `report.draw`, laid out by `report.layout`).

Each builder returns a `Chart` whose title states the numbers the picture shows, so a reader (and
a test) can check it without reading pixels. An empty input still gives a chart, with "no trades"
or "no calls" on its axes, so every section of a report has the same charts. Aggregates reuse
`core.summary.metric_exprs`, the definitions behind `results/summary.parquet` (README "What a
run writes"), so a chart's median is the summary's median.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from quantlab_pipeline.core import display
from quantlab_pipeline.core.summary import metric_exprs
from quantlab_pipeline.core.sweep_spec import Constraints
from quantlab_pipeline.report.draw import (
    DASHED,
    DOTTED,
    PAD,
    Box,
    Line,
    Markers,
    PointCloud,
    Scene,
    blend,
    line_height,
)
from quantlab_pipeline.report.layout import (
    GREY,
    Axes,
    Handle,
    Scale,
    bar_label_room,
    categories,
    draw_title,
    fmt_tick,
    legend_height,
    linear,
    place_axes,
    title_lines,
)

BLUE, RED, GREEN = "#1f77b4", "#d62728", "#2ca02c"
# Above this many points a scatter is embedded in the SVG as one bitmap: 20 k vector markers
# would weigh megabytes and slow the browser, while axes, labels and text stay vector.
RASTERIZE_ABOVE = 2_000
TOP_CALLERS = 20
SYMLOG_ABOVE_BPS = 20_000
SYMLOG_LINEAR_BPS = 1_000
HOUR_MS = 3_600_000
WIDTH = 7.5 * 72  # points: 540 px in the PNG, 540 pt in the SVG
TITLE_GAP = 6.0
DIAMOND = 5 * math.sqrt(2)  # matplotlib's "D" of markersize 5: a 5-point square turned 45°


@dataclass(frozen=True)
class Chart:
    """One picture: `key` names the kind (stable across sections), `title` states its numbers."""

    key: str
    title: str
    scene: Scene

    def svg(self, prefix: str) -> str:
        """The chart as an inline `<svg>` element (text as text, so it is searchable); every id
        inside starts with `prefix`, since one HTML page holds many charts."""
        return self.scene.svg(prefix, self.title)

    def png(self) -> bytes:
        """A small palette PNG, ~5–40 KB: a chart is flat colours."""
        return self.scene.png()

    def png_data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png()).decode("ascii")


# -- number formats used in titles and labels -----------------------------------------------------


def fmt_bps(value: float | None) -> str:
    return display.MISSING if value is None else f"{display.bps(value)} bps"


fmt_pct = display.pct


def fmt_multiple(value: float | None) -> str:
    return display.MISSING if value is None else f"{value:.2f}×"


def fmt_hours(value: float | None) -> str:
    return display.MISSING if value is None else f"{value:.1f} h"


def trade_stats(trades: pl.DataFrame) -> dict[str, Any]:
    """Count, average/median return, win and stop-out rate, p95 MAE: the summary's definitions."""
    names = ("trades_count", "avg_return_bps", "median_return_bps", "win_rate", "stop_out_rate", "p95_mae_bps")
    return trades.select(metric_exprs(*names)).row(0, named=True)


def truth_stats(paths: pl.DataFrame) -> dict[str, Any]:
    """Calls with an entry, their 2x hit rate, median peak multiple and median hours to 2x."""
    hit_hours = (pl.col("t_2x_ms") - pl.col("entry_ts_ms")).filter(pl.col("hit_2x")) / HOUR_MS
    return paths.select(
        pl.len().alias("calls"),
        pl.col("hit_2x").sum().alias("hits_2x"),
        pl.col("hit_2x").cast(pl.Float64).mean().alias("hit_rate_2x"),
        pl.col("peak_multiple").median().alias("median_peak_multiple"),
        hit_hours.median().alias("median_hours_to_2x"),
    ).row(0, named=True)


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bins(n: int) -> int:
    return max(10, min(60, math.ceil(math.sqrt(n))))


def _titled(title: str, height_in: float) -> tuple[Scene, Box]:
    """A scene of `height_in` inches with `title` on top; returns it and the region left below."""
    scene = Scene(WIDTH, height_in * 72)
    below = draw_title(scene, title_lines(title, WIDTH), PAD)
    return scene, (PAD, below + TITLE_GAP, WIDTH - PAD, scene.height - PAD)


def _empty(scene: Scene, region: Box, message: str, xlabel: str = "", ylabel: str = "") -> None:
    place_axes(scene, region, Scale(0.0, 1.0), Scale(0.0, 1.0), xlabel=xlabel, ylabel=ylabel, empty=True).empty(message)


def _histogram(
    scene: Scene,
    region: Box,
    values: np.ndarray,
    color: str,
    *,
    median: float,
    marks: tuple[float, ...],
    x_from: float | None,
    xlabel: str,
    ylabel: str,
) -> Axes:
    """Bars of `values` (sqrt(n) bins, 10–60) and the median as a dashed red line; the x range also
    covers `marks` (lines the caller draws) and starts at `x_from` when given."""
    counts, edges = np.histogram(values, bins=_bins(values.size))
    lo, hi = min(float(edges[0]), *marks), max(float(edges[-1]), *marks)
    x = linear(lo, hi)
    if x_from is not None:
        x = Scale(x_from, x.hi)
    ax = place_axes(scene, region, x, linear(0.0, float(counts.max()), sticky=(0.0,)), xlabel=xlabel, ylabel=ylabel)
    ax.hist(counts, edges, color)
    ax.vline(median, RED, 1.5, DASHED)
    return ax


# -- trades (policy runs) -------------------------------------------------------------------------


def return_distribution(trades: pl.DataFrame) -> Chart:
    s = trade_stats(trades)
    title = (
        f"Realized return per trade — {trades.height} trades, median {fmt_bps(s['median_return_bps'])}, "
        f"mean {fmt_bps(s['avg_return_bps'])}, win rate {fmt_pct(s['win_rate'])}"
    )
    scene, region = _titled(title, 3.4)
    labels = {"xlabel": "realized return (bps of entry, net of fees and slippage)", "ylabel": "trades"}
    if trades.height == 0:
        _empty(scene, region, "no trades", **labels)
        return Chart("returns", title, scene)
    column = trades.get_column("realized_return_bps")
    returns = column.to_numpy()
    # A few 10x-100x winners would squeeze every other trade into one bar: draw the 1st-99th
    # percentile range and say how many trades lie beyond it. (numpy's quantile would import
    # numpy.ma, ~20 ms, on a backtest's only call.)
    lo, hi = (column.quantile(q, interpolation="linear") for q in (0.01, 0.99))
    inside = returns[(returns >= lo) & (returns <= hi)]
    median = s["median_return_bps"]
    ax = _histogram(scene, region, inside, BLUE, median=median, marks=(0.0, median), x_from=None, **labels)
    ax.vline(0, GREY)
    entries: list[tuple[Handle | None, str]] = [(Handle("line", RED, DASHED), f"median {fmt_bps(median)}")]
    beyond = returns.size - inside.size
    if beyond:
        entries.append(
            (
                None,
                f"{beyond} {'trade' if beyond == 1 else 'trades'} beyond the 1st–99th percentile not drawn "
                f"(min {fmt_bps(float(returns.min()))}, max {fmt_bps(float(returns.max()))})",
            )
        )
    ax.legend(entries, "upper right")
    return Chart("returns", title, scene)


def exit_reasons(trades: pl.DataFrame) -> Chart:
    s = trade_stats(trades)
    title = f"Exit reasons — {trades.height} trades, stop-out rate {fmt_pct(s['stop_out_rate'])}"
    counts = trades.group_by("exit_reason").len().sort(["len", "exit_reason"], descending=[True, False])
    scene, region = _titled(title, 1.3 + 0.32 * max(counts.height, 2))
    if trades.height == 0:
        _empty(scene, region, "no trades", xlabel="trades")
        return Chart("exit_reasons", title, scene)
    reasons = [str(r) for r in counts.get_column("exit_reason").to_list()[::-1]]
    n = counts.get_column("len").to_list()[::-1]
    labels = [f"{c} ({c / trades.height * 100:.1f}%)" for c in n]
    x = linear(0.0, float(max(n)), margin=0.15, sticky=(0.0,))
    room = bar_label_room(n, labels)
    ax = place_axes(scene, region, x, categories(reasons), xlabel="trades", grid="x", room_right=room)
    ax.barh(n, BLUE, labels)
    return Chart("exit_reasons", title, scene)


def mae_vs_return(trades: pl.DataFrame) -> Chart:
    s = trade_stats(trades)
    title = (
        f"Adverse excursion vs realized return — {trades.height} trades, "
        f"p95 MAE {fmt_bps(s['p95_mae_bps'])}, median return {fmt_bps(s['median_return_bps'])}"
    )
    scene, region = _titled(title, 3.8)
    xlabel = "max adverse excursion (bps of entry; left is worse)"
    ylabel = "realized return (bps)"
    if trades.height == 0:
        _empty(scene, region, "no trades", xlabel=xlabel, ylabel=ylabel)
        return Chart("mae_vs_return", title, scene)
    mae = trades.get_column("max_adverse_excursion_bps").to_numpy()
    ret = trades.get_column("realized_return_bps").to_numpy()
    p95 = s["p95_mae_bps"]
    x = linear(min(float(mae.min()), p95), max(float(mae.max()), p95))
    y_lo, y_hi = min(float(ret.min()), 0.0), max(float(ret.max()), 0.0)
    biggest = float(np.abs(ret).max())
    y = linear(y_lo, y_hi)
    if biggest > SYMLOG_ABOVE_BPS:
        # Returns are bounded below (-10,000 bps) but not above: keep the losses linear. The
        # limits stay the linear axis's, so the losses keep room below them.
        decades = [10.0**k for k in range(3, math.ceil(math.log10(biggest)) + 1)]
        ticks = tuple((v, fmt_tick(v, 1.0)) for v in [*(-d for d in decades), 0.0, *decades])
        y = Scale(y.lo, y.hi, fixed=ticks, linthresh=SYMLOG_LINEAR_BPS, linscale=2.0)
        ylabel += f"; logarithmic beyond ±{SYMLOG_LINEAR_BPS:,}"
    ax = place_axes(scene, region, x, y, xlabel=xlabel, ylabel=ylabel)
    stopped = trades.get_column("stop_out").to_numpy().astype(bool)
    groups, entries = [], []
    for mask, color, label in ((~stopped, BLUE, "other exits"), (stopped, RED, "stopped out")):
        if mask.any():
            groups.append((ax.xs(mae[mask]), ax.ys(ret[mask]), color))
            entries.append((Handle("marker", blend(color, 0.6), marker_size=4.0), f"{label} ({int(mask.sum())})"))
    scene.add(PointCloud(tuple(groups), size=math.sqrt(10), alpha=0.6, clip=ax.box, vector_below=RASTERIZE_ABOVE))
    ax.hline(0, GREY)
    ax.vline(p95, GREY, 1.5, DOTTED)
    entries.append((Handle("line", GREY, DOTTED), f"p95 MAE {fmt_bps(p95)}"))
    xy = (np.concatenate([g[0] for g in groups]), np.concatenate([g[1] for g in groups]))
    ax.legend(entries, "best", points=xy)
    return Chart("mae_vs_return", title, scene)


# -- truth layer (every run) ----------------------------------------------------------------------


def callers(paths: pl.DataFrame, top: int = TOP_CALLERS) -> Chart:
    """2x hit rate and median peak multiple (bar: median, whisker: p25–p75) of the busiest callers."""
    t = truth_stats(paths)
    by_caller = (
        paths.group_by("caller_name")
        .agg(
            pl.len().alias("calls"),
            pl.col("hit_2x").cast(pl.Float64).mean().alias("hit_rate"),
            pl.col("peak_multiple").median().alias("median_peak"),
            pl.col("peak_multiple").quantile(0.25, interpolation="linear").alias("p25"),
            pl.col("peak_multiple").quantile(0.75, interpolation="linear").alias("p75"),
        )
        .sort(["calls", "caller_name"], descending=[True, False], nulls_last=True)
    )
    shown = by_caller.head(top)
    scope = f"top {shown.height} of {by_caller.height} callers by calls" if by_caller.height > top else None
    title = (
        f"2x hit rate and peak multiple by caller — {by_caller.height} callers, {t['calls']} calls; "
        f"overall hit rate {fmt_pct(t['hit_rate_2x'])}, median peak {fmt_multiple(t['median_peak_multiple'])}"
    )
    scene, (x0, y0, x1, y1) = _titled(title, 1.5 + 0.3 * max(shown.height, 2))
    if scope:
        y0 = draw_title(scene, [scope], y0 - TITLE_GAP / 2, size=8, color=GREY) + TITLE_GAP / 2
    mid = (x0 + x1) / 2
    left_region, right_region = (x0, y0, mid - 10, y1), (mid + 10, y0, x1, y1)
    xlabels = ("calls that reached 2× (%)", "peak multiple of entry (×): median, p25–p75")
    if shown.height == 0:
        _empty(scene, left_region, "no calls", xlabel=xlabels[0])
        _empty(scene, right_region, "no calls", xlabel=xlabels[1])
        return Chart("callers", title, scene)
    # Busiest caller on top.
    names = [str(c) for c in shown.get_column("caller_name").to_list()][::-1]
    rate = shown.get_column("hit_rate").to_numpy()[::-1] * 100
    n = shown.get_column("calls").to_list()[::-1]
    labels = [f"{r:.0f}% of {c}" for r, c in zip(rate, n)]
    left = place_axes(
        scene,
        left_region,
        Scale(0.0, max(100.0, float(rate.max()) * 1.3)),
        categories(names),
        xlabel=xlabels[0],
        grid="x",
        room_right=bar_label_room(rate.tolist(), labels, size=8),
    )
    left.barh(rate.tolist(), BLUE, labels, size=8)
    median = shown.get_column("median_peak").to_numpy()[::-1]
    p25 = shown.get_column("p25").to_numpy()[::-1]
    p75 = shown.get_column("p75").to_numpy()[::-1]
    x = linear(min(0.0, float(p25.min())), max(float(p75.max()), float(median.max()), 2.0), sticky=(0.0,))
    right = place_axes(scene, right_region, x, categories(names), xlabel=xlabels[1], grid="x", ytick_labels=False)
    right.barh(median.tolist(), GREEN)
    for i, (a, b) in enumerate(zip(p25.tolist(), p75.tolist())):
        # Whiskers p25–p75 with 2-point caps, as errorbar(capsize=2).
        ya = right.Y(i)
        scene.add(Line(((right.X(a), ya), (right.X(b), ya)), GREY, 1.5, clip=right.box))
        for v in (a, b):
            scene.add(Line(((right.X(v), ya - 2), (right.X(v), ya + 2)), GREY, 1.0, clip=right.box))
    right.vline(2.0, RED, 1.0, DASHED)
    right.legend([(Handle("line", RED, DASHED, width=1.0), "2×")], "lower right")
    return Chart("callers", title, scene)


def time_to_2x(paths: pl.DataFrame) -> Chart:
    t = truth_stats(paths)
    title = (
        f"Time from entry to 2x — {t['hits_2x'] or 0} of {t['calls']} calls ({fmt_pct(t['hit_rate_2x'])}), "
        f"median {fmt_hours(t['median_hours_to_2x'])}"
    )
    hours = (
        paths.filter(pl.col("hit_2x"))
        .select((pl.col("t_2x_ms") - pl.col("entry_ts_ms")) / HOUR_MS)
        .to_series()
        .to_numpy()
    )
    scene, region = _titled(title, 3.2)
    labels = {"xlabel": "hours from entry to the first candle reaching 2× entry", "ylabel": "calls"}
    if hours.size == 0:
        _empty(scene, region, "no call reached 2×", **labels)
        return Chart("time_to_2x", title, scene)
    median = t["median_hours_to_2x"]
    ax = _histogram(scene, region, hours, GREEN, median=median, marks=(median,), x_from=0.0, **labels)
    ax.legend([(Handle("line", RED, DASHED), f"median {fmt_hours(median)}")], "upper right")
    return Chart("time_to_2x", title, scene)


# -- frontier (optimization runs) -----------------------------------------------------------------


def _constraint_text(c: Constraints) -> str:
    parts = []
    if c.max_stop_out_rate is not None:
        parts.append(f"stop-out ≤ {fmt_pct(c.max_stop_out_rate)}")
    if c.min_p95_mae_bps is not None:
        parts.append(f"p95 MAE ≥ {fmt_bps(c.min_p95_mae_bps)}")
    if c.max_avg_time_exposed_ms is not None:
        parts.append(f"avg exposure ≤ {fmt_hours(c.max_avg_time_exposed_ms / HOUR_MS)}")
    return ", ".join(parts) or "no constraints"


def frontier(frame: pl.DataFrame, constraints: Constraints | None = None) -> Chart:
    """Median return vs p95 MAE of every policy of the all-callers group (`caller_name` null).

    Up and right is better on both axes, as in the frontier's Pareto definition. Feasible
    policies (`meets_constraints`) are filled; the Pareto front is joined by a line; the
    constraint on p95 MAE, the only one expressible in this plane, is shaded when known.
    """
    group = frame.filter(pl.col("caller_name").is_null())
    plotted = group.filter(pl.col("median_return_bps").is_not_null() & pl.col("p95_mae_bps").is_not_null())
    feasible = plotted.filter(pl.col("meets_constraints"))
    pareto = plotted.filter(pl.col("pareto")).sort("p95_mae_bps")
    best = group.filter(pl.col("meets_constraints")).sort("rank").head(1)
    best_text = (
        f"best feasible: {_short(best.item(0, 'policy_id'))} (median {fmt_bps(best.item(0, 'median_return_bps'))})"
        if best.height
        else "no feasible policy"
    )
    title = (
        f"Policy frontier (all callers) — {group.height} policies, {feasible.height} feasible, "
        f"{pareto.height} on the Pareto front; {best_text}"
    )
    scene, region = _titled(title, 4.8)
    xlabel = "p95 MAE (bps of entry: the 5% worst adverse excursion; right is better)"
    ylabel = "median realized return (bps)"
    if plotted.height == 0:
        _empty(scene, region, "no policy has trades", xlabel=xlabel, ylabel=ylabel)
        return Chart("frontier", title, scene)
    infeasible = plotted.filter(~pl.col("meets_constraints"))
    shade = constraints.min_p95_mae_bps if constraints is not None else None
    feasible_label = f"feasible ({feasible.height})"
    if constraints is not None:
        feasible_label += f": {_constraint_text(constraints)}"
    entries: list[tuple[Handle | None, str]] = []
    if shade is not None:
        entries.append((Handle("patch", blend(GREEN, 0.08)), f"feasible region: p95 MAE ≥ {fmt_bps(shade)}"))
    entries += [
        (Handle("marker", GREY, marker_size=math.sqrt(22), hollow=True), f"infeasible ({infeasible.height})"),
        (Handle("marker", BLUE, marker_size=math.sqrt(22)), feasible_label),
        (Handle("line", RED, width=1.2, marker="D", marker_size=DIAMOND), f"Pareto front ({pareto.height})"),
    ]
    # The legend goes under the axes, in two columns.
    legend_top = region[3] - legend_height(math.ceil(len(entries) / 2), 8)
    region = (region[0], region[1], region[2], legend_top - line_height(8))
    xs = plotted.get_column("p95_mae_bps").to_numpy()
    ys = plotted.get_column("median_return_bps").to_numpy()
    x_lo, x_hi = float(xs.min()), float(xs.max())
    if shade is not None:
        x_hi = max(x_hi, shade)
        span_end = x_hi + 0.05 * (abs(x_hi) + 1)
        x_lo, x_hi = min(x_lo, shade), max(x_hi, span_end)
    ax = place_axes(
        scene, region, linear(x_lo, x_hi), linear(float(ys.min()), float(ys.max())), xlabel=xlabel, ylabel=ylabel
    )
    if shade is not None:
        ax.rect(shade, ax.y.lo, span_end, ax.y.hi, blend(GREEN, 0.08))

    def points(part: pl.DataFrame) -> tuple[tuple[float, float], ...]:
        return tuple(
            zip(
                ax.xs(part.get_column("p95_mae_bps").to_numpy()).tolist(),
                ax.ys(part.get_column("median_return_bps").to_numpy()).tolist(),
            )
        )

    scene.add(Markers(points(infeasible), "o", math.sqrt(22), None, GREY, clip=ax.box))
    scene.add(Markers(points(feasible), "o", math.sqrt(22), BLUE, clip=ax.box))
    front = points(pareto)
    if len(front) > 1:
        scene.add(Line(front, RED, 1.2, clip=ax.box))
    scene.add(Markers(front, "D", DIAMOND, RED, clip=ax.box))
    ax.legend(entries, "below", size=8, ncols=2, top=legend_top)
    return Chart("frontier", title, scene)


def trade_charts(trades: pl.DataFrame) -> list[Chart]:
    return [return_distribution(trades), exit_reasons(trades), mae_vs_return(trades)]


def truth_charts(paths: pl.DataFrame) -> list[Chart]:
    return [callers(paths), time_to_2x(paths)]
