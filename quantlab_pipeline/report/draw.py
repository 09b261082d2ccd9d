"""A small chart renderer: each chart is laid out once and drawn as a PNG (Pillow) or as SVG text.

Why not matplotlib: drawing the summary's five charts with it cost ~0.45 s of every backtest
month (its layout engine, tick and text machinery and figure set-up), for pictures made of
rectangles, lines, dots and text. Here a builder lays a chart out into a display list (`Scene`)
in points (1/72 inch; one point is one pixel of the PNG), once; `Scene.png` rasterizes it and
`Scene.svg` writes it as an inline `<svg>` with its text as text. Text is measured with the font
both outputs draw with (DejaVu Sans, the font matplotlib ships), so labels fit their space.
"""

from __future__ import annotations

import base64
import functools
import html
import importlib.util
import io
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in points, y down
Anchor = Literal["start", "middle", "end"]

# The PNG is drawn at twice its size and halved: slanted lines and dots get smooth edges, and
# text keeps its true letter spacing (hinted 8-9 px glyphs are unevenly spaced).
SUPERSAMPLE = 2
# Raster point clouds inside an SVG are drawn at this many pixels per point (sharp on HiDPI).
SVG_RASTER_SCALE = 2
FONT_FAMILY = "DejaVu Sans"
TEXT, GRID, GRID_ALPHA = "#000000", "#b0b0b0", 0.3
SPINE_WIDTH, TICK_LENGTH, TICK_PAD, LABEL_PAD, PAD = 0.8, 3.5, 3.5, 4.0, 6.0
DASHED, DOTTED = (3.7, 1.6), (1.0, 1.65)  # on/off lengths per point of line width, as matplotlib's


def _font_path() -> Path:
    # matplotlib's bundled DejaVu Sans: the charts keep the face they always had. Located
    # without importing matplotlib (its import alone costs ~0.15 s).
    spec = importlib.util.find_spec("matplotlib")
    assert spec is not None and spec.submodule_search_locations, "matplotlib (a dependency) is not installed"
    return Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"


@functools.cache
def font(size: float) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_path()), size)


def text_width(text: str, size: float) -> float:
    return float(font(size).getlength(text))


def ascent(size: float) -> float:
    return 0.76 * size  # DejaVu Sans' cap height + a little: where a line's top sits above its baseline


def line_height(size: float) -> float:
    return 1.2 * size


def blend(color: str, alpha: float) -> str:
    """`color` at `alpha` over white, as one opaque colour (both outputs then draw it the same)."""
    rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(255 - alpha * (255 - c)):02x}" for c in rgb)


