"""Neuron pages: one static HTML page per unit of any store.

    from polysdk.atlas import write_neuron_page
    write_neuron_page("out/unit-7.html", store, 7, site="fc1", atlas=atlas,
                      tokenizer=tok, images=images, interventions={"zero ablation": {...}})

A page shows the unit's top-activating examples (texts with a token heat map when the
site holds tokens: ``token_str``/``token`` strings, or ``token_id``/``input_ids``
decoded with ``tokenizer``; images as a montage when the caller or the store
(an ``image`` variable of the site's group, or of a Dataset source) gives them; plain rows of coordinate values otherwise), its
activation histogram by label, its score and verdict under every detector of
``atlas``, and the interventions' effects the caller measured. Images are embedded
as base64; the page needs no server and no network.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from polysdk.errors import ConfigError, DetectorInputError

__all__ = ["neuron_page", "write_neuron_page", "neuron_page_path", "unit_inputs"]

TOKEN_STR_COORDS = ("token_str", "token")
TOKEN_ID_COORDS = ("token_id", "input_ids")
IMAGE_COORDS = ("image", "images")
MASK_COORDS = ("attention_mask", "mask")
MAX_LABELS = 10


def neuron_page_path(site: str, unit: int) -> str:
    """The page's path relative to the atlas page: ``neurons/<site>/unit-<u>.html``."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in site)
    return f"neurons/{safe}/unit-{int(unit)}.html"


def _site_images(source: Any, site: str) -> Any:
    """The ``image`` variable of the site's Dataset (a store's site group, or a Dataset
    passed as the source), indexed by sample position; None when there is none."""
    ds = None
    if isinstance(source, xr.Dataset):
        ds = source
    elif hasattr(source, "open") and hasattr(source, "sites"):
        try:
            ds = source.open(site)
        except Exception:  # not a store we can open per site
            return None
    if ds is None:
        return None
    for name in IMAGE_COORDS:
        if name in ds.variables and ds[name].dims[:1] == ("sample",):
            return ds[name]
    return None


def _site_array(source: Any, site: str | None, atlas: Any) -> tuple[str, xr.DataArray]:
    if hasattr(source, "read_result") and hasattr(source, "sites"):
        sites = list(source.sites)
        if site is None:
            atlas_sites = list(getattr(atlas, "results_", {}) or {})
            pool = atlas_sites or sites
            if len(pool) != 1:
                raise ConfigError(f"the store has sites {sites}; choose one with site=.")
            site = pool[0]
        if site not in sites:
            from polysdk.errors import SiteNotFoundError, closest_names

            raise SiteNotFoundError(f"site {site!r} is not in the store; closest: "
                                    f"{closest_names(site, sites) or sites}")
        return site, source[site]
    if isinstance(source, xr.Dataset):
        source = source["activation"]
    if not isinstance(source, xr.DataArray):
        raise DetectorInputError(f"a neuron page reads an ActivationStore or a DataArray, got "
                                 f"{type(source).__name__}.")
    name = site or source.attrs.get("site") or (
        source.name if isinstance(source.name, str) and source.name != "activation" else None)
    return name or "activations", source


def _first(coords: Any, names: Sequence[str], dims: tuple[str, ...] | None = None) -> str | None:
    for n in names:
        if n in coords and (dims is None or tuple(coords[n].dims) == dims):
            return n
    return None


def unit_inputs(acts: xr.DataArray, unit: int, position: Any = "max") -> dict[str, Any]:
    """The unit's value per input (a text, or a sample) and, for text, per token.

    Returns ``kind`` ("flat", "padded", "rows"), ``value`` (per input), ``input``
    (the input ids: the ``sample`` coordinate) and for text ``token_value``,
    ``text_of`` (per token: its input's index), ``token_rows`` (flat rows or
    (sample, position) pairs of the real tokens).
    """
    n_units = acts.sizes["unit"]
    if not 0 <= int(unit) < n_units:
        raise ConfigError(f"unit {unit} is out of range: the site has {n_units} units "
                          f"(0..{n_units - 1}).")
    col = acts.isel(unit=int(unit))
    if "token" in acts.dims:
        v = np.asarray(col.values, dtype=float)
        sample = np.asarray(acts.coords["sample"].values)
        ids, text_of = np.unique(sample, return_inverse=True)
        per = np.full(ids.size, -np.inf)
        np.maximum.at(per, text_of, v)
        return {"kind": "flat", "value": per, "input": ids, "token_value": v,
                "text_of": text_of, "token_rows": np.arange(v.size)}
    if "position" in acts.dims and not ({"y", "x"} & set(acts.dims)):
        v = np.asarray(col.transpose("sample", "position").values, dtype=float)
        mname = _first(acts.coords, MASK_COORDS)
        mask = (np.asarray(acts.coords[mname].transpose("sample", "position").values).astype(bool)
                if mname else np.ones(v.shape, dtype=bool))
        per = np.where(mask, v, -np.inf).max(1)
        s, p = np.nonzero(mask)
        ids = (np.asarray(acts.coords["sample"].values) if "sample" in acts.coords
               else np.arange(v.shape[0]))
        return {"kind": "padded", "value": per, "input": ids, "token_value": v[s, p],
                "text_of": s, "token_rows": np.stack([s, p], 1), "mask": mask}
    if len(acts.dims) > 2:
        from polysdk import dims as D

        col = D.select_array(acts.isel(unit=[int(unit)]), position).isel(unit=0)
    v = np.asarray(col.values, dtype=float)
    ids = np.asarray(acts.coords["sample"].values) if "sample" in acts.coords else np.arange(v.size)
    return {"kind": "rows", "value": v, "input": ids}


