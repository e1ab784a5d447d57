"""Small hand-written SVG figures: a canvas, axes with linear or log scales, a colour ramp, a heat map.

No plotting library is needed: every figure clew draws (charts, heat maps, attribution graphs) is a
few rectangles, lines, circles and labels. Coordinates are pixels with y growing downwards;
:class:`Axes` maps data to pixels. Text is escaped, and control characters are shown as escapes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

FONT = "font-family='Helvetica, Arial, sans-serif'"

# a perceptually ordered ramp (dark blue -> teal -> yellow), interpolated linearly between the stops
_RAMP = [
    (0.0, (68, 1, 84)),
    (0.25, (59, 82, 139)),
    (0.5, (33, 145, 140)),
    (0.75, (94, 201, 98)),
    (1.0, (253, 231, 37)),
]


def printable(s: str, limit: int = 200) -> str:
    """Text fit for a label: control characters shown as escapes, long strings cut with an ellipsis."""
    out = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in s)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _tip(title: str) -> str:
    return f"<title>{escape(printable(title))}</title>" if title else ""


def ramp(t: float) -> str:
    """A colour for ``t`` in [0, 1] (clamped; NaN is grey)."""
    if math.isnan(t):
        return "#cccccc"
    t = min(1.0, max(0.0, t))
    for (t0, c0), (t1, c1) in zip(_RAMP, _RAMP[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return "#" + "".join(f"{round(a + f * (b - a)):02x}" for a, b in zip(c0, c1))
    return "#fde725"


def fmt(x: float) -> str:
    """A short label for a tick value."""
    if x == 0:
        return "0"
    if 1000 <= abs(x) < 1e6 and x == int(x):
        return f"{int(x):,}"
    if abs(x) >= 1000 or abs(x) < 0.01:
        return f"{x:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{x:.3g}"


class Canvas:
    """An SVG document under construction; ``title`` is the document's hover title."""

    def __init__(self, width: float, height: float, title: str = ""):
        self.width, self.height, self.title = width, height, title
        self.parts: list[str] = []

    def rect(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        fill: str,
        title: str = "",
        stroke: str = "none",
        rx: float = 0,
    ):
        rounded = f" rx='{rx}'" if rx else ""
        self.parts.append(
            f"<rect x='{x:.2f}' y='{y:.2f}' width='{w:.2f}' height='{h:.2f}' fill='{fill}' "
            f"stroke='{stroke}'{rounded}>{_tip(title)}</rect>"
        )

    def line(
        self,
        x1: float,
        y1: float,
        x2: float,
        y2: float,
        color: str = "#000",
        width: float = 1.0,
        dash: str = "",
        opacity: float = 1.0,
    ):
        dashed = f" stroke-dasharray='{dash}'" if dash else ""
        faded = f" stroke-opacity='{opacity:.2f}'" if opacity < 1 else ""
        self.parts.append(
            f"<line x1='{x1:.2f}' y1='{y1:.2f}' x2='{x2:.2f}' y2='{y2:.2f}' stroke='{color}' "
            f"stroke-width='{width:.2f}'{dashed}{faded}/>"
        )

    def polyline(self, points: Sequence[tuple[float, float]], color: str, width: float = 1.5):
        pts = " ".join(f"{x:.2f},{y:.2f}" for x, y in points)
        self.parts.append(f"<polyline points='{pts}' fill='none' stroke='{color}' stroke-width='{width}'/>")

    def curve(
        self,
        start: tuple[float, float],
        end: tuple[float, float],
        color: str,
        width: float = 1.0,
        opacity: float = 1.0,
        title: str = "",
    ):
        """A vertical S-shaped cubic curve from ``start`` to ``end`` (an edge between two rows)."""
        (x1, y1), (x2, y2) = start, end
        my = (y1 + y2) / 2
        self.parts.append(
            f"<path d='M{x1:.2f},{y1:.2f} C{x1:.2f},{my:.2f} {x2:.2f},{my:.2f} {x2:.2f},{y2:.2f}' fill='none' "
            f"stroke='{color}' stroke-width='{width:.2f}' stroke-opacity='{opacity:.2f}'>{_tip(title)}</path>"
        )

    def circle(
        self,
        x: float,
        y: float,
        r: float,
        fill: str,
        title: str = "",
        opacity: float = 1.0,
        stroke: str = "none",
    ):
        self.parts.append(
            f"<circle cx='{x:.2f}' cy='{y:.2f}' r='{r}' fill='{fill}' fill-opacity='{opacity}' "
            f"stroke='{stroke}'>{_tip(title)}</circle>"
        )

    def text(
        self,
        x: float,
        y: float,
        s: str,
        size: float = 11,
        anchor: str = "middle",
        rotate: float = 0,
        color: str = "#000",
        weight: str = "normal",
        limit: int = 200,
    ):
        turn = f" transform='rotate({rotate} {x:.2f} {y:.2f})'" if rotate else ""
        self.parts.append(
            f"<text x='{x:.2f}' y='{y:.2f}' font-size='{size}' text-anchor='{anchor}' fill='{color}' "
            f"font-weight='{weight}' {FONT}{turn}>{escape(printable(s, limit))}</text>"
        )

    @contextmanager
    def group(self, title: str = "", **data: str) -> Iterator[None]:
        """Everything drawn inside is one ``<g>`` with a hover ``title`` and ``data-*`` attributes."""
        attrs = "".join(f" data-{k}={quoteattr(v)}" for k, v in data.items())
        self.parts.append(f"<g{attrs}>{_tip(title)}")
        yield
        self.parts.append("</g>")

    def chars_to_edge(self, x: float, size: float = 11, bold: bool = False) -> int:
        """About how many characters of text at ``size`` fit between ``x`` and the right edge (less a
        10 px margin; at least 20): the limit to cut or wrap a heading at."""
        return max(20, int((self.width - x - 10) / (size * (0.61 if bold else 0.56))))

    def wrapped(self, x: float, y: float, s: str, width_chars: int, size: float = 11, lines: int = 2, **kw):
        """``s`` broken at spaces into at most ``lines`` lines of about ``width_chars`` characters,
        centred on (x, y) vertically; the last line is cut with an ellipsis when the text is longer."""
        words, out = printable(s).split(" "), [""]
        for w in words:
            if out[-1] and len(out[-1]) + 1 + len(w) > width_chars:
                out.append("")
            out[-1] = f"{out[-1]} {w}".strip()
        if len(out) > lines:
            out = out[:lines]
            out[-1] = out[-1][: width_chars - 1] + "…"
        out = [o if len(o) <= width_chars else o[: width_chars - 1] + "…" for o in out]
        top = y - (len(out) - 1) * size * 0.6
        for i, line in enumerate(out):
            self.text(x, top + i * size * 1.2, line, size=size, **kw)

    def svg(self) -> str:
        body = "\n".join(self.parts)
        return (
            f"<svg xmlns='http://www.w3.org/2000/svg' width='{self.width:.0f}' height='{self.height:.0f}' "
            f"viewBox='0 0 {self.width:.0f} {self.height:.0f}'>{_tip(self.title)}\n"
            f"<rect width='100%' height='100%' fill='white'/>\n{body}\n</svg>\n"
        )

    def save(self, path: str | Path) -> Path:
        """Write the SVG whole or not at all (:func:`clew.files.write_atomic`)."""
        from clew.files import write_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self.svg())
        return path


