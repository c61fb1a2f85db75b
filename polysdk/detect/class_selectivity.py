"""``ClassSelectivity``: a unit is polysemantic when it fires for two or more classes
(seed 001: "PNs were identified as those that fire for inputs of different classes")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from polysdk.detect._constraints import OPTIONAL_SEQUENCE, PER, POSITION
from polysdk.detect._stream import as_dask, grouped_sum, label_codes, prepare, real_values, rows_for
from polysdk.detect.base import Detector
from polysdk.params import Interval

__all__ = ["ClassSelectivity"]


class ClassSelectivity(Detector):
    """Firing-rate class selectivity (seed 001).

    A unit *fires* on an input when its activation is ``> threshold`` (0, as the seed);
    it *fires for a class* when it fires on at least one input of that class and its
    firing rate on the class is ``>= min_rate`` (0 by default: any firing counts, the
    seed's definition); it is polysemantic when it fires for ``min_classes`` (2) or
    more classes. Streams over the samples: only (class, unit) counts are kept.

    Text: per-token activations come flat (dims ``token``, ``unit`` with a per-token
    ``sample`` coordinate) or padded (``sample``, ``position``, ``unit``) with an
    ``attention_mask`` (or ``mask``) coordinate; padding never counts. What an "input"
    is follows the labels (``per="auto"``): with one label per text (a per-sample
    coordinate, or a per-token one that is the same on all of a text's tokens) an input
    is a text, reduced over its real tokens by ``position`` (``"max"``: the unit fires
    somewhere in the text); with token-level labels (a ``label`` along ``token`` or
    (``sample``, ``position``) that changes inside a text, e.g. entity tags) an input is
    one real token and ``position`` is not used. ``per="text"`` / ``"token"`` choose
    explicitly; ``per="text"`` with labels that change inside a text raises.

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
    per : {"auto", "text", "token"}
        On text activations: count texts or real tokens (see above; ``"auto"`` follows
        the labels).

    Attributes
    ----------
    result_ : xr.Dataset
        ``firing_rate`` (unit, class) (the seed's Fig. 1), ``fire_count`` (unit, class),
        ``class_count`` (class), ``fires_for`` (unit, class), ``n_classes`` (unit),
        ``score`` (the ``min_classes``-th highest firing rate) and ``polysemantic``;
        attribute ``per`` says whether texts or tokens were counted (``class_count``
        counts those).

    Examples
    --------
    >>> from polysdk.data import make_planted_classes
    >>> pl = make_planted_classes(n_samples=400, seed=0)
    >>> det = ClassSelectivity().fit(pl.activations)
    >>> bool((det.result_["polysemantic"].values == pl.polysemantic).all())
    True
    """

    registry_name = "class_selectivity"
    needs_labels = True
    _checks_finite_itself = True
    _constraints = {
        "threshold": Interval(),
        "min_rate": Interval(0, 1),
        "min_classes": Interval(2, None, integer=True),
        "position": POSITION,
        "classes": OPTIONAL_SEQUENCE,
        "per": PER,
    }

    def __init__(self, threshold: float = 0.0, min_rate: float = 0.0, min_classes: int = 2,
                 position: Any = "max", classes: Sequence[Any] | None = None,
                 per: str = "auto"):
        self.threshold = threshold
        self.min_rate = min_rate
        self.min_classes = min_classes
        self.position = position
        self.classes = classes
        self.per = per
        self._validate_params()

    def _detect(self, activations: xr.DataArray, labels: xr.DataArray | None, *,
                client: Any = None) -> xr.Dataset:
        acts = prepare(as_dask(activations))
        a, lab, per = rows_for(acts, labels, self.position, self.per)
        codes, classes = label_codes(lab, self.classes)
        fire = (a.data > self.threshold).astype(np.float64)
        counts_lazy = grouped_sum(fire, codes, len(classes))
        (counts,) = self.check_finite(real_values(acts), extra=[counts_lazy], client=client)
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
            attrs={"per": per},
        )