def _decode(ids: Sequence[int], tokenizer: Any) -> list[str]:
    ids = [int(i) for i in ids]
    if tokenizer is None:
        return [f"#{i}" for i in ids]
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    if hasattr(tokenizer, "decode"):
        return [str(tokenizer.decode([i])) for i in ids]
    if callable(tokenizer):
        return [str(tokenizer(i)) for i in ids]
    raise ConfigError("tokenizer= needs convert_ids_to_tokens(ids), decode([id]) or to be a "
                      "callable id -> string.")


def _tokens(acts: xr.DataArray, info: dict[str, Any], rows: np.ndarray, tokenizer: Any
            ) -> list[str] | None:
    """Token strings of the given token rows (flat: row numbers; padded: (s, p) pairs)."""
    flat = info["kind"] == "flat"
    dims = ("token",) if flat else ("sample", "position")
    sname = _first(acts.coords, TOKEN_STR_COORDS, dims)
    if sname is not None and acts.coords[sname].dtype.kind not in "OUT":
        sname = None   # the flat layout's own `token` index (row numbers), not strings
    iname = _first(acts.coords, TOKEN_ID_COORDS, dims)
    if sname is None and iname is None:
        return None
    name = sname or iname
    coord = acts.coords[name]
    vals = (np.asarray(coord.values)[rows] if flat else
            np.asarray(coord.transpose("sample", "position").values)[rows[:, 0], rows[:, 1]])
    return [str(t) for t in vals] if sname else _decode(vals, tokenizer)


def _labels(acts: xr.DataArray, labels: Any, info: dict[str, Any]) -> tuple[np.ndarray, str] | None:
    """(label per histogram entry, level): per input, or per token for token labels."""
    if labels is None:
        labels = _first(acts.coords, ("label", "concept"))
        if labels is None:
            return None
    arr = acts.coords[labels] if isinstance(labels, str) else labels
    dims = tuple(getattr(arr, "dims", ()))
    vals = np.asarray(getattr(arr, "values", arr))
    kind = info["kind"]
    if kind == "flat":
        if vals.shape[0] == info["token_value"].size:   # per token
            per_text = [np.unique(vals[info["text_of"] == t]) for t in range(info["value"].size)]
            if all(p.size == 1 for p in per_text):
                return np.array([p[0] for p in per_text]), "input"
            return vals, "token"
        return vals, "input"
    if kind == "padded" and (vals.ndim == 2 or dims == ("sample", "position")):
        if dims == ("position", "sample"):
            vals = vals.T
        rows = info["token_rows"]
        return vals[rows[:, 0], rows[:, 1]], "token"
    return vals, "input"


def _histogram(values: np.ndarray, labels: np.ndarray | None, level: str, unit: int) -> Any:
    from polysdk.reporting.figures import FONT_PT, colors_for, new_figure

    fig, axes = new_figure(1, 1, width=9.5, height=3.6)
    ax = axes[0, 0]
    v = values[np.isfinite(values)]
    edges = np.linspace(v.min(), v.max() if v.max() > v.min() else v.min() + 1, 41)
    if labels is None:
        ax.hist(v, bins=edges, color="#444444", histtype="stepfilled", alpha=0.8)
    else:
        lab = np.array([str(x) for x in np.asarray(labels).tolist()])[np.isfinite(values)]
        names, counts = np.unique(lab, return_counts=True)
        order = names[np.argsort(-counts, kind="stable")]
        keep = list(order[:MAX_LABELS - 1]) if order.size > MAX_LABELS else list(order)
        if order.size > MAX_LABELS:
            lab = np.where(np.isin(lab, keep), lab, "other")
            keep.append("other")
        for name, colour in zip(keep, colors_for(list(range(len(keep))), cmap="tab10")):
            ax.hist(v[lab == name], bins=edges, histtype="step", linewidth=1.8,
                    color=colour, label=f"{name} ({int((lab == name).sum())})")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=FONT_PT,
                  title="label (count)", title_fontsize=FONT_PT, frameon=False)
    hist, _ = np.histogram(v, bins=edges)
    if hist.max(initial=0) >= 100 * max(1, hist[hist > 0].min(initial=1)):
        ax.set_yscale("log")
    ax.set_xlabel(f"activation of unit {unit} (per {level})")
    ax.set_ylabel(f"{level}s")
    return fig


