"""Per-token heat maps of one neuron over sets of texts, and a neuron page (seed 003).

    from polysdk.reporting.text_heatmap import set_heatmaps_html, neuron_page_html, display_token
    block = set_heatmaps_html({"fortran": [(tokens, values), ...], "medical": [...]},
                              title="L3N18", label="blocks.3.mlp.hook_post")
    page = neuron_page_html("L3N18 (SoLU twin)", sets, summary_rows=[...], verdict="unclear")
    Path("L3N18.html").write_text(page)

The seed's ``basic_neuron_vis``, as static HTML: each token of each text on a white
to red background (white = 0, red = the neuron's largest activation over *all* the
sets, so sets are comparable at a glance; negative values, e.g. after SoLU's LayerNorm,
white to blue), the token text itself readable (dark on light, white on dark), its
value on hover, line breaks kept, and one colour bar per neuron. Built on
:mod:`polysdk.reporting.examples` (``token_heatmap_html``, ``colour_scale_html``).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polysdk.reporting.examples import EXAMPLES_STYLE, colour_scale_html, token_heatmap_html
from polysdk.reporting.page import STYLE

__all__ = ["display_token", "display_tokens", "set_heatmaps_html", "neuron_page_html",
           "HEATMAP_STYLE", "fixed_scale"]

#: CSS for the heat maps (once per page): line breaks inside a text are kept
HEATMAP_STYLE = EXAMPLES_STYLE + """
.hm .tokens{white-space:pre-wrap;line-height:1.9;margin:.2em 0 .7em 0}
.hm .tokens span{margin:0;padding:1px 0}
.hm h4{margin:.8em 0 .2em 0;font-size:15px}.hm .text-meta{font-size:13px;color:#555}"""


def display_token(token: str, wordpiece: bool = False) -> str:
    """How a token is shown: ``▁``/``Ġ`` as a space, ``Ċ``/newline kept as a line break
    (a visible ``⏎`` before it), WordPiece ``##x`` joined to the word before (others
    then get a leading space)."""
    t = str(token)
    if wordpiece:
        if t.startswith("##"):
            t = t[2:]
        elif t not in ("[CLS]",):
            t = " " + t
    t = t.replace("▁", " ").replace("Ġ", " ").replace("Ċ", "\n")
    return t.replace("\n", "⏎\n")


def display_tokens(tokens: Sequence[str]) -> list[str]:
    """:func:`display_token` for a text's tokens (WordPiece when any starts with ``##``)."""
    wp = any(str(t).startswith("##") for t in tokens)
    return [display_token(t, wp) for t in tokens]


def fixed_scale(values: Sequence[np.ndarray]) -> tuple[float, float]:
    """(vmin, vmax) over all texts: vmin = min(0, smallest), vmax = largest (or 1)."""
    finite = [np.asarray(v, dtype=float)[np.isfinite(v)] for v in values]
    allv = np.concatenate(finite) if finite else np.zeros(1)
    lo = float(min(0.0, allv.min(initial=0.0)))
    hi = float(allv.max(initial=0.0)) or 1.0
    return lo, hi


def set_heatmaps_html(sets: Mapping[str, Sequence[tuple[Sequence[str], np.ndarray]]], *,
                      title: str = "", label: str = "activation", max_texts: int | None = None,
                      set_notes: Mapping[str, str] | None = None) -> str:
    """One neuron over every set's texts: a colour bar, then per set its texts as
    token heat maps, all on one fixed scale."""
    vmin, vmax = fixed_scale([v for texts in sets.values() for _, v in texts])
    parts = ['<div class="hm">']
    if title:
        parts.append(f"<h3>{html.escape(title)}</h3>")
    parts.append(colour_scale_html(vmin, vmax, label))
    for name, texts in sets.items():
        note = (set_notes or {}).get(name, "")
        parts.append(f"<h4>{html.escape(name)}"
                     + (f' <span class="text-meta">{html.escape(note)}</span>' if note else "")
                     + "</h4>")
        for i, (toks, vals) in enumerate(texts):
            if max_texts is not None and i >= max_texts:
                parts.append(f'<p class="text-meta">({len(texts) - max_texts} more texts on '
                             "the neuron page)</p>")
                break
            vals = np.asarray(vals, dtype=float)
            mean = float(np.nanmean(vals)) if vals.size else float("nan")
            parts.append(f'<div class="text-meta">text {i}: mean {mean:.3g}, max '
                         f"{float(np.nanmax(vals)) if vals.size else float('nan'):.3g}</div>")
            parts.append(token_heatmap_html(display_tokens(toks), vals, vmax=vmax, vmin=vmin))
    parts.append("</div>")
    return "\n".join(parts)


def _rows_html(rows: Sequence[Mapping[str, Any]]) -> str:
    from polysdk.reporting.examples import rows_table_html

    return rows_table_html(rows, left=[k for k in (rows[0] if rows else {})
                                       if isinstance(rows[0][k], str)])


def neuron_page_html(title: str, sets: Mapping[str, Sequence[tuple[Sequence[str], np.ndarray]]],
                     *, verdict: str = "", evidence: str = "",
                     summary_rows: Sequence[Mapping[str, Any]] = (),
                     label: str = "activation", intro: str = "", back: str = "") -> str:
    """A whole page for one neuron: verdict and evidence, its set table, its
    top-activating texts and tokens, and the heat maps of every text of every set."""
    esc = html.escape
    texts = [(name, i, toks, np.asarray(v, dtype=float)) for name, items in sets.items()
             for i, (toks, v) in enumerate(items)]
    by_mean = sorted(texts, key=lambda t: -np.nanmean(t[3]) if t[3].size else 0.0)[:5]
    top_texts = {f"{n} #{i} (mean {np.nanmean(v):.3g})": [(t, v)] for n, i, t, v in by_mean}
    tok_rows: dict[str, list[float]] = {}
    tok_set: dict[str, set[str]] = {}
    for name, _, toks, vals in texts:
        for t, v in zip(display_tokens(toks), vals):
            key = t.replace("⏎\n", "⏎")
            tok_rows.setdefault(key, []).append(float(v))
            tok_set.setdefault(key, set()).add(name)
    top_tok = sorted(tok_rows.items(), key=lambda kv: -max(kv[1]))[:15]
    tok_table = [{"token": repr(k), "max": max(v), "mean": float(np.mean(v)), "count": len(v),
                  "sets": ", ".join(sorted(tok_set[k]))} for k, v in top_tok]
    body = [f"<h1>{esc(title)}</h1>"]
    if back:
        body.append(f'<p><a href="{esc(back)}">back to the report</a></p>')
    if intro:
        body.append(f"<p>{esc(intro)}</p>")
    if verdict:
        body.append(f"<p><b>Verdict: {esc(verdict)}</b></p>")
    if evidence:
        body.append("<ul>" + "".join(f"<li>{esc(e.strip())}</li>" for e in evidence.split("|"))
                    + "</ul>")
    if summary_rows:
        body.append("<h2>Sets</h2>" + _rows_html(summary_rows))
    body.append("<h2>Top-activating tokens</h2>" + _rows_html(tok_table))
    body.append("<h2>Top-activating texts</h2>"
                + set_heatmaps_html(top_texts, label=label))
    body.append("<h2>Every text of every set</h2>" + set_heatmaps_html(sets, label=label))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}'
            f"</title><style>{STYLE}\n{HEATMAP_STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
