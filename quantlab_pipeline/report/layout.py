"""Axes for `draw.Scene`: limits, ticks, grid, spines, labels, legends, in matplotlib's style.

Sizes and spacings follow matplotlib's defaults (the charts looked like that before; README
"Reports"): 5 % margins around the data, ticks at 1-2-2.5-5 steps with at most 9 intervals,
left and bottom spines, a light grid, frameless legends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from quantlab_pipeline.report.draw import (
    GRID,
    GRID_ALPHA,
    LABEL_PAD,
    PAD,
    SPINE_WIDTH,
    TEXT,
    TICK_LENGTH,
    TICK_PAD,
    Box,
    Line,
    Markers,
    Rect,
    Scene,
    Text,
    ascent,
    blend,
    line_height,
    text_width,
    wrap,
)

FONT_SIZE, TITLE_SIZE = 9.0, 10.0
GREY = "#8c8c8c"
MARGIN = 0.05
MINUS = "\N{MINUS SIGN}"
BAR_LABEL_PAD = 3.0


def bar_label_room(
    values: Sequence[float], labels: Sequence[str], size: float = FONT_SIZE
) -> list[tuple[float, float]]:
    """`place_axes(room_right=...)` for `Axes.barh` labels."""
    return [(v, BAR_LABEL_PAD + text_width(label, size)) for v, label in zip(values, labels)]


# -- scales ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """View limits (data units), optional fixed ticks, and the symlog threshold if any."""

    lo: float
    hi: float
    fixed: tuple[tuple[float, str], ...] | None = None
    linthresh: float | None = None
    linscale: float = 1.0

    def fwd(self, v: np.ndarray) -> np.ndarray:
        """Positions along the axis in linear units: `v` itself, or matplotlib's symlog (base 10,
        in units of `linthresh`): linear within ±linthresh, one unit per decade beyond."""
        if self.linthresh is None:
            return v
        inner = self.linscale / (1 - 1 / 10)
        magnitude = np.abs(v) / self.linthresh
        return np.where(
            magnitude <= 1, v / self.linthresh * inner, np.sign(v) * (inner + np.log10(np.maximum(magnitude, 1)))
        )

    def ticks(self, length: float, per_tick: float) -> list[tuple[float, str]]:
        if self.fixed is not None:
            return [(v, s) for v, s in self.fixed if self.lo <= v <= self.hi]
        return nice_ticks(self.lo, self.hi, max(1, min(9, int(length // per_tick))))


def limits(lo: float, hi: float, *, margin: float = MARGIN, sticky: Sequence[float] = ()) -> tuple[float, float]:
    """Data range widened by `margin` on each side, but never past a `sticky` value it touches
    (a histogram's bars stand on 0; a bar chart starts at 0)."""
    if hi <= lo:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    span = hi - lo
    new_lo, new_hi = lo - margin * span, hi + margin * span
    for s in sticky:
        if lo >= s > new_lo:
            new_lo = s
        if hi <= s < new_hi:
            new_hi = s
    return new_lo, new_hi


def linear(lo: float, hi: float, *, margin: float = MARGIN, sticky: Sequence[float] = ()) -> Scale:
    return Scale(*limits(lo, hi, margin=margin, sticky=sticky))


def categories(names: Sequence[str]) -> Scale:
    """Bars at 0..n-1, 0.8 thick, with margins, as `barh` lays them out."""
    lo, hi = limits(-0.4, len(names) - 1 + 0.4)
    return Scale(lo, hi, fixed=tuple((float(i), n) for i, n in enumerate(names)))


def fmt_tick(v: float, step: float) -> str:
    """`v` with thousands separators, a true minus sign and the decimals `step` needs."""
    decimals = 0
    while decimals < 6 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-9:
        decimals += 1
    text = f"{v:,.{decimals}f}"
    return text.replace("-", MINUS) if v < 0 else text


def nice_ticks(lo: float, hi: float, nbins: int) -> list[tuple[float, str]]:
    """Multiples of the smallest 1-2-2.5-5 step that cuts [lo, hi] into at most `nbins` parts."""
    raw = (hi - lo) / nbins
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude * nbins >= (hi - lo) * (1 - 1e-9))
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [(k * step, fmt_tick(k * step if k else 0.0, step)) for k in range(first, last + 1)]


# -- axes -----------------------------------------------------------------------------------------


def title_lines(text: str, width: float, size: float = TITLE_SIZE) -> list[str]:
    """`text` wrapped from the left margin to the picture's edge, as matplotlib wraps titles."""
    return wrap(text, size, width - PAD)


def draw_title(
    scene: Scene, lines: list[str], y: float, x: float = PAD, size: float = TITLE_SIZE, color: str = TEXT
) -> float:
    """Left-aligned lines whose first top is at `y`; returns the y below them."""
    for line in lines:
        y += line_height(size)
        scene.add(Text(x, y - 0.24 * size, line, size, color))
    return y


