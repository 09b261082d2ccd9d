"""The report's charts: matplotlib figures of artifact frames, kept as inline SVG text (docs/reports.md).

Each title states the numbers its chart shows (the summary's: `core.summary`), so a reader and a
test can check them without reading pixels; an empty input still gives the chart, saying so. No
pyplot: each `Figure` is drawn once by the SVG backend (Agg rasterizes big point clouds inside it)
and belongs to no figure manager, so nothing stays open once its builder returns.
"""

from __future__ import annotations

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
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.scale import SymmetricalLogTransform
from matplotlib.ticker import FixedLocator, NullLocator, StrMethodFormatter

from quantlab_pipeline.core.display import bps_text, hours, multiple, num, pct
from quantlab_pipeline.core.durations import UNIT_MS
from quantlab_pipeline.core.summary import trade_stats, truth_stats
from quantlab_pipeline.core.sweep_spec import Constraints

BLUE, RED, GREY, GREEN = "#1f77b4", "#d62728", "#8c8c8c", "#2ca02c"
RASTERIZE_ABOVE = 2_000  # points: a bigger scatter is one bitmap in the SVG (axes and text stay vector)
TOP_CALLERS = 20
SYMLOG_ABOVE_BPS = 20_000  # a return axis reaching past ±200 % turns logarithmic beyond ±10 %
SYMLOG_LINEAR_BPS = 1_000
TWO_X_BPS = 10_000
STYLE: dict[Any, Any] = {
    # matplotlib's own DejaVu Sans lays text out alike on every machine; the SVG asks for it, then any sans-serif
    **{"font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "font.size": 9, "axes.titlesize": 8},
    **{"axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3},
    **{"legend.frameon": False, "legend.fontsize": 8},
    "svg.fonttype": "none",  # text stays text: searchable, and a few bytes per label
    "svg.hashsalt": "quantlab",  # ids as in every other run (matplotlib salts them with a random UUID)
}
NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
P = ParamSpec("P")
_SVG_ID = re.compile(r'(\bid="|url\(#|href="#)([^")]+)')  # an id, and matplotlib's two ways to refer to one


@dataclass(frozen=True)
class Chart:
    """One picture: `key` names the kind (the same in every section), `title` states its numbers."""

    key: str
    title: str
    svg_text: str

    def svg(self, prefix: str) -> str:
        """The `<svg>` element with every id prefixed: one HTML page holds many charts."""
        return _SVG_ID.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", self.svg_text)


def _chart(builder: Callable[P, tuple[str, str, Figure]]) -> Callable[P, Chart]:
    """Build the figure and draw it under `STYLE` (artists read it when created, the SVG backend when drawing)."""

    @functools.wraps(builder)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Chart:
        with matplotlib.rc_context(STYLE):
            key, title, fig = builder(*args, **kwargs)
            fig.suptitle(title, x=0.01, ha="left", fontsize=10, wrap=True)
            out = io.StringIO()
            FigureCanvasSVG(fig).print_svg(out, metadata=NO_METADATA)
        text = out.getvalue()
        svg = text[text.index("<svg") :].replace("<svg ", f'<svg role="img" aria-label="{html.escape(title)}" ', 1)
        return Chart(key, title, svg)

    return wrapper


def _axes(height: float, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    # dpi: the resolution of rasterized point clouds only (the SVG's vectors are in points)
    fig = Figure(figsize=(7.5, height), layout="constrained", dpi=144)
    return fig, list(np.atleast_1d(fig.subplots(1, ncols, sharey=ncols > 1)))


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color=GREY, fontsize=11)
    ax.set(xticks=[], yticks=[])
    ax.grid(False)


def _xy(frame: pl.DataFrame, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    return frame.get_column(x).to_numpy(), frame.get_column(y).to_numpy()


def _bins(n: int) -> int:
    return max(10, min(60, math.ceil(math.sqrt(n))))


def _symlog(ax: Axes, axis: str, returns: np.ndarray) -> str:
    """Make `ax`'s return axis logarithmic beyond ±1,000 bps if the returns reach past ±`SYMLOG_ABOVE_BPS`,
    ticks at the decades; what the axis label is to add."""
    if np.abs(returns).max() <= SYMLOG_ABOVE_BPS:
        return ""
    decades = [10**k for k in range(3, math.ceil(math.log10(float(np.abs(returns).max()))) + 1)]
    getattr(ax, f"set_{axis}scale")("symlog", linthresh=SYMLOG_LINEAR_BPS, linscale=1)
    along = ax.xaxis if axis == "x" else ax.yaxis
    along.set_major_locator(FixedLocator([*(-d for d in decades), 0, *decades]))
    along.set_minor_locator(NullLocator())
    along.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    return f"; logarithmic beyond ±{SYMLOG_LINEAR_BPS:,}"


def return_bins(returns: np.ndarray) -> np.ndarray:
    """Histogram edges for returns: equal widths, or equal widths on the symlog axis when the returns
    reach past ±`SYMLOG_ABOVE_BPS`, so a few 100x winners leave the bulk spread over many bars."""
    lo, hi = float(returns.min()), float(returns.max())
    if max(-lo, hi) <= SYMLOG_ABOVE_BPS:
        return np.histogram_bin_edges(returns, bins=_bins(returns.size))
    forward = SymmetricalLogTransform(10, SYMLOG_LINEAR_BPS, 1)
    start, stop = forward.transform([lo, hi])
    edges = forward.inverted().transform(np.linspace(start, stop, _bins(returns.size) + 1))
    edges[[0, -1]] = lo, hi  # exactly: the round trip through the logarithm could leave an extreme out
    return edges


@_chart
def return_distribution(trades: pl.DataFrame) -> tuple[str, str, Figure]:
    s = trade_stats(trades)
    median = s["median_return_bps"]
    title = (
        f"Realized return per trade — {trades.height} trades, median {bps_text(median)}, "
        f"mean {bps_text(s['avg_return_bps'])}, win rate {pct(s['win_rate'])}"
    )
    fig, (ax,) = _axes(3.4)
    xlabel = "realized return (bps of entry, net of fees and slippage)"
    if trades.height == 0:
        _empty(ax, "no trades")
    else:
        returns = trades.get_column("realized_return_bps").to_numpy()
        ax.hist(returns, bins=return_bins(returns).tolist(), color=BLUE, edgecolor="white", linewidth=0.5)
        xlabel += _symlog(ax, "x", returns)
        ax.axvline(0, color=GREY, linewidth=1)
        ax.axvline(median, color=RED, linestyle="--", label=f"median {bps_text(median)}")
        if doubled := int((returns >= TWO_X_BPS).sum()):  # their bars are too low to see beside the bulk's
            trades_2x = f"{doubled} trade{'s' * (doubled > 1)} ≥ {TWO_X_BPS:,} bps (2×)"
            ax.plot([], [], " ", label=f"{trades_2x}, max {bps_text(returns.max())}")
        ax.legend(loc="upper right")
    ax.set(xlabel=xlabel, ylabel="trades")
    return "returns", title, fig


@_chart
def exit_reasons(trades: pl.DataFrame) -> tuple[str, str, Figure]:
    title = f"Exit reasons — {trades.height} trades, stop-out rate {pct(trade_stats(trades)['stop_out_rate'])}"
    counts = trades.group_by("exit_reason").len().sort(["len", "exit_reason"], descending=[False, True])
    fig, (ax,) = _axes(1.3 + 0.32 * max(counts.height, 2))
    if trades.height == 0:
        _empty(ax, "no trades")
    else:  # the most frequent on top
        n = counts.get_column("len").to_list()
        bars = ax.barh(counts.get_column("exit_reason").cast(pl.String).to_list(), n, color=BLUE)
        ax.bar_label(bars, labels=[f"{c} ({c / trades.height * 100:.1f}%)" for c in n], padding=3)
        ax.margins(x=0.15)
        ax.grid(axis="y", visible=False)
    ax.set_xlabel("trades")
    return "exit_reasons", title, fig


@_chart
def mae_vs_return(trades: pl.DataFrame) -> tuple[str, str, Figure]:
    s = trade_stats(trades)
    title = (
        f"Adverse excursion vs realized return — {trades.height} trades, "
        f"p95 MAE {bps_text(s['p95_mae_bps'])}, median return {bps_text(s['median_return_bps'])}"
    )
    fig, (ax,) = _axes(3.8)
    ylabel = "realized return (bps)"
    if trades.height == 0:
        _empty(ax, "no trades")
    else:
        many = trades.height > RASTERIZE_ABOVE
        for stopped, color, label in ((False, BLUE, "other exits"), (True, RED, "stopped out")):
            part = trades.filter(pl.col("stop_out") == stopped)
            if part.height:
                x, y = _xy(part, "max_adverse_excursion_bps", "realized_return_bps")
                label = f"{label} ({part.height})"
                ax.scatter(x, y, s=10, alpha=0.6, color=color, edgecolors="none", label=label, rasterized=many)
        ax.axhline(0, color=GREY, linewidth=1)
        ax.axvline(s["p95_mae_bps"], color=GREY, linestyle=":", label=f"p95 MAE {bps_text(s['p95_mae_bps'])}")
        ax.legend(loc="best")
        returns = trades.get_column("realized_return_bps").to_numpy()
        ylabel += _symlog(ax, "y", returns)
    ax.set(xlabel="max adverse excursion (bps of entry; left is worse)", ylabel=ylabel)
    return "mae_vs_return", title, fig


@_chart
def callers(paths: pl.DataFrame, top: int = TOP_CALLERS) -> tuple[str, str, Figure]:
    """2x hit rate and median peak multiple (bar: median, whisker: p25–p75) of the busiest callers."""
    t = truth_stats(paths)
    quartiles = (
        pl.col("peak_multiple").quantile(q, interpolation="linear").alias(f"p{q:.0%}") for q in (0.25, 0.5, 0.75)
    )
    by_caller = (
        paths.group_by("caller_name")
        .agg(pl.len().alias("calls"), pl.col("hit_2x").cast(pl.Float64).mean().alias("hit_rate"), *quartiles)
        .sort(["calls", "caller_name"], descending=[True, False], nulls_last=True)
    )
    shown = by_caller.head(top).reverse()  # the busiest caller on top
    title = (
        f"2x hit rate and peak multiple by caller — {by_caller.height} callers, {t['calls']} calls; "
        f"overall hit rate {pct(t['hit_rate_2x'])}, median peak {multiple(t['median_peak_multiple'])}"
    )
    fig, (left, right) = _axes(1.5 + 0.3 * max(shown.height, 2), ncols=2)
    if shown.height == 0:
        for ax in (left, right):
            _empty(ax, "no calls")
    else:
        names = shown.get_column("caller_name").cast(pl.String).to_list()
        rate, n = shown.get_column("hit_rate").to_numpy() * 100, shown.get_column("calls").to_list()
        bars = left.barh(names, rate, color=BLUE)
        left.bar_label(bars, labels=[f"{r:.0f}% of {c}" for r, c in zip(rate, n)], padding=3, fontsize=8)
        left.set_xlim(0, max(100.0, float(rate.max()) * 1.3))
        p25, p50, p75 = (shown.get_column(c).to_numpy() for c in ("p25%", "p50%", "p75%"))
        right.barh(names, p50, xerr=[p50 - p25, p75 - p50], color=GREEN, ecolor=GREY, capsize=2)
        right.axvline(2.0, color=RED, linestyle="--", linewidth=1, label="2×")
        right.legend(loc="lower right")
        for ax in (left, right):
            ax.grid(axis="y", visible=False)
    if by_caller.height > top:
        left.set_title(f"top {shown.height} of {by_caller.height} callers by calls", color=GREY)
    left.set_xlabel("calls that reached 2× (%)")
    right.set_xlabel("peak multiple of entry (×): median, p25–p75")
    return "callers", title, fig


@_chart
def time_to_2x(paths: pl.DataFrame) -> tuple[str, str, Figure]:
    t = truth_stats(paths)
    median = t["median_hours_to_2x"]
    title = (
        f"Time from entry to 2x — {t['hits_2x'] or 0} of {t['calls']} calls ({pct(t['hit_rate_2x'])}), "
        f"median {hours(median)}"
    )
    elapsed = (pl.col("t_2x_ms") - pl.col("entry_ts_ms")) / UNIT_MS["h"]
    hit_hours = paths.filter(pl.col("hit_2x")).select(elapsed).to_series().to_numpy()
    fig, (ax,) = _axes(3.2)
    if hit_hours.size == 0:
        _empty(ax, "no call reached 2×")
    else:
        ax.hist(hit_hours, bins=_bins(hit_hours.size), color=GREEN, edgecolor="white", linewidth=0.5)
        ax.axvline(median, color=RED, linestyle="--", label=f"median {hours(median)}")
        ax.legend(loc="upper right")
        ax.set_xlim(left=0)
    ax.set(xlabel="hours from entry to the first candle reaching 2× entry", ylabel="calls")
    return "time_to_2x", title, fig


@_chart
def frontier(frame: pl.DataFrame, constraints: Constraints | None = None) -> tuple[str, str, Figure]:
    """Median return vs p95 MAE of the all-callers group's policies: up and right is better on both, as for
    the Pareto front. The p95 MAE constraint is the only one this plane can shade. Dots shrink and fade as
    policies grow, so 10,000 of them still show where they crowd."""
    group = frame.filter(pl.col("caller_name").is_null())
    plotted = group.filter(pl.col("median_return_bps").is_not_null() & pl.col("p95_mae_bps").is_not_null())
    feasible = plotted.filter(pl.col("meets_constraints"))
    pareto = plotted.filter(pl.col("pareto")).sort("p95_mae_bps")
    best = group.filter(pl.col("meets_constraints")).sort("rank").head(1).rows(named=True)
    pick = f"best feasible: {best[0]['policy_id']} (median {bps_text(best[0]['median_return_bps'])})" if best else ""
    title = (
        f"Policy frontier (all callers) — {group.height} policies, {feasible.height} feasible, "
        f"{pareto.height} on the Pareto front; {pick or 'no feasible policy'}"
    )
    fig, (ax,) = _axes(4.8)
    if plotted.height == 0:
        _empty(ax, "no policy has trades")
    else:
        if constraints is not None and (shade := constraints.min_p95_mae_bps) is not None:
            right = max(float(plotted.get_column("p95_mae_bps").to_numpy().max()), shade)
            end = right + 0.05 * (abs(right) + 1)
            ax.axvspan(shade, end, color=GREEN, alpha=0.08, lw=0, label=f"feasible region: p95 MAE ≥ {bps_text(shade)}")
        crowd = min(1.0, math.sqrt(300 / plotted.height))  # 1 up to 300 policies, 0.17 at 10,000
        size, alpha, width, many = max(3.0, 22 * crowd), max(0.2, crowd), 0.8 * crowd, plotted.height > RASTERIZE_ABOVE
        feasible_label = f"feasible ({feasible.height})" + (f": {constraints.describe()}" if constraints else "")
        infeasible = plotted.filter(~pl.col("meets_constraints"))
        for part, face, edge, label in (
            (infeasible, "none", GREY, f"infeasible ({infeasible.height})"),
            (feasible, BLUE, BLUE, feasible_label),
        ):
            x, y = _xy(part, "p95_mae_bps", "median_return_bps")
            ax.scatter(x, y, s=size, alpha=alpha, linewidths=width, fc=face, ec=edge, label=label, rasterized=many)
        x, y = _xy(pareto, "p95_mae_bps", "median_return_bps")
        ax.plot(x, y, color=RED, marker="D", markersize=5, linewidth=1.2, label=f"Pareto front ({pareto.height})")
        legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=2)
        for handle in legend.legend_handles:  # samples as a small frontier's dots, however many there are
            if isinstance(handle, PathCollection):
                handle.set(sizes=[22], alpha=1.0)
    ax.set(xlabel="p95 MAE (bps of entry: the 5% worst adverse excursion; right is better)")
    ax.set_ylabel("median realized return (bps)")
    return "frontier", title, fig


def drawdown(equity: np.ndarray, capital: float) -> np.ndarray:
    """(running peak − equity) / running peak at each point, the peak starting at the capital: the
    largest is `max_drawdown` (docs/portfolio.md)."""
    peak = np.maximum.accumulate(np.concatenate([[capital], equity]))[1:]
    return (peak - equity) / peak


@_chart
def equity(curve: pl.DataFrame, capital: float) -> tuple[str, str, Figure]:
    """The account's equity at the curve's points (portfolio/equity.parquet, the months end to end)
    over its drawdown, which shares the time axis."""
    ts, value = _xy(curve, "ts_ms", "equity")
    fall = drawdown(value, capital)
    end = float(value[-1]) if value.size else capital
    title = (
        f"Equity and drawdown — capital {num(capital)}, equity end {num(end)} ({pct(end / capital - 1)}), "
        f"max drawdown {pct(float(fall.max()) if fall.size else 0.0)}, {curve.height} points"
    )
    fig = Figure(figsize=(7.5, 4.2), layout="constrained", dpi=144)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    if curve.height == 0:
        _empty(top, "no points yet")
    else:
        when = ts.astype("datetime64[ms]")
        top.plot(when, value, color=BLUE, linewidth=1.2, label="equity")
        top.axhline(capital, color=GREY, linestyle="--", linewidth=1, label=f"capital {num(capital)}")
        top.legend(loc="best")
        top.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        bottom.fill_between(when, -100 * fall, 0, color=RED, alpha=0.3, linewidth=0)
        bottom.plot(when, -100 * fall, color=RED, linewidth=0.8)
    top.set_ylabel("equity (quote units)")
    bottom.set(ylabel="drawdown (%)", xlabel="time (UTC)")
    return "equity", title, fig
