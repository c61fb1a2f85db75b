"""``ConceptRanking``: rank units per concept label; a unit is polysemantic when it ranks
high for two or more concepts (seed 004: NeuroX's probe-free ranking and its elastic-net
probe with weight-mass selection; concept saliency from the rank)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from polysdk.detect._constraints import FLAG, OPTIONAL_SEQUENCE, PER, POSITION
from polysdk.detect._stream import (as_dask, compute, grouped_sum, label_codes, prepare,
                                    real_values, rows_for)
from polysdk.detect.base import Detector
from polysdk.errors import DetectorInputError
from polysdk.params import Interval, Options

__all__ = ["ConceptRanking", "concept_saliency", "weight_mass_selection"]


def concept_saliency(rank: np.ndarray, n_units: int, block: int = 100) -> np.ndarray:
    """Saliency from a 1-based rank (seed 004): ranks fall in blocks of ``block``;
    with ``b`` the block index (1 = best) and ``B = n_units / block``,
    saliency = ``|(b - B) / (1 - B)|`` (1 for the top block, 0 for the last).
    When everything fits in one block (``B <= 1``) every unit gets 1.
    """
    big_b = n_units / block
    b = np.ceil(np.asarray(rank, dtype=float) / block)
    if big_b <= 1:
        return np.ones_like(b)
    return np.abs((b - big_b) / (1.0 - big_b))


def weight_mass_selection(weights: np.ndarray, mass: float) -> np.ndarray:
    """Boolean mask of the shortest prefix of units by ``|w|`` holding ``mass`` of the total."""
    w = np.abs(np.asarray(weights, dtype=float))
    total = w.sum()
    keep = np.zeros(w.shape, dtype=bool)
    if total <= 0:
        return keep
    order = np.argsort(-w, kind="stable")
    cum = np.cumsum(w[order])
    n = int(np.searchsorted(cum, mass * total - 1e-12 * total)) + 1
    keep[order[: min(n, w.size)]] = True
    return keep


class ConceptRanking(Detector):
    """Per-concept unit ranking (seed 004).

    Input: activations (``sample``, ``unit``), one sample per token (or per example),
    with a per-sample concept label (``label`` coordinate or ``labels=``). Extra dims
    are reduced by ``position`` (default ``"mean"``: NeuroX averages sub-word tokens).

    Text: per-token activations come flat (dims ``token``, ``unit`` with a per-token
    ``sample`` coordinate) or padded (``sample``, ``position``, ``unit``) with an
    ``attention_mask`` (or ``mask``) coordinate; padding never counts. With token-level
    labels (a ``label`` along ``token`` or (``sample``, ``position``) that changes
    inside a text: the seed's location / other tags) every real token is a sample and
    ``position`` is not used; with one label per text each text is a sample, its real
    tokens reduced by ``position``. ``per="auto"`` (default) follows the labels this
    way; ``per="token"`` / ``"text"`` choose explicitly, and ``per="text"`` with labels
    that change inside a text raises.

    ``method="mean_diff"`` (default; what the seed's released results used): a unit's
    score for concept ``c`` is ``|mean on c - mean on the rest|``, computed in one
    streaming pass; the concept's top units are its ``top_n`` best.
    ``method="probe"``: an elastic-net logistic-regression probe on all labels
    (``LogisticRegression(penalty="elasticnet", solver="saga")``, multinomial), scored by
    ``|w|``; the top units of a concept are the shortest prefix by ``|w|`` holding
    ``mass`` of the concept's total ``|w|``. The probe needs the data in memory;
    ``probe_solver="sgd"`` trains ``SGDClassifier(loss="log_loss",
    penalty="elasticnet")`` chunk by chunk instead (streaming).

    A unit is polysemantic when it is a top unit of ``min_concepts`` (2) or more
    concepts. ``saliency`` (unit, concept) follows the seed's formula with blocks of
    ``saliency_block`` (100) ranks (see :func:`concept_saliency`).

    Attributes
    ----------
    result_ : xr.Dataset
        ``concept_score`` (unit, concept), ``concept_rank`` (1 = best), ``top``,
        ``saliency``; ``n_concepts``; ``score`` (the number of concepts a unit is a top
        unit of); ``polysemantic``; and ``mean_on`` / ``mean_off`` (mean_diff) or
        ``weight`` and the ``probe_accuracy`` attribute (probe); attribute ``per``: whether
        texts or tokens were the samples.

    Examples
    --------
    >>> from polysdk.data import make_planted_classes
    >>> pl = make_planted_classes(n_classes=4, units_per_class=3, n_poly=4, balanced=True,
    ...                           background="O", seed=1)
    >>> det = ConceptRanking(top_n=5, concepts=pl.class_names[:4]).fit(pl.activations)
    >>> bool((det.result_["polysemantic"].values == pl.polysemantic).all())
    True
    """

    registry_name = "concept_ranking"
    needs_labels = True
    _checks_finite_itself = True
    _constraints = {
        "method": Options("mean_diff", "probe"),
        "top_n": Interval(1, None, integer=True),
        "mass": Interval(0, 1, closed="right"),
        "concepts": OPTIONAL_SEQUENCE,
        "min_concepts": Interval(2, None, integer=True),
        "position": POSITION,
        "saliency_block": Interval(1, None, integer=True),
        "C": Interval(0, None, closed="neither"),
        "l1_ratio": Interval(0, 1),
        "max_iter": Interval(1, None, integer=True),
        "probe_solver": Options("saga", "sgd"),
        "standardize": FLAG,
        "random_state": Interval(None, None, integer=True, allow_none=True),
        "per": PER,
    }

    def __init__(self, method: str = "mean_diff", top_n: int = 100, mass: float = 0.5,
                 concepts: Sequence[Any] | None = None, min_concepts: int = 2,
                 position: Any = "mean", saliency_block: int = 100, C: float = 1.0,
                 l1_ratio: float = 0.5, max_iter: int = 200, probe_solver: str = "saga",
                 standardize: bool = True, random_state: int = 0, per: str = "auto"):
        self.method = method
        self.top_n = top_n
        self.mass = mass
        self.concepts = concepts
        self.min_concepts = min_concepts
        self.position = position
        self.saliency_block = saliency_block
        self.C = C
        self.l1_ratio = l1_ratio
        self.max_iter = max_iter
        self.probe_solver = probe_solver
        self.standardize = standardize
        self.random_state = random_state
        self.per = per
        self._validate_params()

    def _detect(self, activations: xr.DataArray, labels: xr.DataArray | None, *,
                client: Any = None) -> xr.Dataset:
        acts = prepare(as_dask(activations))
        a, lab, per = rows_for(acts, labels, self.position, self.per)
        n_units = a.sizes["unit"]
        if self.method == "mean_diff" and int(self.top_n) > n_units:  # depends on the data
            raise DetectorInputError(f"top_n={self.top_n} must be between 1 and the number of "
                                     f"units ({n_units}); pass a smaller top_n.")
        codes, all_labels = label_codes(lab)
        if len(all_labels) < 2:
            raise DetectorInputError(f"all samples carry the one label {all_labels.tolist()}; a "
                                     "concept ranking needs at least two labels.")
        concepts = list(all_labels) if self.concepts is None else list(self.concepts)
        missing = [c for c in concepts if c not in set(all_labels.tolist())]
        if missing:
            raise DetectorInputError(
                f"concepts {missing} have no samples (labels present: "
                f"{all_labels.tolist()[:20]}); drop them from concepts= or add samples.")
        cidx = [all_labels.tolist().index(c) for c in concepts]
        extra: dict[str, Any] = {}
        if self.method == "mean_diff":
            sums_lazy = grouped_sum(a.data, codes, len(all_labels))
            (sums,) = self.check_finite(real_values(acts), extra=[sums_lazy], client=client)
            counts = np.bincount(codes, minlength=len(all_labels)).astype(float)
            sums = np.asarray(sums)
            total, n = sums.sum(0), counts.sum()
            on = sums[cidx] / counts[cidx, None]
            off = (total[None, :] - sums[cidx]) / (n - counts[cidx, None])
            score = np.abs(on - off).T  # (unit, concept)
            extra["mean_on"] = (("unit", "concept"), on.T)
            extra["mean_off"] = (("unit", "concept"), off.T)
            order = np.argsort(-score, axis=0, kind="stable")
            rank = np.empty_like(order)
            rank[order, np.arange(len(concepts))[None, :]] = np.arange(1, n_units + 1)[:, None]
            top = rank <= int(self.top_n)
            attrs: dict[str, Any] = {}
        else:
            self.check_finite(real_values(acts), client=client)
            weights, acc = self._probe(a, codes, len(all_labels), client)
            w = np.abs(weights[cidx] if weights.shape[0] > 1 else
                       np.repeat(weights, len(cidx), axis=0))
            score = w.T
            extra["weight"] = (("unit", "concept"), score)
            order = np.argsort(-score, axis=0, kind="stable")
            rank = np.empty_like(order)
            rank[order, np.arange(len(concepts))[None, :]] = np.arange(1, n_units + 1)[:, None]
            top = np.stack([weight_mass_selection(score[:, j], float(self.mass))
                            for j in range(len(concepts))], axis=1)
            attrs = {"probe_accuracy": float(acc)}
        n_concepts = top.sum(1)
        ds = xr.Dataset({
            "score": ("unit", n_concepts.astype(float)),
            "polysemantic": ("unit", n_concepts >= int(self.min_concepts)),
            "n_concepts": ("unit", n_concepts.astype(np.int64)),
            "concept_score": (("unit", "concept"), score),
            "concept_rank": (("unit", "concept"), rank.astype(np.int64)),
            "top": (("unit", "concept"), top),
            "saliency": (("unit", "concept"),
                         concept_saliency(rank, n_units, int(self.saliency_block))),
            **extra,
        }, coords={"concept": np.asarray(concepts)}, attrs={**attrs, "per": per})
        return ds

    def _probe(self, a: xr.DataArray, codes: np.ndarray, n_labels: int, client: Any = None
               ) -> tuple[np.ndarray, float]:
        """Fit the elastic-net probe; return (label, unit) weights and train accuracy."""
        if self.probe_solver == "saga":
            from sklearn.linear_model import LogisticRegression

            (x,) = compute(a.data, client=client)
            x = np.asarray(x, dtype=np.float64)
            if self.standardize:
                x = (x - x.mean(0)) / (x.std(0) + 1e-8)
            clf = LogisticRegression(solver="saga", C=self.C,
                                     l1_ratio=self.l1_ratio, max_iter=self.max_iter,
                                     random_state=self.random_state)
            clf.fit(x, codes)
            return np.asarray(clf.coef_), float(clf.score(x, codes))
        from sklearn.linear_model import SGDClassifier

        data = a.data
        mean = std = None
        if self.standardize:
            mean_l, sq_l = data.mean(0), (data.astype(np.float64) ** 2).mean(0)
            mean, sq = compute(mean_l, sq_l, client=client)
            std = np.sqrt(np.maximum(sq - mean ** 2, 0.0)) + 1e-8
        alpha = 1.0 / (self.C * data.shape[0])
        clf = SGDClassifier(loss="log_loss", penalty="elasticnet", alpha=alpha,
                            l1_ratio=self.l1_ratio, random_state=self.random_state)
        classes = np.arange(n_labels)
        bounds = np.cumsum((0,) + data.chunks[0])
        correct = 0
        for epoch in range(max(1, int(self.max_iter) // 20)):
            correct = 0
            for i, blk in enumerate(data.to_delayed().ravel()):
                (xb,) = compute(blk, client=client)
                xb = np.asarray(xb, dtype=np.float64)
                if mean is not None:
                    xb = (xb - mean) / std
                yb = codes[bounds[i]: bounds[i + 1]]
                clf.partial_fit(xb, yb, classes=classes)
                correct += int((clf.predict(xb) == yb).sum())
        return np.asarray(clf.coef_), correct / data.shape[0]

    def top_units(self, concept: Any) -> np.ndarray:
        """Unit positions of ``concept``'s top units, best first."""
        r = self.result_.sel(concept=concept)
        idx = np.flatnonzero(r["top"].values)
        return idx[np.argsort(r["concept_rank"].values[idx])]

