"""``ClassSelectivity``: a unit is polysemantic when it fires for two or more classes
(seed 001: "PNs were identified as those that fire for inputs of different classes")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from polysdk.detect._stream import as_dask, grouped_sum, label_codes, select_position
from polysdk.detect.base import Detector, register
from polysdk.errors import ConfigError

__all__ = ["ClassSelectivity"]


@register("class_selectivity")
class ClassSelectivity(Detector):
    """Firing-rate class selectivity (seed 001).

    A unit *fires* on an input when its activation is ``> threshold`` (0, as the seed);
    it *fires for a class* when it fires on at least one input of that class and its
    firing rate on the class is ``>= min_rate`` (0 by default: any firing counts, the
    seed's definition); it is polysemantic when it fires for ``min_classes`` (2) or
    more classes. Streams over the samples: only (class, unit) counts are kept.

    Parameters
    ----------
    threshold : float
        Activation above which a unit fires.
    min_rate : float
        Smallest per-class firing rate that counts as firing for the class.
    min_classes : int
        Number of classes that makes a unit polysemantic.
    position : str, int, dict or None
        How extra dims (``position``, ``y``, ``x``) are reduced: ``"max"`` (default:
        fires anywhere), ``"mean"``, ``"centre"``, an index or ``{dim: index}``.
    classes : sequence or None
        Restrict to these label values (default: every label present).

    Attributes
    ----------
    result_ : xr.Dataset
        ``firing_rate`` (unit, class) (the seed's Fig. 1), ``fire_count`` (unit, class),
        ``class_count`` (class), ``fires_for`` (unit, class), ``n_classes`` (unit),
        ``score`` (the ``min_classes``-th highest firing rate) and ``polysemantic``.

    Examples
    --------
    >>> from polysdk.data import make_planted_classes
    >>> pl = make_planted_classes(n_samples=400, seed=0)
    >>> det = ClassSelectivity().fit(pl.activations)
    >>> bool((det.result_["polysemantic"].values == pl.polysemantic).all())
    True
    """

    needs_labels = True
    _checks_finite_itself = True

    def __init__(self, threshold: float = 0.0, min_rate: float = 0.0, min_classes: int = 2,
                 position: Any = "max", classes: Sequence[Any] | None = None):
        self.threshold = threshold
        self.min_rate = min_rate
        self.min_classes = min_classes
        self.position = position
        self.classes = classes

    def _validate(self) -> None:
        if not 0.0 <= float(self.min_rate) <= 1.0:
            raise ConfigError(f"min_rate={self.min_rate!r} must be a rate in [0, 1].")
        if int(self.min_classes) < 2 or int(self.min_classes) != self.min_classes:
            raise ConfigError(f"min_classes={self.min_classes!r} must be an integer >= 2.")

    def _detect(self, activations: xr.DataArray, labels: xr.DataArray | None,
                **_: Any) -> xr.Dataset:
        self._validate()
        acts = as_dask(activations)
        a = select_position(acts, self.position)
        codes, classes = label_codes(labels, self.classes)
        fire = (a.data > self.threshold).astype(np.float64)
        counts_lazy = grouped_sum(fire, codes, len(classes))
        (counts,) = self.check_finite(acts, extra=[counts_lazy])
        counts = np.asarray(counts).T  # (unit, class)
        class_count = np.bincount(codes[codes >= 0], minlength=len(classes)).astype(float)
        rate = counts / class_count[None, :]
        fires_for = (counts > 0) & (rate >= self.min_rate)
        n_classes = fires_for.sum(axis=1)
        k = int(self.min_classes)
        if len(classes) >= k:
            kth = -np.sort(-np.where(fires_for, rate, 0.0), axis=1)[:, k - 1]
        else:
            kth = np.zeros(rate.shape[0])
        cls = np.asarray(classes)
        return xr.Dataset(
            {
                "score": ("unit", kth),
                "polysemantic": ("unit", n_classes >= k),
                "n_classes": ("unit", n_classes.astype(np.int64)),
                "firing_rate": (("unit", "class"), rate),
                "fire_count": (("unit", "class"), counts.astype(np.int64)),
                "fires_for": (("unit", "class"), fires_for),
                "class_count": ("class", class_count.astype(np.int64)),
            },
            coords={"class": cls},
        )
