"""The report's charts, built from artifact frames with matplotlib (no pyplot: no global state).

Each builder returns a `Chart` whose title states the numbers the picture shows, so a reader (and
a test) can check it without reading pixels. An empty input still gives a chart, with "no trades"
or "no calls" on its axes, so every section of a report has the same charts. Aggregates reuse
`core.summary.metric_exprs`, the definitions behind `results/summary.parquet` (README "What a
run writes"), so a chart's median is the summary's median.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec

import matplotlib
import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator, StrMethodFormatter
from PIL import Image

from quantlab_pipeline.core import display
from quantlab_pipeline.core.summary import metric_exprs
from quantlab_pipeline.core.sweep_spec import Constraints

BLUE, RED, GREY, GREEN = "#1f77b4", "#d62728", "#8c8c8c", "#2ca02c"
# Above this many points a scatter is embedded as one bitmap inside the SVG: 20 k vector markers
# would weigh megabytes and slow the browser, while axes, labels and text stay vector.
RASTERIZE_ABOVE = 2_000
TOP_CALLERS = 20
SYMLOG_ABOVE_BPS = 20_000
SYMLOG_LINEAR_BPS = 1_000
HOUR_MS = 3_600_000

P = ParamSpec("P")
# An id and the two ways matplotlib's SVG refers to one: url(#id) and xlink:href="#id".
_SVG_ID_RE = re.compile(r'(\bid="|url\(#|href="#)([^")]+)')


@dataclass(frozen=True)
class Chart:
    """One picture: `key` names the kind (stable across sections), `title` states its numbers."""

    key: str
    title: str
    figure: Figure

    def svg(self, prefix: str) -> str:
        """The chart as an inline `<svg>` element (text as text, so it is searchable).

        Every id inside is prefixed with `prefix`: matplotlib numbers its groups (`axes_1`, …)
        the same in every file, and one HTML page holds many charts. A fixed hash salt keeps
        the output reproducible (matplotlib otherwise salts its ids with a random UUID).
        """
        buf = io.StringIO()
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "quantlab"}):
            self.figure.savefig(buf, format="svg", metadata={"Date": None})
        text = buf.getvalue()
        svg = _SVG_ID_RE.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", text[text.index("<svg") :])
        return svg.replace("<svg ", f'<svg role="img" aria-label="{html.escape(self.title)}" ', 1)

    def png(self, dpi: int = 72, colors: int = 64) -> bytes:
        """A small PNG (palette of `colors`): a chart is flat colours, so this keeps it ~5–40 KB.

        Drawn straight into an RGBA buffer and encoded once (not saved as PNG, decoded, quantized
        and encoded again): the same bytes, ~20 % sooner.
        """
        screen_dpi = self.figure.dpi
        self.figure.set_dpi(dpi)
        try:
            canvas = FigureCanvasAgg(self.figure)
            canvas.draw()
            rgba = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        finally:
            self.figure.set_dpi(screen_dpi)
        image = rgba.convert("RGB").quantize(colors=colors)
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=True)
        return out.getvalue()

    def png_data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png()).decode("ascii")


def _styled(builder: Callable[P, Chart]) -> Callable[P, Chart]:
    @functools.wraps(builder)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Chart:
        # Looked up when artists are created, so the whole builder runs inside this context.
        with matplotlib.rc_context(
            {
                "font.size": 9,
                "axes.titlesize": 10,
                "axes.titlelocation": "left",
                "axes.spines.top": False,
                "axes.spines.right": False,
                "axes.grid": True,
                "grid.alpha": 0.3,
                "figure.dpi": 100,
            }
        ):
            return builder(*args, **kwargs)

    return wrapper


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


def _figure(height: float, width: float = 7.5) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color=GREY, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _bins(n: int) -> int:
    return max(10, min(60, math.ceil(math.sqrt(n))))


# -- trades (policy runs) -------------------------------------------------------------------------


@_styled
def return_distribution(trades: pl.DataFrame) -> Chart:
    s = trade_stats(trades)
    title = (
        f"Realized return per trade — {trades.height} trades, median {fmt_bps(s['median_return_bps'])}, "
        f"mean {fmt_bps(s['avg_return_bps'])}, win rate {fmt_pct(s['win_rate'])}"
    )
    fig = _figure(3.4)
    ax = fig.add_subplot()
    if trades.height == 0:
        _empty(ax, "no trades")
    else:
        returns = trades.get_column("realized_return_bps").to_numpy()
        # A few 10x-100x winners would squeeze every other trade into one bar: draw the 1st-99th
        # percentile range and say how many trades lie beyond it.
        lo, hi = np.quantile(returns, [0.01, 0.99])
        inside = returns[(returns >= lo) & (returns <= hi)]
        ax.hist(inside, bins=_bins(inside.size), color=BLUE, edgecolor="white", linewidth=0.5)
        ax.axvline(0, color=GREY, linewidth=1)
        ax.axvline(s["median_return_bps"], color=RED, linestyle="--", label=f"median {fmt_bps(s['median_return_bps'])}")
        beyond = returns.size - inside.size
        if beyond:
            ax.plot(
                [],
                [],
                " ",
                label=f"{beyond} {'trade' if beyond == 1 else 'trades'} beyond the 1st–99th percentile not drawn "
                f"(min {fmt_bps(float(returns.min()))}, max {fmt_bps(float(returns.max()))})",
            )
        ax.legend(loc="upper right", frameon=False)
    ax.set_title(title, wrap=True)
    ax.set_xlabel("realized return (bps of entry, net of fees and slippage)")
    ax.set_ylabel("trades")
    return Chart("returns", title, fig)


@_styled
def exit_reasons(trades: pl.DataFrame) -> Chart:
    s = trade_stats(trades)
    title = f"Exit reasons — {trades.height} trades, stop-out rate {fmt_pct(s['stop_out_rate'])}"
    counts = trades.group_by("exit_reason").len().sort(["len", "exit_reason"], descending=[True, False])
    fig = _figure(1.3 + 0.32 * max(counts.height, 2))
    ax = fig.add_subplot()
    if trades.height == 0:
        _empty(ax, "no trades")
    else:
        reasons = counts.get_column("exit_reason").to_list()[::-1]
        n = counts.get_column("len").to_list()[::-1]
        bars = ax.barh(reasons, n, color=BLUE)
        ax.bar_label(bars, labels=[f"{c} ({c / trades.height * 100:.1f}%)" for c in n], padding=3)
        ax.margins(x=0.15)
        ax.grid(axis="y", visible=False)
    ax.set_title(title, wrap=True)
    ax.set_xlabel("trades")
    return Chart("exit_reasons", title, fig)


@_styled
def mae_vs_return(trades: pl.DataFrame) -> Chart:
    s = trade_stats(trades)
    title = (
        f"Adverse excursion vs realized return — {trades.height} trades, "
        f"p95 MAE {fmt_bps(s['p95_mae_bps'])}, median return {fmt_bps(s['median_return_bps'])}"
    )
    fig = _figure(3.8)
    ax = fig.add_subplot()
    ylabel = "realized return (bps)"
    if trades.height == 0:
        _empty(ax, "no trades")
    else:
        raster = trades.height > RASTERIZE_ABOVE
        for stopped, color, label in ((False, BLUE, "other exits"), (True, RED, "stopped out")):
            part = trades.filter(pl.col("stop_out") == stopped)
            if part.height:
                ax.scatter(
                    part.get_column("max_adverse_excursion_bps").to_numpy(),
                    part.get_column("realized_return_bps").to_numpy(),
                    s=10,
                    alpha=0.6,
                    color=color,
                    edgecolors="none",
                    label=f"{label} ({part.height})",
                    rasterized=raster,
                )
        ax.axhline(0, color=GREY, linewidth=1)
        ax.axvline(s["p95_mae_bps"], color=GREY, linestyle=":", label=f"p95 MAE {fmt_bps(s['p95_mae_bps'])}")
        ax.legend(loc="best", frameon=False)
        if trades.get_column("realized_return_bps").abs().max() > SYMLOG_ABOVE_BPS:  # type: ignore[operator]
            # Returns are bounded below (-10,000 bps) but not above: keep the losses linear.
            ax.set_yscale("symlog", linthresh=SYMLOG_LINEAR_BPS, linscale=2)
            top = math.ceil(math.log10(float(trades.get_column("realized_return_bps").abs().max())))  # type: ignore[arg-type]
            decades = [10**k for k in range(3, top + 1)]
            ax.yaxis.set_major_locator(FixedLocator([*(-d for d in decades), 0, *decades]))
            ax.yaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
            ylabel += f"; logarithmic beyond ±{SYMLOG_LINEAR_BPS:,}"
    ax.set_title(title, wrap=True)
    ax.set_xlabel("max adverse excursion (bps of entry; left is worse)")
    ax.set_ylabel(ylabel)
    return Chart("mae_vs_return", title, fig)


# -- truth layer (every run) ----------------------------------------------------------------------


@_styled
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
    fig = _figure(1.5 + 0.3 * max(shown.height, 2))
    left, right = fig.subplots(1, 2, sharey=True)
    if shown.height == 0:
        _empty(left, "no calls")
        _empty(right, "no calls")
    else:
        # Busiest caller on top.
        names = [str(c) for c in shown.get_column("caller_name").to_list()][::-1]
        rate = shown.get_column("hit_rate").to_numpy()[::-1] * 100
        n = shown.get_column("calls").to_list()[::-1]
        bars = left.barh(names, rate, color=BLUE)
        left.bar_label(bars, labels=[f"{r:.0f}% of {c}" for r, c in zip(rate, n)], padding=3, fontsize=8)
        left.set_xlim(0, max(100.0, float(rate.max()) * 1.3))
        median = shown.get_column("median_peak").to_numpy()[::-1]
        lo = median - shown.get_column("p25").to_numpy()[::-1]
        hi = shown.get_column("p75").to_numpy()[::-1] - median
        right.barh(names, median, xerr=[lo, hi], color=GREEN, ecolor=GREY, capsize=2)
        right.axvline(2.0, color=RED, linestyle="--", linewidth=1, label="2×")
        right.legend(loc="lower right", frameon=False)
        for ax in (left, right):
            ax.grid(axis="y", visible=False)
    left.set_xlabel("calls that reached 2× (%)")
    right.set_xlabel("peak multiple of entry (×): median, p25–p75")
    fig.suptitle(title, x=0.01, ha="left", fontsize=10, wrap=True)
    if scope:
        left.set_title(scope, fontsize=8, color=GREY)
    return Chart("callers", title, fig)


@_styled
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
    fig = _figure(3.2)
    ax = fig.add_subplot()
    if hours.size == 0:
        _empty(ax, "no call reached 2×")
    else:
        ax.hist(hours, bins=_bins(hours.size), color=GREEN, edgecolor="white", linewidth=0.5)
        median = t["median_hours_to_2x"]
        ax.axvline(median, color=RED, linestyle="--", label=f"median {fmt_hours(median)}")
        ax.legend(loc="upper right", frameon=False)
        ax.set_xlim(left=0)
    ax.set_title(title, wrap=True)
    ax.set_xlabel("hours from entry to the first candle reaching 2× entry")
    ax.set_ylabel("calls")
    return Chart("time_to_2x", title, fig)


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


@_styled
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
    fig = _figure(4.8)
    ax = fig.add_subplot()
    if plotted.height == 0:
        _empty(ax, "no policy has trades")
    else:
        if constraints is not None and constraints.min_p95_mae_bps is not None:
            xmax = max(float(plotted.get_column("p95_mae_bps").max()), constraints.min_p95_mae_bps)  # type: ignore[arg-type]
            ax.axvspan(
                constraints.min_p95_mae_bps,
                xmax + 0.05 * (abs(xmax) + 1),
                color=GREEN,
                alpha=0.08,
                label=f"feasible region: p95 MAE ≥ {fmt_bps(constraints.min_p95_mae_bps)}",
            )
        infeasible = plotted.filter(~pl.col("meets_constraints"))
        ax.scatter(
            infeasible.get_column("p95_mae_bps").to_numpy(),
            infeasible.get_column("median_return_bps").to_numpy(),
            s=22,
            facecolors="none",
            edgecolors=GREY,
            label=f"infeasible ({infeasible.height})",
        )
        feasible_label = f"feasible ({feasible.height})"
        if constraints is not None:
            feasible_label += f": {_constraint_text(constraints)}"
        ax.scatter(
            feasible.get_column("p95_mae_bps").to_numpy(),
            feasible.get_column("median_return_bps").to_numpy(),
            s=22,
            color=BLUE,
            label=feasible_label,
        )
        ax.plot(
            pareto.get_column("p95_mae_bps").to_numpy(),
            pareto.get_column("median_return_bps").to_numpy(),
            color=RED,
            marker="D",
            markersize=5,
            linewidth=1.2,
            label=f"Pareto front ({pareto.height})",
        )
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, frameon=False, fontsize=8)
    ax.set_title(title, wrap=True)
    ax.set_xlabel("p95 MAE (bps of entry: the 5% worst adverse excursion; right is better)")
    ax.set_ylabel("median realized return (bps)")
    return Chart("frontier", title, fig)


def trade_charts(trades: pl.DataFrame) -> list[Chart]:
    return [return_distribution(trades), exit_reasons(trades), mae_vs_return(trades)]


def truth_charts(paths: pl.DataFrame) -> list[Chart]:
    return [callers(paths), time_to_2x(paths)]
