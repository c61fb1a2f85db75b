"""What ``Detector.fit`` checks and learns about its call.

* :func:`source_site`: the site a DataArray came from (``attrs["site"]``, a store
  site's Zarr path, or a DataArray name other than ``"activation"``), so a result is
  saved as ``"<detector>/<site>"`` however the detector was fitted.
* :func:`check_fit_keywords`: every keyword given to ``fit`` must be one ``fit`` or the
  detector's ``_detect`` takes; a typo (``lables=``) raises, naming the closest one.
* :func:`check_dims`, :func:`resolve_labels`: the dims and labels every detector needs.
  The rows are ``sample`` or, for flat per-token text, ``token`` (``polysdk.dims.ROW_DIMS``);
  text labels may be per text or per token (along ``token``, or (``sample``,
  ``position``) on a padded array).
"""

from __future__ import annotations

import inspect
import reprlib
from typing import Any

import numpy as np
import xarray as xr

from polysdk.dims import POSITION, ROW_DIMS, SAMPLE, TOKEN, UNIT
from polysdk.errors import ConfigError, DetectorInputError, FitKeywordError, closest_names

__all__ = ["FitKeywordError", "check_dims", "check_fit_keywords", "fit_keywords",
           "passes_client", "resolve_labels", "resolve_site", "source_site"]

#: the keywords of ``Detector.fit`` itself
FIT_OWN = ("labels", "site", "client")


def _zarr_sites(da: xr.DataArray) -> set[str]:
    """Zarr groups (sites) of the arrays a lazily-read DataArray is built from."""
    data = da.variable._data
    graph = getattr(getattr(data, "dask", None), "layers", None)
    if graph is None:  # not dask-backed: maybe still lazily indexed (chunks=None)
        wrappers = [data]
    else:
        wrappers = [task for name, layer in graph.items() if name.startswith("original-")
                    for task in layer.values()]
    sites = set()
    for obj in wrappers:
        for _ in range(16):  # ImplicitToExplicit -> CopyOnWrite -> LazilyIndexed -> Zarr
            if hasattr(obj, "get_array") and hasattr(obj, "_array"):
                path = str(getattr(obj.get_array(), "path", "") or "")
                if "/" in path:
                    sites.add(path.rsplit("/", 1)[0])
                break
            obj = getattr(obj, "array", None)
            if obj is None:
                break
    return sites


def source_site(acts: Any) -> str | None:
    """The site ``acts`` records, or ``None`` when nothing tells.

    In order: ``attrs["site"]`` (or ``encoding["site"]``); the Zarr group of a store
    site read lazily (``store["fc1"]``, also after ``isel``/``mean``; one group only);
    the DataArray's name when it is not the store's generic ``"activation"``.
    """
    if not isinstance(acts, xr.DataArray):
        return None
    for holder in (acts.attrs, acts.encoding):
        site = holder.get("site")
        if isinstance(site, str) and site:
            return site
    try:
        sites = _zarr_sites(acts)
    except Exception:  # a private xarray layout changed: fall back to the name
        sites = set()
    if len(sites) == 1:
        return sites.pop()
    name = acts.name
    if isinstance(name, str) and name and name != "activation":
        return name
    return None


def resolve_site(given: str | None, recorded: str | None, detector: str) -> str | None:
    """``site=`` when given, else what the source records; a mismatch raises."""
    if given is not None and not (isinstance(given, str) and given):
        raise ConfigError(f"site={given!r} must be a non-empty string (the name the result "
                          "is saved under, e.g. site='features.6').")
    if given and recorded and given != recorded:
        raise ConfigError(
            f"{detector}.fit got site={given!r} but the activations come from site "
            f"{recorded!r}; drop site= (the result is then saved as .../{recorded}) or, to "
            "save it under another name, call save(store, name='...').")
    return given or recorded


