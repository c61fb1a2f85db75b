"""The ``Detector`` base class and the detector registry.

A detector reads recorded activations (or a model's weights) and decides, unit by unit,
which neurons are polysemantic. It follows the scikit-learn estimator API::

    from polysdk.detect import Detector, register

    @register("max_minus_mean")
    class MaxMinusMean(Detector):
        def __init__(self, margin: float = 1.0):
            self.margin = margin

        def _detect(self, activations, labels):
            score = activations.max("sample") - activations.mean("sample")
            return xr.Dataset({"score": score, "polysemantic": score > self.margin})

    det = MaxMinusMean(margin=2.0).fit(store["features.6"])
    det.result_          # xr.Dataset over ``unit``: score, polysemantic, ...
    det.polysemantic_    # integer positions of the polysemantic units
    det.save(store)      # beside the activations, with parameters and version
    Detector.load(store, "max_minus_mean/features.6")

Detectors are found by name with :meth:`Detector.from_name`; third-party packages add
their own through the ``polysdk.detectors`` entry-point group.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from importlib import metadata
from typing import Any, ClassVar, TypeVar

import numpy as np
import xarray as xr

from polysdk.detect._fitargs import (
    check_dims,
    check_fit_keywords,
    resolve_labels,
    resolve_site,
    source_site,
)
from polysdk.detect._source import jsonable, resolve_source
from polysdk.errors import ConfigError, DetectorInputError, NotFittedError, closest_names

__all__ = ["Detector", "register", "available_detectors", "get_detector_class"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "polysdk.detectors"
_REGISTRY: dict[str, type["Detector"]] = {}

D = TypeVar("D", bound=type["Detector"])


# --------------------------------------------------------------------------- registry
def register(name: str | type["Detector"] | None = None, cls: type["Detector"] | None = None,
             *, overwrite: bool = False) -> Any:
    """Register a detector class under ``name`` (decorator or plain function).

    ``@register("mine")``, ``@register`` (name = the class's ``registry_name`` or its
    snake-cased class name) and ``register("mine", MyDetector)`` all work. Registering a
    second class under a taken name raises :class:`ConfigError` unless ``overwrite``.
    """
    if isinstance(name, type):  # bare @register
        return _register(None, name, overwrite)
    if cls is not None:
        return _register(name, cls, overwrite)

    def deco(klass: D) -> D:
        return _register(name, klass, overwrite)

    return deco


def _snake(name: str) -> str:
    out = [("_" + c.lower()) if c.isupper() and i else c.lower() for i, c in enumerate(name)]
    return "".join(out)


def _register(name: str | None, cls: Any, overwrite: bool) -> Any:
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise ConfigError(f"register() expects a Detector subclass, got {cls!r}; subclass "
                          "polysdk.detect.Detector and implement _detect().")
    name = name or cls.__dict__.get("registry_name") or _snake(cls.__name__)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"detector name must be a non-empty string, got {name!r}.")
    old = _REGISTRY.get(name)
    same = old is not None and old.__qualname__ == cls.__qualname__ and \
        old.__module__ == cls.__module__  # a module reload
    if old is not None and old is not cls and not (overwrite or same):
        raise ConfigError(f"detector name {name!r} is already registered to "
                          f"{old.__module__}.{old.__qualname__}; choose another name or pass "
                          "overwrite=True.")
    _REGISTRY[name] = cls
    if "registry_name" not in cls.__dict__:
        cls.registry_name = name
    return cls


def _load_entry_points(only: str | None = None) -> None:
    """Register detectors advertised under the ``polysdk.detectors`` entry-point group
    (all of them, or only the one called ``only``) that are not registered yet."""
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY or (only is not None and ep.name != only):
            continue
        try:
            obj = ep.load()
        except Exception as err:  # a broken plugin must not break polysdk
            log.warning("could not load detector plugin %r (%s): %s", ep.name, ep.value, err)
            continue
        if isinstance(obj, type) and issubclass(obj, Detector):
            _register(ep.name, obj, overwrite=False)
        else:
            log.warning("detector plugin %r (%s) is not a Detector subclass", ep.name, ep.value)


def available_detectors() -> list[str]:
    """Sorted names of every registered detector (built-ins and installed plugins)."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get_detector_class(name: str) -> type["Detector"]:
    """The class registered as ``name``; unknown names raise :class:`ConfigError`."""
    if name not in _REGISTRY:
        _load_entry_points(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        _load_entry_points()  # for the list of known names
    try:
        return _REGISTRY[name]
    except KeyError:
        known = sorted(_REGISTRY)
        close = closest_names(name, known, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(
            f"unknown detector {name!r}.{hint} Known detectors: {', '.join(known) or '(none)'}. "
            "Register your own with polysdk.detect.register or the 'polysdk.detectors' "
            "entry-point group.") from None


# --------------------------------------------------------------------------- Detector
class Detector:
    """Base class of every detector (scikit-learn style).

    Subclasses store their hyper-parameters unchanged in ``__init__`` (keyword
    arguments) and implement one method, :meth:`_detect`. ``fit`` validates the input,
    calls ``_detect`` and publishes ``result_`` and ``polysemantic_``.

    Class attributes a subclass may set:

    * ``needs_labels``: ``fit`` raises when no labels are found (default False).
    * ``extra_dims``: dims allowed besides ``sample`` and ``unit``; ``None`` (default)
      allows any (e.g. ``position``, ``y``, ``x``), ``()`` allows none.
    * ``weight_based``: ``fit`` passes a model through unchanged (default False).
    * ``label_coord``: the per-sample coordinate read as labels by default ("label").
    * ``fit_keywords``: keywords ``fit`` passes to ``_detect`` besides its named
      parameters (for a ``_detect`` that reads ``**kwargs``); others raise.

    Attributes
    ----------
    result_ : xr.Dataset
        Over dim ``unit``; at least ``score`` (float) and ``polysemantic`` (bool).
    polysemantic_ : np.ndarray
        Integer positions (along ``unit``) of the units found polysemantic.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from polysdk.detect import Detector
    >>> class Spread(Detector):
    ...     def __init__(self, cut: float = 1.0):
    ...         self.cut = cut
    ...     def _detect(self, activations, labels):
    ...         s = activations.std("sample")
    ...         return xr.Dataset({"score": s, "polysemantic": s > self.cut})
    >>> acts = xr.DataArray(np.array([[0., 0.], [0., 4.]]), dims=("sample", "unit"))
    >>> Spread(cut=1.0).fit(acts).polysemantic_.tolist()
    [1]
    """

    registry_name: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False
    extra_dims: ClassVar[tuple[str, ...] | None] = None
    weight_based: ClassVar[bool] = False
    label_coord: ClassVar[str] = "label"
    fit_keywords: ClassVar[tuple[str, ...]] = ()
    #: built-ins that fold the finite check into their own streaming pass set this.
    _checks_finite_itself: ClassVar[bool] = False

    # ----------------------------------------------------------------- params API
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        names = []
        for p in sig.parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            names.append(p.name)
        return names

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__`` (scikit-learn compatible)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "Detector":
        """Set hyper-parameters by name; unknown names raise :class:`ConfigError`."""
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ConfigError(f"{type(self).__name__} has no parameter {key!r}; valid "
                                  f"parameters: {valid}.")
            setattr(self, key, value)
        return self

    def clone(self) -> "Detector":
        """An unfitted copy with the same hyper-parameters."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in
                    inspect.signature(type(self).__init__).parameters.values()}
        shown = []
        for k, v in self.get_params().items():
            d = defaults.get(k, inspect.Parameter.empty)
            try:
                same = d is not inspect.Parameter.empty and bool(d == v)
            except Exception:
                same = False
            if not same:
                shown.append(f"{k}={v!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup failed: a fitted attribute before fit
        if name.endswith("_") and not name.startswith("__"):
            raise NotFittedError(
                f"{type(self).__name__}.{name} is not available: this detector is not "
                f"fitted yet. Call .fit(activations) first.")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ----------------------------------------------------------------- registry
    @staticmethod
    def from_name(name: str, **params: Any) -> "Detector":
        """Build the detector registered as ``name`` with ``params``.

        >>> Detector.from_name("class_selectivity", min_rate=0.1)
        ClassSelectivity(min_rate=0.1)
        """
        return get_detector_class(name)(**params)

    # ----------------------------------------------------------------- fitting
    def fit(self, source: Any, labels: Any = None, *, site: str | None = None,
            client: Any = None, **fit_params: Any) -> "Detector":
        """Detect polysemantic units in ``source``; returns ``self``.

        Parameters
        ----------
        source
            A lazy store site (``store["features.6"]``), any ``xr.DataArray`` with dims
            ``sample``, ``unit`` (and possibly ``position`` or ``y``, ``x``), a whole
            ``ActivationStore`` with ``site=...``, or a model for weight-based detectors.
        labels
            Per-sample labels: an array of length ``n_samples``, the name of a
            per-sample coordinate, or ``None`` to use the ``label`` coordinate if any.
        site
            The site to read from a whole store, or the site an in-memory DataArray
            holds (it names the saved result, ``"<detector>/<site>"``). A store site
            (``store["fc1"]``) and a DataArray with ``attrs["site"]`` or a name say it
            themselves; a ``site=`` that contradicts them raises ``ConfigError``.
            A ``dask.distributed.Client``: the streaming reductions run on it.
        fit_params
            Extra inputs of a particular detector (see its docstring): the named
            keyword parameters of its ``_detect`` (and its ``fit_keywords``). Any other
            keyword raises :class:`~polysdk.detect._fitargs.FitKeywordError` (a
            ``ConfigError`` and a ``TypeError``) naming the closest valid one.
        """
        check_fit_keywords(type(self), fit_params)
        self._client = client
        self._finite_checked = False
        if self.weight_based and not isinstance(source, (xr.DataArray, xr.Dataset)) and \
                not hasattr(source, "read_result"):
            acts: Any = source
            lab = labels
            n_units = None
        else:
            acts = resolve_source(source, site)
            self._check_dims(acts)
            lab = self._resolve_labels(acts, labels)
            if not self._checks_finite_itself:
                self.check_finite(acts)
            n_units = acts.sizes["unit"]
        fitted_site = resolve_site(site, source_site(acts), type(self).__name__)
        try:
            ds = self._detect(acts, lab, **fit_params)
        finally:
            self._client = None
        self.result_ = self._finish(ds, acts if n_units is not None else None)
        if fitted_site:
            self.result_.attrs["site"] = fitted_site
        self.polysemantic_ = np.flatnonzero(self.result_["polysemantic"].values)
        self.site_ = fitted_site
        self.n_units_ = int(self.result_.sizes["unit"])
        return self

    def fit_detect(self, source: Any, labels: Any = None, **kwargs: Any) -> xr.Dataset:
        """``fit`` then return ``result_``."""
        return self.fit(source, labels, **kwargs).result_

    def _detect(self, activations: Any, labels: xr.DataArray | None, **fit_params: Any
                ) -> xr.Dataset:
        """Return an ``xr.Dataset`` over ``unit`` with ``score`` and ``polysemantic``.

        ``activations`` is a (possibly dask-backed) DataArray with dims ``sample``,
        ``unit`` [, ...]; ``labels`` a DataArray over ``sample`` or ``None``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _detect("
                                  "self, activations, labels) -> xr.Dataset.")

    # ----------------------------------------------------------------- validation
    def _check_dims(self, acts: xr.DataArray) -> None:
        check_dims(type(self).__name__, acts, self.extra_dims)

    def _resolve_labels(self, acts: xr.DataArray, labels: Any) -> xr.DataArray | None:
        return resolve_labels(type(self).__name__, acts, labels, self.label_coord,
                              self.needs_labels)

    def check_finite(self, acts: xr.DataArray, extra: Sequence[Any] = ()) -> list[Any]:
        """Raise :class:`DetectorInputError` if ``acts`` holds NaN or inf.

        ``extra`` dask/xarray objects are computed in the same pass (so a streaming
        detector reads every chunk once); their computed values are returned.
        """
        bad = (~np.isfinite(acts.data)).sum()
        out = self._compute(bad, *extra)
        n_bad = int(out[0])
        self._finite_checked = True
        if n_bad:
            raise DetectorInputError(
                f"the activations hold {n_bad} NaN or infinite values (of "
                f"{int(np.prod(acts.shape))}); drop those samples, e.g. "
                "acts.where(np.isfinite(acts).all([d for d in acts.dims if d != 'sample']), "
                "drop=True), or fix the recording.")
        return list(out[1:])

    def _compute(self, *objs: Any) -> tuple[Any, ...]:
        """Compute dask-backed objects together, on ``client`` when ``fit`` got one."""
        import dask

        client = getattr(self, "_client", None)
        if client is not None:
            return tuple(dask.compute(*objs, scheduler=client))
        return tuple(dask.compute(*objs))

    def _finish(self, ds: Any, acts: xr.DataArray | None) -> xr.Dataset:
        name = type(self).__name__
        if not isinstance(ds, xr.Dataset):
            raise ConfigError(f"{name}._detect returned {type(ds).__name__}; it must return an "
                              "xr.Dataset over 'unit' with 'score' and 'polysemantic'.")
        missing = [v for v in ("score", "polysemantic") if v not in ds.variables]
        if missing or "unit" not in ds.dims:
            raise ConfigError(f"{name}._detect returned a Dataset with variables "
                              f"{list(ds.variables)} and dims {dict(ds.sizes)}; it needs dim "
                              f"'unit' and variables 'score' and 'polysemantic' (missing "
                              f"{missing}).")
        if acts is not None and ds.sizes["unit"] != acts.sizes["unit"]:
            raise ConfigError(f"{name}._detect returned {ds.sizes['unit']} units for "
                              f"activations with {acts.sizes['unit']}; return one row per unit.")
        if acts is not None and "unit" in acts.coords and "unit" not in ds.coords:
            ds = ds.assign_coords(unit=acts.coords["unit"].values)
        ds = ds.compute()
        ds["polysemantic"] = ds["polysemantic"].astype(bool)
        ds["score"] = ds["score"].astype(float)
        ds.attrs.update(self._result_attrs())
        return ds

    def _result_attrs(self) -> dict[str, Any]:
        try:
            from polysdk import __version__ as version
        except ImportError:
            try:
                version = metadata.version("polysdk")
            except metadata.PackageNotFoundError:
                version = "unknown"
        params, skipped = {}, []
        for k, v in self.get_params().items():
            ok, val = jsonable(v)
            if ok:
                params[k] = val
            else:
                skipped.append(k)
        return {
            "detector": self.registry_name or type(self).__name__,
            "detector_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "params_json": json.dumps(params),
            "params_not_saved": json.dumps(skipped),
            "polysdk_version": str(version),
        }

    # ----------------------------------------------------------------- persistence
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
    def load(cls, store: Any, name: str) -> "Detector":
        """Rebuild a fitted detector from a result saved with :meth:`save`."""
        ds = store.read_result(name)
        if hasattr(ds, "load"):
            ds = ds.load()
        attrs = dict(ds.attrs)
        det_name = attrs.get("detector")
        if not det_name:
            raise DetectorInputError(f"result {name!r} has no 'detector' attribute; it was not "
                                     "written by Detector.save. Read it with "
                                     "store.read_result(name) instead.")
        params = json.loads(attrs.get("params_json", "{}"))
        klass = get_detector_class(det_name) if det_name in _REGISTRY or cls is Detector \
            else cls
        if cls is not Detector and not issubclass(klass, cls):
            raise DetectorInputError(f"result {name!r} was written by {det_name!r}, not by "
                                     f"{cls.__name__}; load it with Detector.load.")
        valid = klass._param_names()
        det = klass(**{k: v for k, v in params.items() if k in valid})
        det.result_ = ds
        det.polysemantic_ = np.flatnonzero(np.asarray(ds["polysemantic"].values, dtype=bool))
        det.n_units_ = int(ds.sizes["unit"])
        det.site_ = attrs.get("site") or (name.split("/", 1)[1] if "/" in name else None)
        return det

