"""The detector base classes: ``Detector`` (recorded activations) and ``WeightDetector``
(a model's weights), both ``BaseDetector``\\ s.

A detector decides, unit by unit, which neurons are polysemantic. It follows the
scikit-learn estimator API::

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

Parameters come from :class:`polysdk.params.Params` (``get_params``, ``set_params``,
``clone``, ``repr``; declared ``_constraints`` raise ``ConfigError``). Names live in
:mod:`polysdk.detect._registry`; what ``fit`` checks in :mod:`polysdk.detect._fitargs`;
saving and loading in :mod:`polysdk.detect._results`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import xarray as xr

from polysdk.detect._fitargs import (check_dims, check_fit_keywords, passes_client,
                                     resolve_labels, resolve_site, source_site)
from polysdk.detect._registry import available_detectors, get_detector_class, register
from polysdk.detect._results import ResultsMixin, validate_result
from polysdk.detect._source import resolve_source
from polysdk.detect._stream import compute
from polysdk.dims import ROW_DIMS
from polysdk.errors import DetectorInputError, NotFittedError, closest_names
from polysdk.params import Params

__all__ = ["BaseDetector", "Detector", "WeightDetector", "register", "available_detectors",
           "get_detector_class"]


class BaseDetector(ResultsMixin, Params):
    """What every detector shares: parameters, ``fit`` -> ``self``, fitted attributes,
    the checked result, save / load and lookup by name.

    Subclasses: :class:`Detector` (recorded activations) and :class:`WeightDetector`
    (a model). A subclass stores its hyper-parameters unchanged in ``__init__``,
    may declare ``_constraints`` (checked on construction by the built-ins, by
    ``set_params`` and at every ``fit``) and implements :meth:`_detect`.

    Class attributes a subclass may set:

    * ``fit_keywords``: keywords ``fit`` passes to ``_detect`` besides its named
      parameters (for a ``_detect`` that reads ``**kwargs``); others raise.
    * ``fitted_attributes``: the attributes its ``fit`` sets besides the base's
      (``result_``, ``polysemantic_``, ``site_``, ``n_units_``); reading one before
      ``fit`` raises :class:`~polysdk.errors.NotFittedError`, any other missing name an
      ``AttributeError`` naming the closest real one.
    """

    registry_name: ClassVar[str] = ""
    fit_keywords: ClassVar[tuple[str, ...]] = ()
    fitted_attributes: ClassVar[tuple[str, ...]] = ("result_", "polysemantic_", "site_",
                                                    "n_units_")

    @classmethod
    def _fitted_names(cls) -> list[str]:
        names: dict[str, None] = {}
        for klass in reversed(cls.__mro__):
            names.update(dict.fromkeys(klass.__dict__.get("fitted_attributes", ())))
        return list(names)

    def __getattr__(self, name: str) -> Any:
        # reached only when normal lookup failed
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(self).__name__
        if name in type(self)._fitted_names():
            raise NotFittedError(f"{cls}.{name} is not available: this detector is not "
                                 f"fitted yet. Call .fit(...) first.")
        known = [n for n in {*dir(type(self)), *vars(self), *type(self)._fitted_names()}
                 if not n.startswith("__")]
        close = closest_names(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise AttributeError(f"{cls!r} object has no attribute {name!r}{hint}")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__`` (``deep`` for scikit-learn)."""
        return super().get_params()

    @staticmethod
    def from_name(name: str, **params: Any) -> BaseDetector:
        """Build the detector registered as ``name`` with ``params``.

        >>> Detector.from_name("class_selectivity", min_rate=0.1)
        ClassSelectivity(min_rate=0.1)
        """
        return get_detector_class(name)(**params)

    # ----------------------------------------------------------------- fitting
    def fit(self, source: Any, labels: Any = None, *, site: str | None = None,
            client: Any = None, **fit_params: Any) -> Self:
        """Detect polysemantic units in ``source``; returns ``self``.

        Parameters
        ----------
        source
            What the detector reads (see :meth:`Detector.fit`, :meth:`WeightDetector.fit`).
        labels
            Per-sample labels: an array, the name of a coordinate, or ``None`` to use
            the ``label_coord`` coordinate if any.
        site
            The site to read from a whole store, or the site an in-memory DataArray
            holds (it names the saved result, ``"<detector>/<site>"``). A store site
            (``store["fc1"]``) and a DataArray with ``attrs["site"]`` or a name say it
            themselves; a ``site=`` that contradicts them raises ``ConfigError``.
        client
            A ``dask.distributed.Client``: the streaming reductions run on it. It is
            handed to ``_detect`` when ``_detect`` names a ``client`` parameter.
        fit_params
            Extra inputs of a particular detector (see its docstring): the named
            keyword parameters of its ``_detect`` (and its ``fit_keywords``). Any other
            keyword raises :class:`~polysdk.errors.FitKeywordError` (a ``ConfigError``
            and a ``TypeError``) naming the closest valid one.
        """
        check_fit_keywords(type(self), fit_params)
        self._validate_params()
        acts, lab = self._inputs(source, labels, site, client)
        fitted_site = resolve_site(site, source_site(acts), type(self).__name__)
        if passes_client(type(self)):
            fit_params["client"] = client
        ds = self._detect(acts, lab, **fit_params)
        result = validate_result(self, ds, acts if isinstance(acts, xr.DataArray) else None)
        if fitted_site:
            result.attrs["site"] = fitted_site
        self.result_ = result
        self.polysemantic_ = np.flatnonzero(result["polysemantic"].values)
        self.site_ = fitted_site
        self.n_units_ = int(result.sizes["unit"])
        return self

    def fit_detect(self, source: Any, labels: Any = None, **kwargs: Any) -> xr.Dataset:
        """``fit`` then return ``result_``."""
        return self.fit(source, labels, **kwargs).result_

    def _inputs(self, source: Any, labels: Any, site: str | None, client: Any
                ) -> tuple[Any, Any]:
        """``(what _detect reads, labels)`` from what ``fit`` got."""
        raise NotImplementedError

    def _detect(self, activations: Any, labels: xr.DataArray | None, **fit_params: Any
                ) -> xr.Dataset:
        """Return an ``xr.Dataset`` over ``unit`` with ``score`` and ``polysemantic``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _detect("
                                  "self, activations, labels) -> xr.Dataset.")


class Detector(BaseDetector):
    """Base class of the detectors that read recorded activations (scikit-learn style).

    Subclasses store their hyper-parameters unchanged in ``__init__`` (keyword
    arguments) and implement one method, :meth:`_detect`. ``fit`` validates the input
    (dims, labels, no NaN), calls ``_detect`` and publishes ``result_`` and
    ``polysemantic_``.

    Class attributes a subclass may set (besides :class:`BaseDetector`'s):

    * ``needs_labels``: ``fit`` raises when no labels are found (default False).
    * ``row_dims``: the row dims it reads, ``("sample", "token")`` by default
      (``polysdk.dims.ROW_DIMS``: ``token`` is the flat per-token text layout, with a
      per-token ``sample`` coordinate); ``("sample",)`` refuses flat text.
    * ``extra_dims``: dims allowed besides the row dim and ``unit``; ``None`` (default)
      allows any (e.g. ``position``, ``y``, ``x``), ``()`` allows none.
    * ``label_coord``: the coordinate read as labels by default ("label").

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

    needs_labels: ClassVar[bool] = False
    row_dims: ClassVar[tuple[str, ...]] = ROW_DIMS
    extra_dims: ClassVar[tuple[str, ...] | None] = None
    label_coord: ClassVar[str] = "label"
    #: built-ins that fold the finite check into their own streaming pass set this.
    _checks_finite_itself: ClassVar[bool] = False

    def fit(self, source: Any, labels: Any = None, *, site: str | None = None,
            client: Any = None, **fit_params: Any) -> Self:
        """Detect polysemantic units in recorded activations; returns ``self``.

        ``source``: a lazy store site (``store["features.6"]``), any ``xr.DataArray``
        with dims ``sample``, ``unit`` (and possibly ``position`` or ``y``, ``x``), flat
        per-token text (dims ``token``, ``unit``), or a whole ``ActivationStore`` with
        ``site=...``. The other arguments: :meth:`BaseDetector.fit`.
        """
        return super().fit(source, labels, site=site, client=client, **fit_params)

    def _inputs(self, source: Any, labels: Any, site: str | None, client: Any
                ) -> tuple[xr.DataArray, xr.DataArray | None]:
        acts = resolve_source(source, site)
        self._check_dims(acts)
        lab = self._resolve_labels(acts, labels)
        if not self._checks_finite_itself:
            self.check_finite(acts, client=client)
        return acts, lab

    def _check_dims(self, acts: xr.DataArray) -> None:
        check_dims(type(self).__name__, acts, self.extra_dims, tuple(self.row_dims))

    def _resolve_labels(self, acts: xr.DataArray, labels: Any) -> xr.DataArray | None:
        return resolve_labels(type(self).__name__, acts, labels, self.label_coord,
                              self.needs_labels)

    def check_finite(self, acts: xr.DataArray, extra: Sequence[Any] = (), *,
                     client: Any = None) -> list[Any]:
        """Raise :class:`DetectorInputError` if ``acts`` holds NaN or inf.

        ``extra`` dask/xarray objects are computed in the same pass (so a streaming
        detector reads every chunk once), on ``client`` when given; their computed
        values are returned.
        """
        bad = (~np.isfinite(acts.data)).sum()
        out = compute(bad, *extra, client=client)
        n_bad = int(out[0])
        if n_bad:
            raise DetectorInputError(
                f"the activations hold {n_bad} NaN or infinite values (of "
                f"{int(np.prod(acts.shape))}); drop those samples, e.g. "
                "acts.where(np.isfinite(acts).all([d for d in acts.dims if d != 'sample']), "
                "drop=True), or fix the recording.")
        return list(out[1:])


class WeightDetector(BaseDetector):
    """Base class of the detectors that read a model (its weights), not recordings.

    ``fit(model, ...)`` hands the source to :meth:`_detect` unchanged (no dims, labels
    or finite check: the detector checks what it reads); the rest is
    :class:`BaseDetector`'s. ``site=`` names the result when there is one.
    """

    def _inputs(self, source: Any, labels: Any, site: str | None, client: Any
                ) -> tuple[Any, Any]:
        return source, labels