def fit_keywords(cls: type) -> list[str]:
    """Keywords ``cls.fit`` accepts: ``fit``'s own, the named keyword parameters of
    ``cls._detect`` and those listed in ``cls.fit_keywords``."""
    sig = inspect.signature(cls._detect)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    named = [p.name for p in params[2:]  # after (activations, labels)
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    extra = list(getattr(cls, "fit_keywords", None) or ())
    return list(dict.fromkeys([*FIT_OWN, *named, *extra]))


def passes_client(cls: type) -> bool:
    """True when ``cls._detect`` names a ``client`` parameter (``fit`` then hands its
    ``client=`` to it; nothing is stored on the detector)."""
    return "client" in inspect.signature(cls._detect).parameters


def check_fit_keywords(cls: type, given: dict[str, Any]) -> None:
    """Raise :class:`FitKeywordError` for a keyword ``cls.fit`` does not take."""
    valid = fit_keywords(cls)
    for key in given:
        if key in valid:
            continue
        close = closest_names(key, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise FitKeywordError(
            f"{cls.__name__}.fit() got an unexpected keyword "
            f"{key}={reprlib.repr(given[key])}.{hint} "
            f"Valid keywords: {', '.join(valid)}. (A detector that reads more keywords "
            "through **kwargs lists them in its fit_keywords class attribute.)")


def check_dims(detector: str, acts: xr.DataArray, extra_dims: tuple[str, ...] | None,
               row_dims: tuple[str, ...] = ROW_DIMS) -> None:
    """Raise :class:`DetectorInputError` unless ``acts`` has one row dim of ``row_dims``
    (``sample``, or ``token`` for flat text) and ``unit`` (and only ``extra_dims``
    besides, when given) and is not empty. A ``token`` array needs its per-token
    ``sample`` coordinate (which text each token belongs to)."""
    dims = tuple(acts.dims)
    rows = [d for d in dims if d in ROW_DIMS]
    if len(rows) != 1 or rows[0] not in row_dims or UNIT not in dims:
        alt = " (or 'token' and 'unit': flat per-token text)" if TOKEN in row_dims[1:] else ""
        raise DetectorInputError(
            f"{detector} needs dims {row_dims[0]!r} and 'unit'{alt} but the activations "
            f"have dims {dims}. Rename them, e.g. "
            f"acts.rename({{'{dims[-1] if dims else 'neuron'}': 'unit'}}), or record "
            "with polysdk.Probe, which names them.")
    row = rows[0]
    extra = [d for d in dims if d not in (row, UNIT)]
    allowed = () if row == TOKEN else extra_dims  # flat tokens: nothing else to reduce
    if allowed is not None:
        bad = [d for d in extra if d not in allowed]
        if bad:
            raise DetectorInputError(
                f"{detector} cannot use dims {bad} (activations have dims "
                f"{dims}; extra dims allowed: {list(allowed) or 'none'}). Reduce them first, "
                f"e.g. acts.mean({bad!r}), or choose a detector parameter that reduces them.")
    if row == TOKEN and (SAMPLE not in acts.coords or acts.coords[SAMPLE].dims != (TOKEN,)):
        raise DetectorInputError(
            "a flat token array (dims ('token', 'unit')) needs its per-token 'sample' "
            "coordinate (which text each token belongs to); record it with Probe, which "
            "adds it, or assign_coords(sample=('token', text_of_each_token)).")
    if acts.sizes[row] == 0 or acts.sizes[UNIT] == 0:
        raise DetectorInputError(
            f"the activations are empty (sizes {dict(acts.sizes)}); record some samples "
            "first.")


def _label_dims(acts: xr.DataArray) -> list[tuple[str, ...]]:
    """Dims a label may have: per sample (a text), or per token of a text layout."""
    if TOKEN in acts.dims:
        return [(TOKEN,), (SAMPLE,)]
    if POSITION in acts.dims:
        return [(SAMPLE,), (SAMPLE, POSITION), (POSITION, SAMPLE)]
    return [(SAMPLE,)]


def _labels_from_array(detector: str, acts: xr.DataArray, labels: Any) -> xr.DataArray:
    arr = labels.values if isinstance(labels, xr.DataArray) else np.asarray(labels)
    if TOKEN in acts.dims:
        n_tok = acts.sizes[TOKEN]
        texts = np.unique(np.asarray(acts.coords[SAMPLE].values))
        if arr.ndim == 1 and arr.shape[0] == n_tok:
            return xr.DataArray(arr, dims=(TOKEN,))
        if arr.ndim == 1 and arr.shape[0] == texts.size:
            return xr.DataArray(arr, dims=(SAMPLE,), coords={SAMPLE: texts})
        raise DetectorInputError(
            f"labels have shape {arr.shape} but the token array holds {n_tok} tokens of "
            f"{texts.size} texts; pass one label per token (shape ({n_tok},)) or per text "
            f"(shape ({texts.size},), in text order).")
    n = acts.sizes[SAMPLE]
    if arr.ndim == 2 and POSITION in acts.dims and arr.shape == (n, acts.sizes[POSITION]):
        return xr.DataArray(arr, dims=(SAMPLE, POSITION))
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DetectorInputError(
            f"labels have shape {arr.shape} but the activations have {n} samples; "
            f"pass one label per sample (shape ({n},)).")
    return xr.DataArray(arr, dims=(SAMPLE,))


def resolve_labels(detector: str, acts: xr.DataArray, labels: Any, label_coord: str,
                   needs_labels: bool) -> xr.DataArray | None:
    """Labels as a DataArray (in memory) over ``sample`` (or, on text, over ``token`` or
    (``sample``, ``position``)), or ``None`` when there are none."""
    if labels is None:
        coord = acts.coords.get(label_coord)
        if coord is not None and coord.dims in _label_dims(acts):
            lab = coord
        elif needs_labels:
            row = TOKEN if TOKEN in acts.dims else SAMPLE
            per_row = [str(c) for c, v in acts.coords.items()
                       if v.dims == (row,) and c not in (SAMPLE, POSITION, TOKEN)]
            what = "per-token" if row == TOKEN else "per-sample"
            raise DetectorInputError(
                f"{detector} needs {what} labels but none were given and the activations "
                f"have no '{label_coord}' coordinate ({what} coordinates: "
                f"{per_row or 'none'}). Pass fit(acts, labels=...) with one label per "
                f"{'token or per text' if row == TOKEN else 'sample'}, or a coordinate name, "
                "or record with coords={'label': labels}.")
        else:
            return None
    elif isinstance(labels, str):
        if labels not in acts.coords:
            raise DetectorInputError(
                f"labels={labels!r} is not a coordinate of the activations (coordinates: "
                f"{[str(c) for c in acts.coords]}); pass an existing coordinate name or "
                "an array of labels.")
        lab = acts.coords[labels]
    else:
        lab = _labels_from_array(detector, acts, labels)
    lab = lab.compute() if hasattr(lab.data, "dask") else lab
    if lab.dims == (SAMPLE,) and lab.dtype.kind == "f" and bool(np.isnan(lab.values).any()):
        raise DetectorInputError(
            f"{int(np.isnan(lab.values).sum())} labels are NaN; give every sample a label "
            "or drop the unlabelled samples (acts.isel(sample=mask)).")
    return lab
