"""A detector's result: checked when ``fit`` makes it, saved beside the activations,
loaded back into a fitted detector.

* :func:`validate_result`: ``_detect``'s Dataset checked against the contract (dim
  ``unit``, ``score`` float, ``polysemantic`` bool), computed, given the attributes
  ``load`` needs (registry name, class, parameters as JSON, polysdk version).
* :class:`ResultsMixin`: ``default_result_name`` (``"<detector>/<site>"``), ``save``
  and ``load``.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any

import numpy as np
import xarray as xr

from polysdk.detect._registry import DETECTORS
from polysdk.detect._source import jsonable
from polysdk.errors import ConfigError, DetectorInputError

__all__ = ["ResultsMixin", "polysdk_version", "result_attrs", "validate_result"]


def polysdk_version() -> str:
    """The installed polysdk's version (as ``polysdk.__version__``, without importing
    the root package, which sits above the detectors)."""
    try:
        return metadata.version("polysdk")
    except metadata.PackageNotFoundError:  # pragma: no cover - a bare source tree
        return "0.0.0+local"


def result_attrs(det: Any) -> dict[str, Any]:
    """What ``load`` needs to rebuild ``det``: its name, class, parameters, version."""
    params, skipped = {}, []
    for k, v in det.get_params().items():
        ok, val = jsonable(v)
        if ok:
            params[k] = val
        else:
            skipped.append(k)
    cls = type(det)
    return {
        "detector": det.registry_name or cls.__name__,
        "detector_class": f"{cls.__module__}.{cls.__qualname__}",
        "params_json": json.dumps(params),
        "params_not_saved": json.dumps(skipped),
        "polysdk_version": polysdk_version(),
    }


def validate_result(det: Any, ds: Any, acts: xr.DataArray | None) -> xr.Dataset:
    """``_detect``'s return checked (``ConfigError`` naming what is wrong) and computed."""
    name = type(det).__name__
    if not isinstance(ds, xr.Dataset):
        raise ConfigError(f"{name}._detect returned {type(ds).__name__}; it must return an "
                          "xr.Dataset over 'unit' with 'score' and 'polysemantic'.")
    missing = [v for v in ("score", "polysemantic") if v not in ds.variables]
    if missing or "unit" not in ds.dims:
        raise ConfigError(f"{name}._detect returned a Dataset with variables "
                          f"{list(ds.variables)} and dims {dict(ds.sizes)}; it needs dim "
                          f"'unit' and variables 'score' and 'polysemantic' (missing "
                          f"{missing}).")
    if acts is not None and "unit" in acts.dims and ds.sizes["unit"] != acts.sizes["unit"]:
        raise ConfigError(f"{name}._detect returned {ds.sizes['unit']} units for "
                          f"activations with {acts.sizes['unit']}; return one row per unit.")
    if acts is not None and "unit" in acts.coords and "unit" not in ds.coords:
        ds = ds.assign_coords(unit=acts.coords["unit"].values)
    ds = ds.compute()
    ds["polysemantic"] = ds["polysemantic"].astype(bool)
    ds["score"] = ds["score"].astype(float)
    ds.attrs.update(result_attrs(det))
    return ds


class ResultsMixin:
    """``save`` / ``load`` of a fitted detector's ``result_`` (see the module)."""

    registry_name: str
    result_: xr.Dataset

    def default_result_name(self) -> str:
        """``"<detector>/<site>"``; raises :class:`ConfigError` when the site is unknown."""
        self.result_  # raises NotFittedError before fit
        base = self.registry_name or type(self).__name__
        site = getattr(self, "site_", None)
        if not site:
            raise ConfigError(
                f"{type(self).__name__} does not know which site it was fitted on (its "
                "source records none: an in-memory DataArray named 'activation' with no "
                "attrs['site'], or a model), so a default name would let the next layer "
                f"overwrite this result. Fit with site=, e.g. fit(acts, site='fc1') -> "
                f"'{base}/fc1', or save(store, name='{base}/<site>').")
        return f"{base}/{site}"

    def save(self, store: Any, name: str | None = None) -> str:
        """Write ``result_`` into ``store`` beside the activations; returns the name used.

        The default name is ``"<detector>/<site>"`` (:meth:`default_result_name`). The
        result's attributes record the detector's registry name, its parameters (JSON),
        the site and the polysdk version, so :meth:`load` can rebuild the detector.
        """
        result = self.result_  # raises NotFittedError before fit
        name = name or self.default_result_name()
        ds = result.copy()
        for var in list(ds.variables):  # object strings -> fixed width (portable in Zarr)
            if ds[var].dtype == object:
                ds[var] = ds[var].astype(str)
        store.write_result(name, ds, attrs=dict(result.attrs))
        return name

    @classmethod
    def load(cls, store: Any, name: str) -> Any:
        """Rebuild a fitted detector from a result saved with :meth:`save`.

        Called on a base class (``Detector.load``) it rebuilds whichever detector wrote
        the result; on a detector class, that class (or a subclass) only.
        """
        from polysdk.detect.base import BaseDetector, Detector, WeightDetector

        ds = store.read_result(name)
        if hasattr(ds, "load"):
            ds = ds.load()
        attrs = dict(ds.attrs)
        det_name = attrs.get("detector")
        if not det_name:
            raise DetectorInputError(f"result {name!r} has no 'detector' attribute; it was not "
                                     "written by Detector.save. Read it with "
                                     "store.read_result(name) instead.")
        generic = cls in (BaseDetector, Detector, WeightDetector)
        klass = DETECTORS.get(det_name) if det_name in DETECTORS or generic else cls
        if not issubclass(klass, cls if not generic else BaseDetector):
            raise DetectorInputError(f"result {name!r} was written by {det_name!r}, not by "
                                     f"{cls.__name__}; load it with Detector.load.")
        params = json.loads(attrs.get("params_json", "{}"))
        valid = klass._param_names()
        det = klass(**{k: v for k, v in params.items() if k in valid})
        det.result_ = ds
        det.polysemantic_ = np.flatnonzero(np.asarray(ds["polysemantic"].values, dtype=bool))
        det.n_units_ = int(ds.sizes["unit"])
        det.site_ = attrs.get("site") or (name.split("/", 1)[1] if "/" in name else None)
        return det
