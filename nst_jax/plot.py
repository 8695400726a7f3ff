"""Line plots of training curves drawn with Pillow alone (no plotting library dependency).

:func:`line_plot` renders named series on shared axes with tick labels, an optional log-scale y
axis, and a legend; :func:`save_line_plot` writes it as a PNG atomically, so a viewer refreshing the
file while training never sees half a picture.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from nst_jax import files

# Colour-blind-safe palette (Okabe & Ito), cycled over the series.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
)
_BG = (255, 255, 255)
_FG = (40, 40, 40)
_GRID = (225, 225, 225)

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi].

    Returns about ``target`` ticks, all within [lo, hi] (up to rounding); a single tick when the
    range is empty.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= hi + step * 1e-9:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis spanning [10**lo, 10**hi]: powers of ten, or 1-2-5 (1..9) steps
    when that gives too few, or nice linear ticks when the span is under one step of those."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [10.0 ** lo] if math.isfinite(lo) else []
    for mults in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0 ** e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in mults]
        ticks = [t for t in ticks if lo - 1e-9 <= math.log10(t) <= hi + 1e-9]
        if len(ticks) >= 3:
            return ticks
    return [t for t in nice_ticks(10.0 ** lo, 10.0 ** hi, 5) if t > 0]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")
    return f"{v:g}"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _clean(xs: Sequence[float], ys: Sequence[float], log_y: bool) -> list[tuple[float, float]]:
    pts = []
    for x, y in zip(xs, ys):
        x, y = float(x), float(y)
        if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y):
            pts.append((x, y))
    return pts


def line_plot(series: Series, *, title: str = "", x_label: str = "step", y_label: str = "",
              log_y: bool = False, size: tuple[int, int] = (800, 480)) -> Image.Image:
    """Draws ``{name: (xs, ys)}`` as coloured polylines on one set of axes.

    Args:
      series: x and y values per name; non-finite points (and, with ``log_y``, non-positive y) are
        left out.
      title: text above the plot.
      x_label, y_label: axis captions.
      log_y: logarithmic y axis (see :func:`log_ticks`).
      size: (width, height) in pixels.

    Returns:
      An RGB ``PIL.Image``.
    """
    width, height = size
    img = Image.new("RGB", size, _BG)
    draw = ImageDraw.Draw(img)
    font = _font(max(10, height // 40))
    left, right, top, bottom = 78, 20, 40, 52
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # plot area, y0 at the top

    clean = {name: _clean(xs, ys, log_y) for name, (xs, ys) in series.items()}
    points = [p for pts in clean.values() for p in pts]
    if title:
        draw.text((width / 2, 8), title, fill=_FG, font=font, anchor="mt")
    draw.rectangle((x0, y0, x1, y1), outline=_FG)
    if not points:
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), "no data yet", fill=_FG, font=font, anchor="mm")
        return img

    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xlo, xhi = min(p[0] for p in points), max(p[0] for p in points)
    ylo, yhi = min(fy(p[1]) for p in points), max(fy(p[1]) for p in points)
    if xhi == xlo:
        xlo, xhi = xlo - 0.5, xhi + 0.5
    if yhi == ylo:
        pad = 0.5 if log_y else max(abs(ylo) * 0.1, 1e-12)
        ylo, yhi = ylo - pad, yhi + pad
    pad = (yhi - ylo) * 0.05
    ylo, yhi = ylo - pad, yhi + pad

    def px(x: float) -> float:
        return x0 + (x - xlo) / (xhi - xlo) * (x1 - x0)

    def py(v: float) -> float:  # v already in axis units (log10 if log_y)
        return y1 - (v - ylo) / (yhi - ylo) * (y1 - y0)

    for t in nice_ticks(xlo, xhi):
        x = px(t)
        draw.line((x, y0, x, y1), fill=_GRID)
        draw.line((x, y1, x, y1 + 4), fill=_FG)
        draw.text((x, y1 + 6), _fmt(t), fill=_FG, font=font, anchor="mt")
    for t in log_ticks(ylo, yhi) if log_y else nice_ticks(ylo, yhi):
        y = py(fy(t))
        draw.line((x0, y, x1, y), fill=_GRID)
        draw.line((x0 - 4, y, x0, y), fill=_FG)
        draw.text((x0 - 6, y), _fmt(t), fill=_FG, font=font, anchor="rm")
    draw.rectangle((x0, y0, x1, y1), outline=_FG)
    draw.text(((x0 + x1) / 2, height - 6), x_label, fill=_FG, font=font, anchor="mb")
    caption = f"{y_label} (log scale)".strip() if log_y else y_label
    if caption:
        draw.text((x0, y0 - 4), caption, fill=_FG, font=font, anchor="lb")

    for i, (name, pts) in enumerate(clean.items()):
        colour = PALETTE[i % len(PALETTE)]
        xy = [(px(x), py(fy(y))) for x, y in pts]
        if len(xy) == 1:
            (cx, cy), r = xy[0], 3
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif xy:
            draw.line(xy, fill=colour, width=2)

    # Legend in the upper-right corner of the plot area.
    names = list(clean)
    line_h = font.size + 6 if hasattr(font, "size") else 16
    text_w = max(draw.textlength(n, font=font) for n in names)
    lx1, ly0 = x1 - 8, y0 + 8
    lx0, ly1 = lx1 - text_w - 40, ly0 + line_h * len(names) + 6
    draw.rectangle((lx0, ly0, lx1, ly1), fill=_BG, outline=_FG)
    for i, name in enumerate(names):
        cy = ly0 + 6 + line_h * i + line_h / 2
        draw.line((lx0 + 6, cy, lx0 + 28, cy), fill=PALETTE[i % len(PALETTE)], width=3)
        draw.text((lx0 + 34, cy), name, fill=_FG, font=font, anchor="lm")
    return img


def save_line_plot(path: str | os.PathLike, series: Series, **kwargs) -> Path:
    """Renders :func:`line_plot` and writes it to ``path`` as PNG atomically (temp file + rename)."""
    path = Path(path)
    img = line_plot(series, **kwargs)
    with files.atomic_write(path) as f:
        img.save(f, format="PNG")
    return path