def _detector_rows(atlas: Any, site: str, unit: int) -> tuple[list[dict[str, Any]], str]:
    if atlas is None:
        return [], "No atlas was given: fit one with polysdk.Atlas to see every detector here."
    try:
        ds = atlas.table(site)
    except Exception as err:  # the atlas maps other sites
        return [], f"The atlas has no table for this site ({err})."
    row = ds.isel(unit=int(unit))
    out = [{"detector": str(d), "score": float(row["score"].sel(detector=d)),
            "verdict": "polysemantic" if bool(row["polysemantic"].sel(detector=d)) else "not flagged",
            "why": str(row["detail"].sel(detector=d).values)} for d in ds["detector"].values]
    note = ""
    if "truth" in ds:
        note = ("Planted truth: " + ("polysemantic" if bool(row["truth"]) else "not polysemantic")
                + ".")
    return out, note


def _interventions(effects: Any) -> list[dict[str, Any]]:
    if not effects:
        return []
    if not isinstance(effects, Mapping):
        raise ConfigError("interventions= takes a dict {effect: value or {metric: value}}.")
    rows = []
    for name, val in effects.items():
        if isinstance(val, Mapping):
            rows.append({"intervention": str(name), **{str(k): v for k, v in val.items()}})
        else:
            rows.append({"intervention": str(name), "effect": val})
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return [{c: r.get(c, "") for c in cols} for r in rows]


def _image_of(images: Any, i: int) -> Any:
    if callable(images):
        return images(i)
    if isinstance(images, xr.DataArray):
        return np.asarray(images.isel(sample=i).values)
    return images[i]


_SUBWORD = ("##", "\u2581", "\u0120")   # WordPiece, SentencePiece, byte-level BPE


def _text_html(tokens: Sequence[str], values: np.ndarray, vmax: float, vmin: float) -> str:
    """One text's token heat map; subword tokens are shown as words with the SoLU
    study's ``reporting.text_heatmap.display_tokens`` when it is there."""
    from polysdk.reporting.examples import token_heatmap_html

    if any(str(t).startswith(_SUBWORD) for t in tokens):
        try:
            from polysdk.reporting.text_heatmap import display_tokens
        except ImportError:
            pass
        else:
            return ('<div class="hm">' + token_heatmap_html(display_tokens(tokens), values,
                                                            vmax=vmax, vmin=vmin) + "</div>")
    return token_heatmap_html(tokens, values, vmax=vmax, vmin=vmin)


def _style() -> str:
    try:
        from polysdk.reporting.text_heatmap import HEATMAP_STYLE
    except ImportError:
        from polysdk.reporting.examples import EXAMPLES_STYLE as HEATMAP_STYLE
    return HEATMAP_STYLE


def _figure_html(fig: Any, alt: str, caption: str = "") -> str:
    import base64

    from polysdk.reporting.figures import css_width, png_bytes

    src = "data:image/png;base64," + base64.b64encode(png_bytes(fig)).decode("ascii")
    width = css_width(fig)
    fig.clear()
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{src}" width="{width}" alt="{html.escape(alt)}">{cap}</figure>'


def _montage(pics: Sequence[Any], caps: Sequence[str], unit: int, per_row: int = 6) -> str:
    """The reporting toolkit's montage figure (``reporting.montage``) when present, in
    rows of ``per_row`` by rank; else the HTML grid of ``reporting.examples``."""
    from polysdk.reporting.examples import as_image, montage_html

    try:
        from polysdk.reporting.montage import montage_figure
    except ImportError:  # an older toolkit
        return montage_html(pics, caps)
    arr = []
    for p in pics:
        a = as_image(p)
        arr.append(a[..., :3] if a.ndim == 3 else a)
    groups, captions = {}, {}
    for start in range(0, len(arr), per_row):
        stop = min(len(arr), start + per_row)
        name = f"ranks {start + 1}-{stop}"
        groups[name] = np.stack(arr[start:stop])
        captions[name] = list(caps[start:stop])
    fig = montage_figure(groups, captions, per_row=per_row,
                         title=f"unit {unit}: top-activating images (caption: sample, activation, label)")
    return '<div class="montage">' + _figure_html(fig, "top-activating images") + "</div>"


