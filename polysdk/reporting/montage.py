"""Image montages for reports: rows of images (one row per group), a caption under each.

    from polysdk.reporting.montage import montage_figure
    fig = montage_figure({"cluster A (52)": images_a, "cluster B (31)": images_b},
                         captions={"cluster A (52)": ["red plain disc", ...], ...},
                         title="features.10 unit 12: top images per cluster")
    page.figure(fig, "Top images per cluster", save_as="runs/x/figures/montage.png")

``images`` of a group are uint8 or float in [0, 1], ``(n, H, W, 3)``, ``(n, 3, H, W)`` or
``(n, H, W)``; at most ``per_row`` are shown per group, in the given order. A figure of
matplotlib's object API (:func:`polysdk.reporting.new_figure`), so it goes into a
:class:`~polysdk.reporting.ReportPage` like any figure; captions are drawn at the page's
minimum font size or larger. The HTML counterpart for text (token heat maps) is the
SoLU study's; this is the image one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polysdk.reporting.figures import MAX_WIDTH_IN, MIN_FONT_PT, new_figure

__all__ = ["as_rgb", "montage_figure"]


def as_rgb(images: Any) -> np.ndarray:
    """``(n, H, W, 3)`` uint8 from uint8/float images in HWC, CHW or grey layout.

    >>> as_rgb(np.zeros((2, 3, 4, 5))).shape
    (2, 4, 5, 3)
    """
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4:
        raise ValueError(f"images must be (n, H, W[, 3]) or (n, 3, H, W), got {arr.shape}")
    if arr.shape[-1] not in (1, 3) and arr.shape[1] in (1, 3):
        arr = np.moveaxis(arr, 1, -1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(float), 0, 1) * 255).round().astype(np.uint8)
    return arr


def montage_figure(groups: Mapping[str, Any], captions: Mapping[str, Sequence[str]] | None = None,
                   *, per_row: int = 8, title: str = "", cell_in: float = 1.45,
                   caption_lines: int = 2) -> Any:
    """One row per group (its label on the left), up to ``per_row`` images each, the
    caption (e.g. the image's generating factors) under each image."""
    names = list(groups)
    if not names:
        raise ValueError("montage_figure needs at least one group of images")
    per_row = max(1, int(per_row))
    width = min(MAX_WIDTH_IN, cell_in * per_row + 1.3)
    cell = (width - 1.3) / per_row
    text_h = 0.19 * caption_lines + 0.05
    fig, axes = new_figure(len(names), per_row, width=width,
                           height=len(names) * (cell + text_h) + (0.35 if title else 0.1))
    for r, name in enumerate(names):
        imgs = as_rgb(groups[name])[:per_row] if len(groups[name]) else np.zeros((0, 1, 1, 3))
        caps = list((captions or {}).get(name, []))[:per_row]
        for c in range(per_row):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(c < len(imgs))
            if c < len(imgs):
                ax.imshow(imgs[c], interpolation="nearest")
                if c < len(caps):
                    ax.set_xlabel(caps[c], fontsize=MIN_FONT_PT, linespacing=1.1)
            else:
                ax.set_facecolor("none")
            if c == 0:
                ax.set_ylabel(name, fontsize=MIN_FONT_PT + 1)
    if title:
        fig.suptitle(title, fontsize=MIN_FONT_PT + 2)
    return fig