@dataclass
class Axes:
    """A plot area `box` of `scene` with its scales: maps data to points and draws data in it."""

    scene: Scene
    box: Box
    x: Scale
    y: Scale

    def xs(self, values: np.ndarray) -> np.ndarray:
        x0, _, x1, _ = self.box
        lo, hi = self.x.fwd(np.array([self.x.lo, self.x.hi], dtype=np.float64))
        return x0 + (self.x.fwd(values.astype(np.float64)) - lo) / (hi - lo) * (x1 - x0)

    def ys(self, values: np.ndarray) -> np.ndarray:
        _, y0, _, y1 = self.box
        lo, hi = self.y.fwd(np.array([self.y.lo, self.y.hi], dtype=np.float64))
        return y1 - (self.y.fwd(values.astype(np.float64)) - lo) / (hi - lo) * (y1 - y0)

    def X(self, v: float) -> float:
        return float(self.xs(np.array([v]))[0])

    def Y(self, v: float) -> float:
        return float(self.ys(np.array([v]))[0])

    # data
    def vline(self, x: float, color: str, width: float = 1.0, dash: tuple[float, float] | None = None) -> None:
        self.scene.add(Line(((self.X(x), self.box[1]), (self.X(x), self.box[3])), color, width, dash, self.box))

    def hline(self, y: float, color: str, width: float = 1.0, dash: tuple[float, float] | None = None) -> None:
        self.scene.add(Line(((self.box[0], self.Y(y)), (self.box[2], self.Y(y))), color, width, dash, self.box))

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: str) -> None:
        left, right = sorted((self.X(x0), self.X(x1)))
        top, bottom = sorted((self.Y(y0), self.Y(y1)))
        self.scene.add(Rect((left, top, right, bottom), fill, self.box))

    def hist(self, counts: np.ndarray, edges: np.ndarray, color: str) -> None:
        """Bars separated by a thin white gap (matplotlib's white 0.5-point edges)."""
        for c, a, b in zip(counts.tolist(), edges[:-1].tolist(), edges[1:].tolist()):
            if c > 0:
                left, right = self.X(a) + 0.25, self.X(b) - 0.25
                self.scene.add(Rect((left, self.Y(c), max(left, right), self.Y(0)), color, self.box))

    def barh(
        self, values: Sequence[float], color: str, labels: Sequence[str] | None = None, size: float = FONT_SIZE
    ) -> None:
        """Horizontal bars at 0..n-1; `labels` right of their ends (room: `bar_label_room`)."""
        for i, v in enumerate(values):
            self.rect(0, i - 0.4, v, i + 0.4, color)
            if labels is not None:
                self.scene.add(Text(self.X(v) + BAR_LABEL_PAD, self.Y(i) + 0.36 * size, labels[i], size), on_top=True)

    def empty(self, message: str) -> None:
        x0, y0, x1, y1 = self.box
        size = 11.0
        self.scene.add(Text((x0 + x1) / 2, (y0 + y1) / 2 + 0.36 * size, message, size, GREY, "middle"), on_top=True)

    # legend
    def legend(
        self,
        entries: Sequence[tuple[Handle | None, str]],
        loc: Literal["upper right", "upper left", "lower right", "best", "below"],
        *,
        size: float = FONT_SIZE,
        ncols: int = 1,
        points: tuple[np.ndarray, np.ndarray] | None = None,
        top: float | None = None,
    ) -> None:
        """Frameless, with matplotlib's spacings; 'best' picks the corner covering the fewest
        `points` (pixel positions); 'below' centres it under the axes, its top at `top`."""
        rows = math.ceil(len(entries) / ncols)
        columns = [entries[c * rows : (c + 1) * rows] for c in range(ncols)]
        handle, gap, colgap = 2.0 * size, 0.8 * size, 2.0 * size
        widths = [handle + gap + max(text_width(label, size) for _, label in col) for col in columns if col]
        width = sum(widths) + colgap * (len(widths) - 1)
        height = legend_height(rows, size)
        inset = 0.9 * size  # borderaxespad + borderpad
        x0, y0, x1, y1 = self.box
        corners = {
            "upper right": (x1 - inset - width, y0 + inset),
            "upper left": (x0 + inset, y0 + inset),
            "lower left": (x0 + inset, y1 - inset - height),
            "lower right": (x1 - inset - width, y1 - inset - height),
        }
        if loc == "below":
            # Centred under the axes, but inside the picture when wider than the axes.
            left = min(max((x0 + x1 - width) / 2, 0.0), self.scene.width - width)
            ltop = top if top is not None else y1
        elif loc == "best":
            px, py = points if points is not None else (np.empty(0), np.empty(0))

            def covered(corner: tuple[float, float]) -> int:
                cx, cy = corner
                return int(np.count_nonzero((px >= cx) & (px <= cx + width) & (py >= cy) & (py <= cy + height)))

            left, ltop = min(corners.values(), key=covered)
        else:
            left, ltop = corners[loc]
        for col, col_width in zip(columns, widths):
            for row, (h, label) in enumerate(col):
                cy = ltop + row * 1.7 * size + 0.6 * size
                if h is not None:
                    h.draw(self.scene, left, cy, handle)
                self.scene.add(Text(left + handle + gap, cy + 0.36 * size, label, size), on_top=True)
            left += col_width + colgap


