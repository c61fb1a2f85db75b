"""Which detectors apply to a site, and with which parameters (decided from the data).

Every rule here reads only what the data has:

* labels (``labels=``, else a ``label`` coordinate, else the ``concept`` coordinate of
  texts): ``class_selectivity`` (seed 001) and ``concept_ranking`` (seed 004);
* texts (a ``token`` dim, or a ``position`` dim) with a ``concept`` coordinate naming
  each text's set: ``concept_sets`` (seed 003);
* always: ``hdbscan`` (seed 000) and ``dictionary_features`` (the sparse autoencoder);
* a model whose weights the detector reads (``model=``, e.g. a toy model with its
  feature embedding): ``feature_capacity`` (seed 002); it needs the single-feature
  responses of the model, which recorded activations do not give.

The seeds' defaults are sized for thousands of units and samples (top 100 units per
concept, top 1000 inputs per unit); on a smaller site they would flag every unit. The
defaults below scale them to the site and are recorded in the atlas's result
(``params_json``); a caller's own parameters always win.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

#: the order of the atlas's columns (seeds first, then the dictionary)
ORDER = ("class_selectivity", "concept_ranking", "concept_sets", "hdbscan",
         "dictionary_features", "feature_capacity")
SET_COORD = "concept"


@dataclass
class Facts:
    """What a site's data offers (the applicability rules read only this)."""

    dims: tuple[str, ...]
    n_units: int
    n_inputs: int            # texts for text, samples otherwise
    text: bool
    flat: bool
    spatial: bool
    labels: Any = None       # what to pass as labels= (a coordinate name or an array)
    labels_from: str = ""    # where they came from, in words
    n_labels: int = 0
    has_sets: bool = False
    n_sets: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _n_unique(values: Any) -> int:
    arr = np.asarray(getattr(values, "values", values))
    return int(np.unique(arr.astype(str) if arr.dtype.kind == "O" else arr).size)


def facts(acts: xr.DataArray, labels: Any = None) -> Facts:
    """Read the facts of one site; ``labels`` as the caller gave them (or None)."""
    dims = tuple(str(d) for d in acts.dims)
    flat = "token" in dims
    text = flat or "position" in dims
    spatial = "y" in dims or "x" in dims
    if flat:
        n_inputs = _n_unique(acts.coords["sample"]) if "sample" in acts.coords else acts.sizes["token"]
    else:
        n_inputs = int(acts.sizes.get("sample", 0))
    f = Facts(dims=dims, n_units=int(acts.sizes["unit"]), n_inputs=n_inputs, text=text,
              flat=flat, spatial=spatial)
    if labels is not None:
        f.labels = labels
        if isinstance(labels, str):
            f.labels_from = f"the {labels!r} coordinate (labels=)"
            f.n_labels = _n_unique(acts.coords[labels]) if labels in acts.coords else 0
        else:
            f.labels_from = "labels= (an array)"
            f.n_labels = _n_unique(labels)
    elif "label" in acts.coords:
        f.labels, f.labels_from = "label", "the 'label' coordinate"
        f.n_labels = _n_unique(acts.coords["label"])
    elif text and SET_COORD in acts.coords:
        f.labels, f.labels_from = SET_COORD, "the 'concept' coordinate (each text's set)"
        f.n_labels = _n_unique(acts.coords[SET_COORD])
    if text and SET_COORD in acts.coords:
        f.has_sets, f.n_sets = True, _n_unique(acts.coords[SET_COORD])
    return f


def default_params(name: str, f: Facts) -> dict[str, Any]:
    """The atlas's defaults for detector ``name`` on a site with facts ``f``."""
    if name == "concept_ranking":
        return {"top_n": min(100, max(1, math.ceil(f.n_units / max(1, f.n_labels))))}
    if name == "concept_sets":
        return {"top_n": min(100, max(1, math.ceil(f.n_units / max(1, f.n_sets))))}
    if name == "hdbscan":
        n = f.n_inputs
        top_k = min(1000, max(min(n, 20), n // 10))
        out: dict[str, Any] = {"top_k": int(top_k),
                               "min_cluster_size": int(min(50, max(5, top_k // 4)))}
        if f.text:
            out["position"] = "max"   # "centre" of padded text is a different token per text
        return out
    return {}


def skip_reason(name: str, f: Facts, model: Any) -> str | None:
    """Why ``name`` does not apply to the site (None: it applies)."""
    if name in ("class_selectivity", "concept_ranking"):
        if f.labels is None:
            return ("needs labels: the site has no 'label' coordinate (nor, on texts, a "
                    "'concept' one); pass labels=")
        if f.n_labels < 2:
            return f"needs two or more label values; {f.labels_from} holds {f.n_labels}"
        return None
    if name == "concept_sets":
        if not f.text:
            return (f"reads per-token activations of texts; this site has dims {f.dims} "
                    "(no 'token' or 'position' dim)")
        if not f.has_sets:
            return "needs a 'concept' coordinate naming each text's set"
        if f.n_sets < 2:
            return f"needs two or more concept sets; the 'concept' coordinate holds {f.n_sets}"
        return None
    if name == "hdbscan":
        if f.n_inputs < 4:
            return f"needs at least 4 inputs to cluster; the site has {f.n_inputs}"
        return None
    if name == "feature_capacity":
        if model is None:
            return ("weight-based (seed 002): it needs the model and its feature embedding "
                    "(Atlas(..., model=toy_model, embedding=E)) to compute each neuron's "
                    "single-feature responses; recorded activations do not give them")
        return None
    return None