class Axes:
    """A rectangle of the canvas with a data range on each axis (``log`` for base-10 scales)."""

    def __init__(
        self,
        canvas: Canvas,
        box: tuple[float, float, float, float],
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        xlog: bool = False,
        ylog: bool = False,
    ):
        self.c = canvas
        self.x0, self.y0, self.w, self.h = box
        self.xlim, self.ylim, self.xlog, self.ylog = xlim, ylim, xlog, ylog

    @staticmethod
    def _frac(v: float, lim: tuple[float, float], log: bool) -> float:
        a, b = lim
        if log:
            v, a, b = math.log10(max(v, 1e-300)), math.log10(a), math.log10(b)
        return (v - a) / (b - a)

    def px(self, x: float) -> float:
        return self.x0 + self._frac(x, self.xlim, self.xlog) * self.w

    def py(self, y: float) -> float:
        return self.y0 + self.h - self._frac(y, self.ylim, self.ylog) * self.h

    def frame(self, xlabel: str, ylabel: str, title: str = "", xticks=None, yticks=None):
        """The box, ticks with labels, the axis labels and the title."""
        c = self.c
        c.rect(self.x0, self.y0, self.w, self.h, "none", stroke="#333")
        for t in xticks if xticks is not None else self._ticks(self.xlim, self.xlog):
            x = self.px(t)
            c.line(x, self.y0 + self.h, x, self.y0 + self.h + 4, "#333")
            c.text(x, self.y0 + self.h + 16, fmt(t), 10)
        for t in yticks if yticks is not None else self._ticks(self.ylim, self.ylog):
            y = self.py(t)
            c.line(self.x0 - 4, y, self.x0, y, "#333")
            c.text(self.x0 - 7, y + 3.5, fmt(t), 10, anchor="end")
        c.text(self.x0 + self.w / 2, self.y0 + self.h + 34, xlabel, 11)
        c.text(self.x0 - 44, self.y0 + self.h / 2, ylabel, 11, rotate=-90)
        if title:
            c.text(self.x0 + self.w / 2, self.y0 - 10, title, 12, weight="bold")

    @staticmethod
    def _ticks(lim: tuple[float, float], log: bool) -> list[float]:
        a, b = sorted(lim)
        if log:
            return [
                10.0**k for k in range(math.ceil(math.log10(a) - 1e-9), math.floor(math.log10(b) + 1e-9) + 1)
            ]
        step = 10 ** math.floor(math.log10((b - a) / 4))
        for mult in (1, 2, 5, 10):
            if (b - a) / (step * mult) <= 6:
                step *= mult
                break
        first = math.ceil(a / step - 1e-9) * step
        return [first + i * step for i in range(int((b - first) / step + 1e-9) + 1)]