def wrap(text: str, size: float, width: float) -> list[str]:
    """Greedy word wrap to `width` points."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and text_width(candidate, size) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return [*lines, current]


# -- the display list -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rect:
    box: Box
    fill: str
    clip: Box | None = None


@dataclass(frozen=True)
class Line:
    points: tuple[tuple[float, float], ...]
    color: str
    width: float = 1.0
    dash: tuple[float, float] | None = None
    clip: Box | None = None


@dataclass(frozen=True)
class Text:
    x: float
    y: float  # the baseline's; vertical text reads upwards, its baseline at x, centred on y
    text: str
    size: float
    color: str = TEXT
    anchor: Anchor = "start"
    vertical: bool = False
    clip: Box | None = None


@dataclass(frozen=True)
class Markers:
    points: tuple[tuple[float, float], ...]
    kind: Literal["o", "D"]
    size: float  # width in points: a circle's diameter, a diamond's corner to corner
    fill: str | None
    edge: str | None = None
    clip: Box | None = None


@dataclass(frozen=True, eq=False)
class PointCloud:
    """Many translucent dots, drawn as one bitmap of `clip` (see `raster_points`)."""

    groups: tuple[tuple[np.ndarray, np.ndarray, str], ...]  # x, y in points, colour; later on top
    size: float
    alpha: float
    clip: Box
    vector_below: int  # fewer dots than this are written to SVG as circles


Op = Rect | Line | Text | Markers | PointCloud


@dataclass
class Scene:
    """What to draw, in order; `add(..., on_top=True)` ops (axes lines, labels, legends) go last."""

    width: float
    height: float
    below: list[Op] = field(default_factory=list)
    above: list[Op] = field(default_factory=list)

    def add(self, op: Op, on_top: bool = False) -> None:
        (self.above if on_top else self.below).append(op)

    @property
    def ops(self) -> list[Op]:
        return [*self.below, *self.above]

    def png(self, colors: int = 64) -> bytes:
        s = SUPERSAMPLE
        image = Image.new("RGB", (round(self.width * s), round(self.height * s)), "white")
        _paint(image, self.ops, s)
        image = image.reduce(s)
        out = io.BytesIO()
        # A chart is flat colours: a small palette keeps the PNG small, with no visible loss.
        image.quantize(colors=colors, method=Image.Quantize.FASTOCTREE).save(out, format="PNG", compress_level=6)
        return out.getvalue()

    def svg(self, prefix: str, label: str) -> str:
        """An inline `<svg>`; its ids start with `prefix` (one HTML page holds many charts)."""
        e = html.escape
        w, h = _num(self.width), _num(self.height)
        parts = [
            f'<svg role="img" aria-label="{e(label)}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{w}pt" height="{h}pt" viewBox="0 0 {w} {h}" '
            f"style=\"font-family: '{FONT_FAMILY}', sans-serif\">",
            f'<rect width="{w}" height="{h}" fill="#ffffff"/>',
        ]
        clips: dict[Box, str] = {}
        for clip, ops in _runs_by_clip(self.ops):
            if clip is None:
                parts += (_svg_op(op) for op in ops)
                continue
            if clip not in clips:
                clips[clip] = f"{prefix}-clip{len(clips) + 1}"
                x0, y0 = _num(clip[0]), _num(clip[1])
                parts.append(
                    f'<defs><clipPath id="{clips[clip]}"><rect x="{x0}" y="{y0}" width="{_num(clip[2] - clip[0])}" '
                    f'height="{_num(clip[3] - clip[1])}"/></clipPath></defs>'
                )
            parts.append(f'<g clip-path="url(#{clips[clip]})">')
            parts += (_svg_op(op) for op in ops)
            parts.append("</g>")
        parts.append("</svg>")
        return "\n".join(parts)


def _runs_by_clip(ops: Sequence[Op]) -> list[tuple[Box | None, list[Op]]]:
    runs: list[tuple[Box | None, list[Op]]] = []
    for op in ops:
        if runs and runs[-1][0] == op.clip:
            runs[-1][1].append(op)
        else:
            runs.append((op.clip, [op]))
    return runs


# -- PNG ------------------------------------------------------------------------------------------


def _paint(image: Image.Image, ops: Sequence[Op], s: int) -> None:
    """Draw `ops` at `s` pixels per point; a clipped run is drawn on a crop of its box."""
    for clip, run in _runs_by_clip(ops):
        if clip is None:
            _draw_png(image, run, (0.0, 0.0), s)
            continue
        # On whole output pixels, so snapped lines inside stay on the same grid as outside.
        x0, y0, x1, y1 = (round(v) for v in clip)
        region = image.crop((x0 * s, y0 * s, x1 * s, y1 * s))
        _draw_png(region, run, (x0, y0), s)
        image.paste(region, (x0 * s, y0 * s))


def _draw_png(image: Image.Image, ops: Sequence[Op], origin: tuple[float, float], s: int) -> None:
    draw = ImageDraw.Draw(image)
    ox, oy = origin

    def px(x: float, y: float) -> tuple[float, float]:
        return (x - ox) * s, (y - oy) * s

    for op in ops:
        if isinstance(op, Rect):
            (x0, y0), (x1, y1) = px(op.box[0], op.box[1]), px(op.box[2], op.box[3])
            left, top, right, bottom = round(x0), round(y0), round(x1), round(y1)
            if right > left and bottom > top:
                draw.rectangle((left, top, right - 1, bottom - 1), fill=op.fill)
        elif isinstance(op, Line):
            for a, b in _dashes(op.points, op.dash, op.width):
                _png_segment(draw, (a[0] - ox, a[1] - oy), (b[0] - ox, b[1] - oy), op.color, op.width, s)
        elif isinstance(op, Text):
            x, y = px(op.x, op.y)
            _png_text(image, draw, x, y, op, s)
        elif isinstance(op, Markers):
            r = op.size * s / 2
            width = s
            for cx, cy in (px(*p) for p in op.points):
                if op.kind == "o":
                    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=op.fill, outline=op.edge, width=width)
                else:
                    draw.polygon(
                        [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=op.fill, outline=op.edge
                    )
        else:
            # Dots at the PNG's own resolution: drawn at `s` they would cost s² as much, to be
            # averaged back to this anyway.
            layer = Image.fromarray(raster_points(op, 1), "RGBA")
            if s != 1:
                layer = layer.resize((layer.width * s, layer.height * s), Image.Resampling.NEAREST)
            image.paste(layer, (0, 0), layer)


def _png_segment(
    draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float], color: str, width: float, s: int
) -> None:
    """A segment from `a` to `b` (points from the image's origin) drawn at `s` pixels per point."""
    (x0, y0), (x1, y1) = a, b
    if x0 == x1 or y0 == y1:
        # Axis-parallel: snapped to whole output pixels, at least one, as matplotlib snaps: a
        # 1-point grid line stays one pixel of its colour, not two faint ones.
        left, right = sorted((x0, x1))
        top, bottom = sorted((y0, y1))
        if x0 == x1:
            left, right = left - width / 2, right + width / 2
        if y0 == y1:
            top, bottom = top - width / 2, bottom + width / 2
        px_left, px_top = round(left), round(top)
        px_right, px_bottom = max(px_left + 1, round(right)), max(px_top + 1, round(bottom))
        draw.rectangle((px_left * s, px_top * s, px_right * s - 1, px_bottom * s - 1), fill=color)
    else:
        draw.line(((x0 * s, y0 * s), (x1 * s, y1 * s)), fill=color, width=max(1, round(width * s)))


def _png_text(image: Image.Image, draw: ImageDraw.ImageDraw, x: float, y: float, op: Text, s: int) -> None:
    f = font(op.size * s)
    if not op.vertical:
        anchor = {"start": "l", "middle": "m", "end": "r"}[op.anchor]
        draw.text((x, y), op.text, font=f, fill=op.color, anchor=anchor + "s")
        return
    # Pillow draws no rotated text: draw it flat into a mask, turn the mask, paint through it.
    left, top, right, bottom = f.getbbox(op.text, anchor="ls")
    mask = Image.new("L", (math.ceil(right - left) + 2, math.ceil(bottom - top) + 2), 0)
    ImageDraw.Draw(mask).text((-left + 1, -top + 1), op.text, font=f, fill=255, anchor="ls")
    turned = mask.rotate(90, expand=True)
    # The baseline becomes the vertical line x; the text reads bottom to top, centred on y.
    image.paste(op.color, (round(x + top - 1), round(y - turned.height / 2)), turned)


def _dashes(
    points: Sequence[tuple[float, float]], dash: tuple[float, float] | None, width: float
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    segments = list(itertools.pairwise(points))
    if dash is None:
        return segments
    on, off = dash[0] * width, dash[1] * width
    out = []
    for (x0, y0), (x1, y1) in segments:
        length = math.hypot(x1 - x0, y1 - y0)
        if length == 0:
            continue
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        t = 0.0
        while t < length:
            end = min(t + on, length)
            out.append(((x0 + ux * t, y0 + uy * t), (x0 + ux * end, y0 + uy * end)))
            t = end + off
    return out


@functools.cache
def _stamp(diameter_px: float) -> tuple[tuple[int, int, float], ...]:
    """(dy, dx, covered fraction) of the pixels a dot of `diameter_px` centred on a pixel covers."""
    r = diameter_px / 2
    k = math.ceil(r)
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    out = []
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            yy, xx = np.meshgrid(dy + sub, dx + sub, indexing="ij")
            cover = float(np.mean(xx * xx + yy * yy <= r * r))
            if cover > 0:
                out.append((dy, dx, cover))
    return tuple(out)


def raster_points(cloud: PointCloud, scale: float) -> np.ndarray:
    """The cloud as an RGBA bitmap of its clip box at `scale` pixels per point.

    Overlapping dots compose as matplotlib's translucent markers do: a pixel covered by k dots
    of one colour keeps (1 - alpha)^k of what lies below. Each dot is snapped to a pixel centre.
    """
    x0, y0, x1, y1 = cloud.clip
    w, h = round((x1 - x0) * scale), round((y1 - y0) * scale)
    stamp = _stamp(cloud.size * scale)
    k = max(max(abs(dy), abs(dx)) for dy, dx, _ in stamp)
    # A grid padded by 2k: dots up to k outside the box still reach into it, and a stamp never
    # leaves the grid (a row's overflow lands in the padding, which is cut off).
    pad = 2 * k
    stride = w + 2 * pad
    cells = (h + 2 * pad) * stride
    offsets = np.array([dy * stride + dx for dy, dx, _ in stamp])
    covers = np.array([cover for _, _, cover in stamp])
    log_ts = []
    for xs, ys, _ in cloud.groups:
        ix = np.floor((xs - x0) * scale).astype(np.int64)
        iy = np.floor((ys - y0) * scale).astype(np.int64)
        keep = (ix >= -k) & (ix < w + k) & (iy >= -k) & (iy < h + k)
        counts = np.bincount((iy[keep] + pad) * stride + ix[keep] + pad, minlength=cells)
        # Sum log(1 - alpha * cover) over every dot reaching a pixel, visiting occupied pixels only.
        occupied = np.flatnonzero(counts)
        targets = (occupied[None, :] + offsets[:, None]).ravel()
        weights = (counts[occupied][None, :] * np.log1p(-cloud.alpha * covers)[:, None]).ravel()
        log_ts.append(np.bincount(targets, weights, minlength=cells))
    # Compose on the covered pixels inside the box only: most of a plot is empty.
    touched = np.flatnonzero(np.logical_or.reduce([log_t != 0 for log_t in log_ts]))
    row, col = np.divmod(touched, stride)
    inside = (row >= pad) & (row < pad + h) & (col >= pad) & (col < pad + w)
    touched, row, col = touched[inside], row[inside] - pad, col[inside] - pad
    rgb = np.zeros((touched.size, 3))
    transmit = np.ones(touched.size)
    for log_t, (_, _, color) in zip(log_ts, cloud.groups):
        t = np.exp(log_t[touched])
        c = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
        rgb = rgb * t[:, None] + c * (1 - t)[:, None]
        transmit *= t
    alpha = 1 - transmit
    out = np.zeros((h, w, 4), dtype=np.uint8)
    out[row, col, :3] = np.clip(np.rint(rgb / alpha[:, None]), 0, 255)
    out[row, col, 3] = np.rint(alpha * 255)
    return out


# -- SVG ------------------------------------------------------------------------------------------


def _num(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _svg_op(op: Op) -> str:
    e = html.escape
    if isinstance(op, Rect):
        x0, y0, x1, y1 = op.box
        return (
            f'<rect x="{_num(x0)}" y="{_num(y0)}" width="{_num(x1 - x0)}" height="{_num(y1 - y0)}" fill="{op.fill}"/>'
        )
    if isinstance(op, Line):
        d = "M" + " L".join(f"{_num(x)} {_num(y)}" for x, y in op.points)
        dash = (
            ""
            if op.dash is None
            else f' stroke-dasharray="{_num(op.dash[0] * op.width)} {_num(op.dash[1] * op.width)}"'
        )
        return f'<path d="{d}" fill="none" stroke="{op.color}" stroke-width="{_num(op.width)}"{dash}/>'
    if isinstance(op, Text):
        rotate = f' transform="rotate(-90 {_num(op.x)} {_num(op.y)})"' if op.vertical else ""
        anchor = "middle" if op.vertical else op.anchor
        return (
            f'<text x="{_num(op.x)}" y="{_num(op.y)}" font-size="{_num(op.size)}" fill="{op.color}" '
            f'text-anchor="{anchor}"{rotate}>{e(op.text)}</text>'
        )
    if isinstance(op, Markers):
        fill = op.fill or "none"
        stroke = f' stroke="{op.edge}" stroke-width="1"' if op.edge else ""
        r = op.size / 2
        if op.kind == "o":
            shapes = (f'<circle cx="{_num(x)}" cy="{_num(y)}" r="{_num(r)}"/>' for x, y in op.points)
        else:
            shapes = (
                f'<path d="M{_num(x)} {_num(y - r)} L{_num(x + r)} {_num(y)} L{_num(x)} {_num(y + r)} '
                f'L{_num(x - r)} {_num(y)} Z"/>'
                for x, y in op.points
            )
        return f'<g fill="{fill}"{stroke}>' + "".join(shapes) + "</g>"
    total = sum(xs.size for xs, _, _ in op.groups)
    if total < op.vector_below:
        radius = _num(op.size / 2)
        return "".join(
            f'<g fill="{color}" fill-opacity="{_num(op.alpha)}">'
            + "".join(f'<circle cx="{_num(x)}" cy="{_num(y)}" r="{radius}"/>' for x, y in zip(xs.tolist(), ys.tolist()))
            + "</g>"
            for xs, ys, color in op.groups
        )
    # Thousands of dots as vector circles would weigh megabytes and slow the browser: one bitmap.
    buf = io.BytesIO()
    Image.fromarray(raster_points(op, SVG_RASTER_SCALE), "RGBA").save(buf, format="PNG")
    x0, y0, x1, y1 = op.clip
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return (
        f'<image x="{_num(x0)}" y="{_num(y0)}" width="{_num(x1 - x0)}" height="{_num(y1 - y0)}" '
        f'preserveAspectRatio="none" href="{uri}"/>'
    )
