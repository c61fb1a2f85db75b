"""The atlas page: the unit x detector matrix, the agreement heat maps, precision and
recall against planted truth, and links to the neuron pages of the disputed units."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from polysdk.reporting.page import ReportPage

__all__ = ["matrix_figure", "agreement_figure", "write_atlas_page", "DEFINITIONS", "add_atlas"]

#: each detector's definition of "polysemantic", in a line
DEFINITIONS = {
    "class_selectivity": "seed 001: fires (> 0) for inputs of two or more classes",
    "hdbscan": "seed 000: its top inputs form two or more HDBSCAN clusters",
    "feature_capacity": "seed 002: answers features, capacity (max / sum) not above 0.999",
    "concept_sets": "seed 003: among the top units of two or more sets of texts",
    "concept_ranking": "seed 004: a top-ranked unit of two or more concept labels",
    "dictionary_features": "sparse autoencoder: two or more dictionary features each hold "
                           ">= 10% of its decoder mass",
}


class _Page(ReportPage):
    def raw(self, markup: str) -> _Page:
        self._parts.append(markup)
        return self


def _percentiles(score: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    out = np.zeros_like(score, dtype=float)
    for j in range(score.shape[1]):
        s = np.nan_to_num(score[:, j])
        out[:, j] = 0.5 if np.ptp(s) == 0 else (rankdata(s) - 1) / max(1, s.size - 1)
    return out


def unit_order(ds: xr.Dataset) -> np.ndarray:
    """Units sorted by how many detectors flag them, then by mean score percentile."""
    pct = _percentiles(ds["score"].values).mean(1) if ds.sizes["detector"] else np.zeros(ds.sizes["unit"])
    return np.lexsort((-pct, -ds["flag_count"].values))


def _unit_ticks(ax: Any, order: np.ndarray) -> None:
    n = order.size
    if n <= 60:
        ax.set_xticks(np.arange(n), [str(u) for u in order], rotation=90)
    else:
        ticks = np.linspace(0, n - 1, 11).round().astype(int)
        ax.set_xticks(ticks, [str(order[t]) for t in ticks])


def matrix_figure(ds: xr.Dataset) -> Any:
    """Units x detectors: verdicts (and the planted truth) above, score percentiles below."""
    from matplotlib.colors import ListedColormap

    from polysdk.reporting.figures import heatmap, new_figure

    names = [str(d) for d in ds["detector"].values]
    order = unit_order(ds)
    verdict = ds["polysemantic"].values[order].T.astype(float)
    rows = list(names)
    if "truth" in ds:
        verdict = np.vstack([verdict, ds["truth"].values[order][None].astype(float)])
        rows.append("planted truth")
    pct = _percentiles(ds["score"].values)[order].T
    tall = 0.42 * len(rows) + 1.6
    fig, axes = new_figure(2, 1, width=13, height=2 * tall + 0.4,
                           gridspec_kw={"height_ratios": [len(rows), len(names)]})
    im = heatmap(axes[0, 0], verdict, label="verdict", cmap=ListedColormap(["#eeeeee", "#b2182b"]),
                 vmin=0, vmax=1, title="Verdict per unit (red: flagged polysemantic)")
    im.colorbar.set_ticks([0.25, 0.75], labels=["not flagged", "flagged"])
    axes[0, 0].set_yticks(np.arange(len(rows)), rows)
    if "truth" in ds:   # the planted truth is no detector: set it apart
        axes[0, 0].axhline(len(names) - 0.5, color="black", linewidth=2.5)
    heatmap(axes[1, 0], pct, label="score percentile\n(ties: mean rank)", cmap="viridis", vmin=0, vmax=1,
            title="Score per unit, as its percentile within the detector (1 = most polysemantic)",
            xlabel=f"unit (sorted by number of detectors flagging it; {order.size} units)")
    axes[1, 0].set_yticks(np.arange(len(names)), names)
    for ax in axes[:, 0]:
        _unit_ticks(ax, order)
    fig.get_layout_engine().set(h_pad=0.12)   # the lower title clear of the upper ticks
    return fig


def agreement_figure(ds: xr.Dataset) -> Any:
    """Jaccard of the flagged sets and Spearman correlation of the scores, pair by pair."""
    from polysdk.reporting.figures import FONT_PT, heatmap, new_figure

    names = [str(d) for d in ds["detector"].values]
    n = len(names)
    side = max(3.6, 0.75 * n + 1.8)
    fig, axes = new_figure(1, 2, width=min(13, 2 * side + 2.4), height=side + 1.2)
    panels = [("jaccard", "Jaccard of flagged sets", "viridis", 0, 1),
              ("spearman", "Spearman correlation of scores", "RdBu_r", -1, 1)]
    for ax, (var, title, cmap, lo, hi) in zip(axes[0], panels):
        m = ds[var].values
        heatmap(ax, m, label=var, cmap=cmap, vmin=lo, vmax=hi, title=title)
        ax.set_xticks(np.arange(n), names, rotation=35, ha="right")
        ax.set_yticks(np.arange(n), names)
        for i in range(n):
            for j in range(n):
                v = m[i, j]
                dark = (v - lo) / (hi - lo) < 0.35 or (var == "spearman" and abs(v) > 0.6) \
                    if np.isfinite(v) else False
                ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.2f}", ha="center",
                        va="center", fontsize=FONT_PT,
                        color="white" if dark else "black")
    return fig


def _a(href: str, text: str) -> str:
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> str:
    """A table whose cells are given as (already escaped) HTML."""
    th = "".join(f'<th{" class=l" if i in left else ""}>{html.escape(h)}</th>'
                 for i, h in enumerate(head))
    body = "\n".join("<tr>" + "".join(f'<td{" class=l" if i in left else ""}>{c}</td>'
                                      for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>\n{body}</table>"


def _f(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.2f}"


def _summary_rows(ds: xr.Dataset) -> list[str]:
    """One summary row of a site: sizes, the most and least alike pair, the best F1."""
    names = [str(d) for d in ds["detector"].values]
    pairs = [(float(ds["jaccard"].values[i, j]), names[i], names[j])
             for i in range(len(names)) for j in range(i + 1, len(names))]
    hi = max(pairs) if pairs else None
    lo = min(pairs) if pairs else None
    best = "no planted truth"
    if "truth" in ds and names:
        f1 = {n: (2 * p * r / (p + r) if p + r else 0.0) for n, p, r in
              zip(names, ds["precision"].values, ds["recall"].values)}
        top = max(f1, key=f1.get)
        best = f"{top}: F1 {f1[top]:.2f}"
    esc = html.escape
    flat = str(int(ds["near_constant"].values.sum())) if "near_constant" in ds else "-"
    return [esc(ds.attrs["site"]), str(ds.sizes["unit"]), flat, str(len(names)),
            str(len(json.loads(ds.attrs.get("skipped_json", "{}")))),
            esc(f"{hi[1]} & {hi[2]}: {hi[0]:.2f}") if hi else "-",
            esc(f"{lo[1]} & {lo[2]}: {lo[0]:.2f}") if lo else "-", esc(best)]


def _near_constant_note(ds: xr.Dataset) -> str:
    """The near-constant units of a site and how many each detector flags ("" if none)."""
    if "near_constant" not in ds or not bool(ds["near_constant"].values.any()):
        return ""
    n_flat = int(ds["near_constant"].values.sum())
    share = float(ds.attrs.get("near_constant_share", 0.05))
    flagged = ", ".join(f"{html.escape(str(d))} {int(c)}" for d, c in zip(
        ds["detector"].values, ds["n_flagged_near_constant"].values))
    return (f"<p><b>{n_flat} of {ds.sizes['unit']} units are near-constant</b> (activation "
            f"std below {share:.0%} of the site's 95th-percentile unit std: dead or pruned). "
            f"Flagged among them: {flagged}. A detector that flags a near-constant unit "
            "reads noise as polysemanticity.</p>")


def _site_section(page: _Page, ds: xr.Dataset, links: Mapping[int, str]) -> None:
    site = ds.attrs["site"]
    names = [str(d) for d in ds["detector"].values]
    skipped = json.loads(ds.attrs.get("skipped_json", "{}"))
    params = json.loads(ds.attrs.get("params_json", "{}"))
    n = ds.sizes["unit"]
    page.raw(f"<h2>Site {html.escape(site)}</h2><p>{n} units, "
             f"{ds.attrs.get('n_inputs', '?')} inputs; labels from "
             f"{html.escape(str(ds.attrs.get('labels_from', 'none')))}.</p>")
    rows = []
    for j, name in enumerate(names):
        shown = {k: v for k, v in params.get(name, {}).items() if v is not None}
        rows.append([html.escape(name), html.escape(DEFINITIONS.get(name, "(third-party)")),
                     f"{int(ds['n_flagged'].values[j])} / {n}",
                     f"<code>{html.escape(json.dumps(shown)[:160])}</code>"])
    for name, why in skipped.items():
        rows.append([html.escape(name), html.escape(DEFINITIONS.get(name, "")),
                     "skipped", html.escape(why)])
    page.raw("<h3>Detectors</h3>" + _table(["detector", "polysemantic when", "flagged",
                                            "parameters / why skipped"], rows, left=(0, 1, 3)))
    if not names:
        page.raw("<p>No detector applied to this site.</p>")
        return
    page.raw(_near_constant_note(ds))
    page.figure(matrix_figure(ds), f"{site}: verdict and score of every unit under every "
                "detector (columns: units, sorted by how many detectors flag them)")
    page.figure(agreement_figure(ds), f"{site}: pairwise agreement (Jaccard: 1 = the same flagged "
                "set, both empty counts as 1; Spearman: n/a where a score is constant)")
    pair_rows = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            pair_rows.append([html.escape(names[i]), html.escape(names[j]),
                              _f(float(ds["jaccard"].values[i, j])),
                              _f(float(ds["spearman"].values[i, j]))])
    if pair_rows:
        page.raw("<h3>Agreement, pair by pair</h3>"
                 + _table(["detector", "detector", "Jaccard", "Spearman"], pair_rows, left=(0, 1)))
    if "truth" in ds:
        pr = []
        for j, name in enumerate(names):
            p, r = float(ds["precision"].values[j]), float(ds["recall"].values[j])
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            pr.append([html.escape(name), f"{int(ds['n_flagged'].values[j])}", _f(p), _f(r), _f(f1)])
        page.raw(f"<h3>Against the planted truth ({int(ds['truth'].values.sum())} planted "
                 f"polysemantic of {n})</h3>"
                 + _table(["detector", "flagged", "precision", "recall", "F1"], pr))
    if links:
        head = ["unit", "disagreement"] + names + (["truth"] if "truth" in ds else [])
        body = []
        for u, href in links.items():
            row = ds.isel(unit=u)
            cells = [_a(href, f"unit\u00a0{u}"), _f(float(row["disagreement"]))]
            for d in names:
                flag = bool(row["polysemantic"].sel(detector=d))
                cells.append(("<b>flagged</b>" if flag else "&middot;") + "<br>"
                             + html.escape(str(row["detail"].sel(detector=d).values)))
            if "truth" in ds:
                cells.append("poly" if bool(row["truth"]) else "mono")
            body.append(cells)
        page.raw("<h3>Units the detectors disagree on most (neuron pages)</h3>"
                 "<p>Disagreement: min(flagging, not flagging) / half the detectors (1 = an "
                 "even split).</p>" + _table(head, body, left=tuple(range(2, len(head)))))
    else:
        page.raw("<p>The detectors agree on every unit of this site.</p>")


def write_atlas_page(atlas: Any, path: str | Path, pages: int = 10,
                     units: Mapping[str, Sequence[int]] | None = None, title: str | None = None,
                     **page_kw: Any) -> Path:
    """Write the atlas page and the neuron pages it links to; returns the page's path."""
    from polysdk.atlas.neuron_page import neuron_page_path, write_neuron_page

    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        path = path / "atlas.html"
    results = atlas._fitted()
    src = atlas.source
    where = str(getattr(src, "path", "")) or ", ".join(results) + " (in memory)"
    page = _Page(title or f"Detector agreement atlas: {where}",
                 intro="Every applicable definition of a polysemantic neuron, fitted on the same "
                       "site: which units each flags, how far the definitions agree, and (with "
                       "planted ground truth) how right each is.")
    page.raw("<h2>Summary</h2>" + _table(
        ["site", "units", "near-constant", "detectors fitted", "skipped",
         "most alike (Jaccard)", "least alike (Jaccard)", "closest to the planted truth"],
        [_summary_rows(ds) for ds in results.values()], left=(0, 5, 6, 7)))
    for site, ds in results.items():
        chosen = list(atlas.disputed(pages, site=site))
        chosen += [int(u) for u in (units or {}).get(site, []) if int(u) not in chosen]
        links = {}
        for u in chosen:
            rel = neuron_page_path(site, u)
            back = os.path.relpath(path, (path.parent / rel).parent)
            kw = {k: v for k, v in page_kw.items()}
            if isinstance(kw.get("interventions"), Mapping) and site in kw["interventions"]:
                kw["interventions"] = kw["interventions"][site]
            if isinstance(kw.get("interventions"), Mapping):
                kw["interventions"] = kw["interventions"].get(u)
            write_neuron_page(path.parent / rel, src, u, site=site, atlas=atlas,
                              atlas_href=back, **kw)
            links[u] = rel
        _site_section(page, ds, links)
    return page.write(path)


def add_atlas(page: ReportPage, source: Any, out: str | Path, *, sites: Any = None,
              name: str = "atlas.html", **atlas_kw: Any) -> Any:
    """One call for a study's report: fit an :class:`~polysdk.atlas.Atlas` on ``source``,
    write its page as ``<out>/<name>`` (with its neuron pages), and add to ``page`` a
    section with the agreement heat map and a link. Returns the fitted atlas."""
    from polysdk.atlas._atlas import Atlas

    page_kw = {k: atlas_kw.pop(k) for k in ("tokenizer", "images", "interventions", "pages")
               if k in atlas_kw}
    atlas = Atlas(source, sites=sites, **atlas_kw).fit()
    target = atlas.to_html(Path(out) / name, **page_kw)
    page.section("Detector agreement atlas",
                 "Every applicable polysemanticity detector on the same site; the full page "
                 "(matrix, precision / recall, neuron pages) is linked below.")
    for site, ds in atlas.results_.items():
        if ds.sizes["detector"]:
            page.figure(agreement_figure(ds), f"{site}: agreement between detectors")
    if hasattr(page, "_parts"):
        page._parts.append(f'<p><a href="{html.escape(name)}">open the atlas page</a></p>')
    atlas.page_ = target
    return atlas
