"""HTML parts for showing examples: text with a token heat map, an image montage, rows.

    from polysdk.reporting.examples import token_heatmap_html, colour_scale_html, montage_html
    token_heatmap_html(["def", "f", "(", "x", ")"], [0.1, 2.0, 0.0, 0.3, 0.0], vmax=2.0)
    colour_scale_html(0.0, 2.0, "activation")       # the heat map's colour bar, in HTML
    montage_html(images, captions=["0.93 dog", ...])  # (N, H, W[, C]) or (N, C, H, W)

Everything is static HTML (inline styles, images as base64 PNG): it works from a file,
with no server and no network. Texts stay text (searchable, always readable at the
page's font size); images are shown at a fixed size, small ones enlarged without
smoothing. White to red is the seed 003 heat map (0 to the largest activation);
negative values (post-LayerNorm sites) run white to blue.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["token_heatmap_html", "colour_scale_html", "montage_html", "image_png",
           "as_image", "rows_table_html", "token_colour", "EXAMPLES_STYLE"]

#: CSS for the parts (add once per page)
EXAMPLES_STYLE = """.tokens{font-family:ui-monospace,monospace;font-size:14px;line-height:2;
margin:.3em 0 .8em 0}.tokens span{padding:1px 2px;margin:0 1px;border-radius:2px}
.scale{display:inline-flex;align-items:center;gap:.5em;font-size:14px;margin:.3em 0}
.scale .bar{width:220px;height:14px;border:1px solid #999}
.montage{display:flex;flex-wrap:wrap;gap:10px}.montage figure{margin:0;text-align:center}
.montage figcaption{font-size:13px;max-width:160px}
.montage img{image-rendering:pixelated;border:1px solid #ccc}"""

_RED = np.array([178, 24, 43])
_BLUE = np.array([33, 102, 172])


def token_colour(value: float, vmax: float, vmin: float = 0.0) -> tuple[str, str]:
    """(background, text colour) of one token: white to red above 0, white to blue below."""
    if not np.isfinite(value):
        return "#eeeeee", "#777777"
    if value >= 0:
        t = 0.0 if vmax <= 0 else min(1.0, value / vmax)
        rgb = 255 + t * (_RED - 255)
    else:
        t = 0.0 if vmin >= 0 else min(1.0, value / vmin)
        rgb = 255 + t * (_BLUE - 255)
    r, g, b = (int(round(c)) for c in rgb)
    return f"rgb({r},{g},{b})", ("#ffffff" if t > 0.55 else "#111111")


def token_heatmap_html(tokens: Sequence[str], values: Sequence[float], vmax: float | None = None,
                       vmin: float | None = None, fmt: str = "{:.3g}") -> str:
    """One text as token spans coloured by ``values`` (hover: the value)."""
    vals = np.asarray(values, dtype=float)
    if len(tokens) != vals.size:
        from polysdk.errors import ConfigError

        raise ConfigError(f"{len(tokens)} tokens but {vals.size} values; give one value per token.")
    finite = vals[np.isfinite(vals)]
    top = float(vmax) if vmax is not None else float(finite.max(initial=0.0))
    low = float(vmin) if vmin is not None else float(min(0.0, finite.min(initial=0.0)))
    spans = []
    for tok, v in zip(tokens, vals):
        bg, fg = token_colour(float(v), top, low)
        spans.append(f'<span style="background:{bg};color:{fg}" title="{fmt.format(v)}">'
                     f"{html.escape(str(tok))}</span>")
    return '<div class="tokens">' + "".join(spans) + "</div>"


def colour_scale_html(vmin: float, vmax: float, label: str) -> str:
    """The colour bar of :func:`token_heatmap_html`, as an HTML gradient with its range."""
    stops = []
    if vmin < 0:
        stops.append(token_colour(vmin, vmax, vmin)[0])
    stops += ["rgb(255,255,255)", token_colour(vmax, vmax, vmin)[0]]
    return (f'<div class="scale"><span>{html.escape(label)}</span><span>{vmin:.3g}</span>'
            f'<span class="bar" style="background:linear-gradient(to right,{",".join(stops)})">'
            f"</span><span>{vmax:.3g}</span></div>")


def as_image(img: Any) -> np.ndarray:
    """One image as (H, W) or (H, W, 3|4) floats in [0, 1]; (C, H, W) is transposed."""
    if hasattr(img, "detach"):  # a torch tensor
        img = img.detach().cpu().numpy()
    a = np.asarray(img, dtype=float)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        from polysdk.errors import ConfigError

        raise ConfigError(f"an image must be (H, W), (H, W, C) or (C, H, W); got shape {a.shape}.")
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if lo < 0 or hi > 1:   # not already in [0, 1] (0-255 bytes, normalised tensors)
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.nan_to_num(a)


def image_png(img: Any) -> bytes:
    """PNG bytes of one image (see :func:`as_image`)."""
    from PIL import Image

    a = (as_image(img) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def montage_html(images: Sequence[Any], captions: Sequence[str] = (), size: int = 128) -> str:
    """A grid of images, each ``size`` CSS pixels wide, with a caption under each."""
    cells = []
    for i, img in enumerate(images):
        src = "data:image/png;base64," + base64.b64encode(image_png(img)).decode("ascii")
        cap = html.escape(captions[i]) if i < len(captions) else ""
        cells.append(f'<figure><img src="{src}" width="{size}" alt="{cap}">'
                     f"<figcaption>{cap}</figcaption></figure>")
    return '<div class="montage">' + "".join(cells) + "</div>"


def rows_table_html(rows: Sequence[Mapping[str, Any]], left: Sequence[str] = ()) -> str:
    """A plain table of dict rows (columns from the first row); values escaped."""
    if not rows:
        return "<p>(none)</p>"
    from polysdk.reporting.page import fmt

    head = list(rows[0])

    def cell(tag: str, key: str, text: str) -> str:
        cls = ' class="l"' if key in left else ""
        return f"<{tag}{cls}>{text}</{tag}>"

    body = "\n".join("<tr>" + "".join(cell("td", h, html.escape(fmt(r.get(h, ""))))
                                      for h in head) + "</tr>" for r in rows)
    return ("<table><tr>" + "".join(cell("th", h, html.escape(h)) for h in head)
            + f"</tr>\n{body}</table>")
