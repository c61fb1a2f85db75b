"""Turning what users pass to ``Detector.fit`` into one labelled DataArray."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import xarray as xr

from polysdk.errors import DetectorInputError, SiteNotFoundError, closest_names


def jsonable(value: Any) -> tuple[bool, Any]:
    try:
        json.dumps(value)
        return True, value
    except (TypeError, ValueError):
        if isinstance(value, tuple):
            ok = all(jsonable(v)[0] for v in value)
            return ok, list(value)
        return False, repr(value)


def resolve_source(source: Any, site: str | None) -> xr.DataArray:
    """Turn what the user passed into one labelled DataArray (not yet computed)."""
    if isinstance(source, xr.DataArray):
        return source
    if isinstance(source, xr.Dataset):
        if "activation" in source.data_vars:
            return source["activation"]
        raise DetectorInputError(
            f"the Dataset given to fit has no 'activation' variable (it has "
            f"{list(source.data_vars)}); pass the DataArray itself, e.g. ds['my_var'].")
    if hasattr(source, "read_result") and hasattr(source, "__getitem__"):  # ActivationStore
        sites = store_sites(source)
        if site is None:
            if len(sites) == 1:
                site = sites[0]
            else:
                raise DetectorInputError(
                    f"fit was given a whole store with sites {sites}; choose one with "
                    "fit(store, site='...') or pass store['<site>'].")
        if sites and site not in sites:
            close = closest_names(site, sites)
            raise SiteNotFoundError(
                f"site {site!r} is not in the store; closest: {close or sites}. "
                f"Pass one of {sites}.")
        da = source[site]
        if isinstance(da, xr.Dataset):
            da = da["activation"]
        return da
    if isinstance(source, np.ndarray):
        raise DetectorInputError(
            f"fit got a bare numpy array of shape {source.shape}; detectors need named dims. "
            "Wrap it: xr.DataArray(arr, dims=('sample', 'unit')).")
    raise DetectorInputError(
        f"fit cannot read a source of type {type(source).__name__}; pass an ActivationStore "
        "site (store['features.6']), an xarray.DataArray with dims ('sample', 'unit', ...), "
        "or a model for weight-based detectors.")


def store_sites(store: Any) -> list[str]:
    for attr in ("sites", "site_names"):
        val = getattr(store, attr, None)
        if callable(val):
            val = val()
        if val is not None:
            return list(val)
    return []