def legend_height(rows: int, size: float = FONT_SIZE) -> float:
    return rows * 1.7 * size - 0.5 * size


@dataclass(frozen=True)
class Handle:
    """A legend's sample: a patch, a (dashed) line, or a marker."""

    kind: Literal["patch", "line", "marker"]
    color: str
    dash: tuple[float, float] | None = None
    marker: Literal["o", "D"] = "o"
    marker_size: float = 0.0  # lines: a marker in the middle when > 0
    hollow: bool = False
    width: float = 1.5

    def draw(self, scene: Scene, x: float, cy: float, length: float) -> None:
        if self.kind == "patch":
            scene.add(Rect((x, cy - 0.35 * FONT_SIZE, x + length, cy + 0.35 * FONT_SIZE), self.color), on_top=True)
            return
        if self.kind == "line":
            scene.add(Line(((x, cy), (x + length, cy)), self.color, self.width, self.dash), on_top=True)
            if self.marker_size:
                scene.add(Markers(((x + length / 2, cy),), self.marker, self.marker_size, self.color), on_top=True)
            return
        fill, edge = (None, self.color) if self.hollow else (self.color, None)
        scene.add(Markers(((x + length / 2, cy),), self.marker, self.marker_size, fill, edge), on_top=True)


def place_axes(
    scene: Scene,
    region: Box,
    x: Scale,
    y: Scale,
    *,
    xlabel: str = "",
    ylabel: str = "",
    grid: str = "xy",
    ytick_labels: bool = True,
    empty: bool = False,
    room_right: Sequence[tuple[float, float]] = (),
) -> Axes:
    """An axes filling `region` (title above it and legend below it excluded) with room for its
    tick labels and axis labels; draws its grid now and its spines, ticks and labels on top.

    `empty` draws neither ticks nor grid; `room_right` lists (x, width) of labels drawn right of x (bar labels) that must fit.
    """
    rx0, ry0, rx1, ry1 = region
    bottom = (
        ry1 - (line_height(FONT_SIZE) + LABEL_PAD if xlabel else 0) - TICK_LENGTH - TICK_PAD - line_height(FONT_SIZE)
    )
    top = ry0
    yticks = [] if empty else y.ticks(bottom - top, 2 * FONT_SIZE)
    label_w = max((text_width(s, FONT_SIZE) for _, s in yticks), default=0.0) if ytick_labels else 0.0
    left = rx0 + (line_height(FONT_SIZE) + LABEL_PAD if ylabel else 0) + label_w + TICK_PAD + TICK_LENGTH
    right = rx1
    if room_right:
        # Shrink the plot until each label, `extra` points wide right of its x, still fits.
        values, extras = zip(*room_right)
        lo, hi = x.fwd(np.array([x.lo, x.hi], dtype=np.float64))
        fracs = (x.fwd(np.array(values, dtype=np.float64)) - lo) / (hi - lo)
        for frac, extra in zip(fracs.tolist(), extras):
            if frac > 0:
                right = min(right, left + (rx1 - left - extra) / frac)
    xticks = [] if empty else x.ticks(right - left, 3 * FONT_SIZE)
    ax = Axes(scene, (left, top, right, bottom), x, y)
    grid_color = blend(GRID, GRID_ALPHA)
    if "x" in grid:
        for v, _ in xticks:
            scene.add(Line(((ax.X(v), top), (ax.X(v), bottom)), grid_color, SPINE_WIDTH))
    if "y" in grid:
        for v, _ in yticks:
            scene.add(Line(((left, ax.Y(v)), (right, ax.Y(v))), grid_color, SPINE_WIDTH))

    def on_top(op: Line | Text) -> None:
        scene.add(op, on_top=True)

    on_top(Line(((left, top), (left, bottom), (right, bottom)), TEXT, SPINE_WIDTH))
    baseline = bottom + TICK_LENGTH + TICK_PAD + ascent(FONT_SIZE)
    for v, s in xticks:
        on_top(Line(((ax.X(v), bottom), (ax.X(v), bottom + TICK_LENGTH)), TEXT, SPINE_WIDTH))
        on_top(Text(ax.X(v), baseline, s, FONT_SIZE, anchor="middle"))
    for v, s in yticks:
        on_top(Line(((left - TICK_LENGTH, ax.Y(v)), (left, ax.Y(v))), TEXT, SPINE_WIDTH))
        if ytick_labels:
            on_top(Text(left - TICK_LENGTH - TICK_PAD, ax.Y(v) + 0.36 * FONT_SIZE, s, FONT_SIZE, anchor="end"))
    if xlabel:
        on_top(
            Text((left + right) / 2, baseline + LABEL_PAD + line_height(FONT_SIZE), xlabel, FONT_SIZE, anchor="middle")
        )
    if ylabel:
        on_top(Text(rx0 + ascent(FONT_SIZE), (top + bottom) / 2, ylabel, FONT_SIZE, anchor="middle", vertical=True))
    return ax
