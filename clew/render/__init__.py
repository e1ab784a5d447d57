"""Pictures as self-contained SVG files, drawn by hand: every figure clew makes goes through here.

- :class:`Canvas`: an SVG document of rectangles, lines, circles, text and hover titles.
- :class:`Axes`: data ranges (linear or log) mapped onto a rectangle of the canvas, with ticks.
- :func:`heatmap`, :func:`ramp`, :func:`fmt`: a heat map with its colour bar, the colour ramp, tick labels.
"""

from clew.render.svg import Axes, Canvas, fmt, heatmap, ramp

__all__ = ["Axes", "Canvas", "fmt", "heatmap", "ramp"]
