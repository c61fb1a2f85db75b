"""Figures with matplotlib's object API: no pyplot, no global state, readable text.

    from polysdk.reporting.figures import new_figure, heatmap, png_bytes
    fig, axes = new_figure(1, 2, width=10, height=3.5)
    heatmap(axes[0], matrix, label="activation", xlabel="feature", ylabel="neuron")
    axes[1].plot(x, y)
    data = png_bytes(fig)            # fonts raised to MIN_FONT_PT, PNG at 2x for sharpness

Figures are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas directly;
nothing here calls ``pyplot`` or changes ``rcParams`` (importing this module sets
nothing). Sizes are chosen for the HTML page: an image is shown at ``DPI`` CSS pixels per
inch (saved at ``2 * DPI`` so it stays sharp on dense screens), so a font of ``p``
points is ``p * DPI / 72`` CSS pixels at 100% zoom: ``MIN_FONT_PT`` = 9 pt = 12 px.
:func:`png_bytes` raises every text below that, and :func:`check_figure` reports
what would break the rules (a heat map without a colour bar, a font too small).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DPI", "MIN_FONT_PT", "FONT_PT", "MAX_WIDTH_IN", "new_figure", "heatmap",
           "colors_for", "png_bytes", "save_png", "check_figure", "css_width"]

#: CSS pixels per inch of figure on the page (the browser's 96 px per inch)
DPI = 96
#: the smallest font on a figure: 9 pt = 12 CSS px at 100% zoom
MIN_FONT_PT = 9.0
#: the default font of labels and ticks (10 pt = 13.3 px)
FONT_PT = 10.0
#: the widest figure (13 in = 1248 px: inside the page's 1400 px column, never shrunk)
MAX_WIDTH_IN = 13.0


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 6.5,
               height: float = 4.0, squeeze: bool = False, **subplot_kw: Any
               ) -> tuple[Any, np.ndarray]:
    """A ``Figure`` (constrained layout) and its axes as a 2-D array (``squeeze=False``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = min(float(width), MAX_WIDTH_IN)
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=squeeze, **subplot_kw)
    for ax in np.ravel(axes):
        ax.tick_params(labelsize=FONT_PT)
        ax.xaxis.label.set_size(FONT_PT + 1)
        ax.yaxis.label.set_size(FONT_PT + 1)
        ax.title.set_size(FONT_PT + 1)
    return fig, axes


def heatmap(ax: Any, data: np.ndarray, *, label: str, xlabel: str = "", ylabel: str = "",
            title: str = "", cmap: str = "magma", vmin: float | None = None,
            vmax: float | None = None) -> Any:
    """``imshow`` of a matrix with its colour bar (labelled ``label``); returns the image."""
    data = np.asarray(data, dtype=float)
    im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    bar = ax.figure.colorbar(im, ax=ax, shrink=0.9)
    bar.set_label(label, size=FONT_PT)
    bar.ax.tick_params(labelsize=FONT_PT)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return im


def colors_for(values: Sequence[Any], cmap: str = "viridis") -> list[Any]:
    """One colour per value: numeric values by position (log scale when they span a
    decade or more and are positive), others by first appearance."""
    import matplotlib

    colormap = matplotlib.colormaps[cmap]
    vals = np.asarray(values)
    try:
        v = vals.astype(float)
        if np.all(v > 0) and v.max() / v.min() >= 10:
            v = np.log(v)
        lo, hi = np.nanmin(v), np.nanmax(v)
        pos = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    except (TypeError, ValueError):
        uniq = list(dict.fromkeys(vals.tolist()))
        pos = np.array([uniq.index(x) / max(1, len(uniq) - 1) for x in vals.tolist()])
    return [colormap(0.9 * p) for p in pos]


def _raise_fonts(fig: Any) -> None:
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        if text.get_text() and text.get_fontsize() < MIN_FONT_PT:
            text.set_fontsize(MIN_FONT_PT)


def png_bytes(fig: Any, scale: float = 2.0) -> bytes:
    """The figure as PNG (at ``scale * DPI``), every text at least ``MIN_FONT_PT``."""
    _raise_fonts(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI * scale)
    return buf.getvalue()


def save_png(fig: Any, path: str | Path, scale: float = 2.0) -> Path:
    """Write :func:`png_bytes` to ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig, scale))
    return path


def css_width(fig: Any) -> int:
    """The figure's width in CSS pixels on the page."""
    return int(round(fig.get_figwidth() * DPI))


def check_figure(fig: Any) -> list[str]:
    """What breaks the figure rules: texts under ``MIN_FONT_PT``, heat maps (images)
    without a colour bar, a width over ``MAX_WIDTH_IN``. Empty when all is well."""
    from matplotlib.image import AxesImage
    from matplotlib.text import Text

    problems = []
    for text in fig.findobj(Text):
        if text.get_text() and text.get_visible() and text.get_fontsize() < MIN_FONT_PT:
            problems.append(f"text {text.get_text()!r} at {text.get_fontsize():.1f} pt")
    for im in fig.findobj(AxesImage):
        if getattr(im, "colorbar", None) is None:
            problems.append(f"an image on axes {im.axes.get_title()!r} has no colour bar")
    if fig.get_figwidth() > MAX_WIDTH_IN + 1e-9:
        problems.append(f"width {fig.get_figwidth():.1f} in > {MAX_WIDTH_IN} in")
    return problems

