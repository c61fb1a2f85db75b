"""The reporting toolkit: figures (matplotlib's object API), HTML pages, run indexes.

    from polysdk.reporting import ReportPage, Finding, new_figure, heatmap, write_index
    fig, axes = new_figure(1, 2, width=10)
    heatmap(axes[0, 0], matrix, label="activation")      # always with its colour bar
    ReportPage("My study").findings([...]).figure(fig, "caption").write("out/report.html")
    write_index("runs")                                  # runs/index.html

Each study has its own report module (e.g. :mod:`polysdk.studies.toy_models_report`)
built from these parts. Importing this package sets nothing in matplotlib.
"""

from polysdk.reporting.figures import (
    DPI, MIN_FONT_PT, check_figure, colors_for, heatmap, new_figure, png_bytes, save_png,
)
from polysdk.reporting.index import find_runs, write_index
from polysdk.reporting.page import Finding, ReportPage, fmt

__all__ = ["DPI", "MIN_FONT_PT", "Finding", "ReportPage", "check_figure", "colors_for",
           "find_runs", "fmt", "heatmap", "new_figure", "png_bytes", "save_png",
           "write_index"]