def neuron_page(source: Any, unit: int, *, site: str | None = None, atlas: Any = None,
                tokenizer: Any = None, images: Sequence[Any] | Callable[[int], Any] | None = None,
                labels: Any = None, interventions: Mapping[str, Any] | None = None,
                top: int = 12, position: Any = "max", atlas_href: str | None = None) -> str:
    """The HTML of unit ``unit`` (a position along ``unit``) of ``source``'s ``site``.

    ``images``: an array / list indexed by sample position, or a callable
    ``i -> image``; ``interventions``: {name: value or {metric: value}} measured by the
    caller; ``atlas_href``: a link back to the atlas page.
    """
    from polysdk.reporting.examples import colour_scale_html, rows_table_html
    from polysdk.reporting.page import STYLE

    site, acts = _site_array(source, site, atlas)
    info = unit_inputs(acts, unit, position)
    value, ids = info["value"], info["input"]
    order = np.argsort(-np.nan_to_num(value, nan=-np.inf), kind="stable")[:int(top)]
    esc = html.escape
    parts = []
    if atlas_href:
        parts.append(f'<p><a href="{esc(atlas_href)}">&larr; back to the atlas</a></p>')
    rows, note = _detector_rows(atlas, site, unit)
    parts.append("<h2>Score and verdict under every detector</h2>")
    parts.append(rows_table_html(rows, left=("detector", "verdict", "why")) if rows else "")
    if note:
        parts.append(f"<p>{esc(note)}</p>")

    parts.append(f"<h2>Top-activating examples (top {len(order)} of {value.size})</h2>")
    if images is None:
        images = _site_images(source, site)
    if info["kind"] in ("flat", "padded"):
        tv = info["token_value"]
        vmax = float(np.nanmax(tv)) if tv.size else 1.0
        vmin = float(min(0.0, np.nanmin(tv))) if tv.size else 0.0
        parts.append(colour_scale_html(vmin, vmax, f"activation of unit {unit}"))
        lab = _labels(acts, labels, info)
        per_text = lab[0] if lab is not None and lab[1] == "input" else None
        for i in order:
            sel = np.flatnonzero(info["text_of"] == i)
            tag = f" ({per_text[i]})" if per_text is not None else ""
            toks = _tokens(acts, info, info["token_rows"][sel], tokenizer)
            toks = toks if toks is not None else [f"[{k}]" for k in range(sel.size)]
            parts.append(f"<p>text {esc(str(ids[i]))}{esc(tag)}: max {value[i]:.3g}</p>"
                         + _text_html(toks, tv[sel], vmax, vmin))
    elif images is not None:
        pics = [_image_of(images, int(i)) for i in order]
        lab = _labels(acts, labels, info)
        caps = [f"#{ids[i]} {value[i]:.3g}" + (f" {lab[0][i]}" if lab else "") for i in order]
        parts.append(_montage(pics, caps, int(unit)))
    else:
        coords = [c for c, v in acts.coords.items() if v.dims == ("sample",) and c != "sample"][:6]
        table = []
        for rank, i in enumerate(order, 1):
            r: dict[str, Any] = {"rank": rank, "sample": ids[i], "activation": float(value[i])}
            for c in coords:
                r[str(c)] = acts.coords[c].values[i]
            table.append(r)
        parts.append(rows_table_html(table))

    lab = _labels(acts, labels, info)
    level_values = info["token_value"] if lab is not None and lab[1] == "token" else value
    fig = _histogram(level_values, lab[0] if lab else None, lab[1] if lab else "input", unit)
    parts.append("<h2>Activation histogram by label</h2>" + _figure_html(
        fig, "histogram", "Counts of the unit's activation"
        + (" per label" if lab else " (no labels on this site)")))
    effects = _interventions(interventions)
    parts.append("<h2>Interventions</h2>")
    parts.append(rows_table_html(effects, left=("intervention",)) if effects else
                 "<p>No intervention was measured on this unit (pass interventions= to show "
                 "one).</p>")
    title = f"Unit {int(unit)} of site {site}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}'
            f"</title><style>{STYLE}\n{_style()}</style></head><body>\n<h1>{esc(title)}"
            f"</h1>\n<p>{esc(str(acts.sizes['unit']))} units; dims {esc(str(tuple(acts.dims)))}.</p>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_neuron_page(path: str | Path, source: Any, unit: int, **kw: Any) -> Path:
    """Write :func:`neuron_page` to ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(neuron_page(source, unit, **kw), encoding="utf-8")
    return path