def heatmap(
    values: Sequence[Sequence[float]],
    title: str,
    row_label: str = "layer",
    col_label: str = "head",
    vmin: float = 0.0,
    vmax: float = 1.0,
    cell: float = 22.0,
) -> Canvas:
    """A (rows x columns) heat map, row 0 at the top, with a colour bar; each cell shows its value on hover."""
    n_rows, n_cols = len(values), max(1, max(len(r) for r in values))
    cell = min(cell, 700 / n_cols, 700 / max(n_rows, 1))
    left, top = 56, 40
    width = max(left + n_cols * cell + 90, 7.2 * len(title) + 30)  # wide enough for the title
    left += (width - (left + n_cols * cell + 90)) / 2  # the map centred under it
    c = Canvas(width, top + n_rows * cell + 50)
    c.text(width / 2, 22, title, 13, weight="bold")
    for r, row in enumerate(values):
        for k, v in enumerate(row):
            t = (v - vmin) / (vmax - vmin) if vmax > vmin else 0.0
            c.rect(
                left + k * cell,
                top + r * cell,
                cell,
                cell,
                ramp(t),
                f"{row_label} {r}, {col_label} {k}: {v:.3f}",
            )
    every_r = max(1, math.ceil(n_rows * 12 / (n_rows * cell)))
    every_c = max(1, math.ceil(n_cols * 14 / (n_cols * cell)))
    for r in range(0, n_rows, every_r):
        c.text(left - 5, top + (r + 0.5) * cell + 3.5, str(r), 9, anchor="end")
    for k in range(0, n_cols, every_c):
        c.text(left + (k + 0.5) * cell, top + n_rows * cell + 13, str(k), 9)
    c.text(left + n_cols * cell / 2, top + n_rows * cell + 32, col_label, 11)
    c.text(left - 38, top + n_rows * cell / 2, row_label, 11, rotate=-90)
    # colour bar
    bx, bh = left + n_cols * cell + 24, n_rows * cell
    for i in range(50):
        c.rect(bx, top + bh * (1 - (i + 1) / 50), 14, bh / 50 + 0.5, ramp((i + 0.5) / 50))
    c.text(bx + 18, top + 8, fmt(vmax), 10, anchor="start")
    c.text(bx + 18, top + bh, fmt(vmin), 10, anchor="start")
    return c
