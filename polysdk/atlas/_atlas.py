"""``Atlas``: every applicable detector on the same site(s), side by side.

    from polysdk import Atlas
    atlas = Atlas(store, sites="fc1").fit()          # detectors chosen from what the data has
    atlas.result_                                    # xr.Dataset: score / polysemantic (unit, detector)
    atlas.agreement("class_selectivity", "hdbscan")  # {'jaccard': ..., 'spearman': ...}
    atlas.save(store)                                # results "atlas/fc1"
    atlas.to_html("out/atlas.html")                  # matrix, agreement, P/R, neuron pages

The five seeds define "polysemantic" five ways and never compare them; the atlas fits
each definition that the data allows (see :mod:`polysdk.atlas._plan`) plus the
dictionary-learning one, and measures how far they agree: the Jaccard index of the
flagged sets (1 when both are empty: two empty sets agree) and Spearman's rank
correlation of the scores (NaN when a score is constant: it ranks nothing). With
planted ground truth (``truth=``) each detector gets its precision and recall
(:func:`polysdk.data.precision_recall`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from polysdk.atlas import _plan
from polysdk.atlas._detail import details
from polysdk.errors import ConfigError, DetectorInputError, SiteNotFoundError, closest_names

__all__ = ["Atlas", "jaccard", "spearman", "RESULT_PREFIX", "TRUTH_PREFIX", "save_truth"]

log = logging.getLogger(__name__)

#: the atlas table of site S is stored as result "atlas/S"
RESULT_PREFIX = "atlas"
#: planted truth of site S, when a store carries it, is result "truth/S" (``polysemantic``)
TRUTH_PREFIX = "truth"


def jaccard(a: Any, b: Any) -> float:
    """|A & B| / |A | B| of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def spearman(a: Any, b: Any) -> float:
    """Spearman's rank correlation; NaN when either score is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def unit_std(acts: xr.DataArray) -> np.ndarray:
    """Each unit's activation std over the inputs (float64; texts reduced by the mean of
    their real tokens, see :func:`polysdk.dims.select_array`); NaN for a unit with no
    finite value."""
    from polysdk import dims

    rows = dims.select_array(acts, "mean")
    with np.errstate(invalid="ignore"):
        std = rows.std("sample", skipna=True)
    return np.asarray(std.values, dtype=np.float64)


def save_truth(store: Any, site: str, polysemantic: Any) -> str:
    """Store a site's planted truth (one bool per unit) where the atlas finds it."""
    name = f"{TRUTH_PREFIX}/{site}"
    mask = np.asarray(getattr(polysemantic, "polysemantic", polysemantic), dtype=bool)
    store.write_result(name, xr.Dataset({"polysemantic": ("unit", mask)}))
    return name


def _is_store(obj: Any) -> bool:
    return hasattr(obj, "read_result") and hasattr(obj, "__getitem__") and hasattr(obj, "sites")


def _is_detector(obj: Any) -> bool:
    return hasattr(obj, "fit") and hasattr(obj, "get_params") and hasattr(obj, "clone")


def _weight_based(det: Any) -> bool:
    """True for detectors that read a model, not recordings (``feature_capacity``)."""
    try:
        from polysdk.detect import WeightDetector
    except ImportError:  # an older polysdk: the class flag
        return bool(getattr(type(det), "weight_based", False))
    return isinstance(det, WeightDetector)


def _per_site(value: Any, site: str) -> Any:
    if isinstance(value, Mapping) and not isinstance(value, xr.DataArray):
        return value.get(site)
    return value


class Atlas:
    """Every applicable detector fitted on the same site(s), with their agreement.

    Parameters
    ----------
    source : ActivationStore, xr.DataArray or xr.Dataset
        A store (its ``sites``) or one site's activations (named by ``attrs["site"]``
        or its name; ``"activations"`` when nothing says).
    sites : str, list of str or None
        Sites of a store to map (default: all of them).
    detectors : None, list of names / Detector instances, or {name: params}
        ``None``: every applicable built-in (decided from the data; see
        :mod:`polysdk.atlas._plan`). Names get the atlas's scaled defaults updated
        by ``params``; instances are fitted as they are (a clone per site).
    labels : array, coordinate name, {site: ...} or None
        Labels of the label-based detectors (default: ``label``, else on texts
        ``concept``).
    truth : bool array, DataArray, planted object, result name, {site: ...} or None
        Planted ground truth (one bool per unit). ``None``: the store's result
        ``truth/<site>`` when it has one (:func:`save_truth`).
    params : {name: {param: value}}
        Parameters per detector name, over the atlas's defaults.
    model, embedding, fit_params
        ``model`` is what weight-based detectors read (``feature_capacity``: a toy
        model; ``embedding=E`` its feature embedding); ``fit_params`` gives extra
        ``fit`` keywords per detector name.
    client : dask.distributed.Client, optional
        Passed to every detector's ``fit``.
    near_constant : float
        A unit whose activation std (over the inputs, texts reduced by their real-token
        mean) is below this share of the site's 95th-percentile unit std is marked
        ``near_constant`` (dead or pruned units; default 0.05). The 95th percentile, not
        the median, so that a layer whose units are mostly pruned still has a live scale,
        and not the max, so that a few outlier dimensions do not set it. The verdicts are left as
        each detector gives them; the table and the page say how many near-constant units
        each one flags, since flagging one reads noise as polysemanticity.

    Attributes
    ----------
    results_ : {site: xr.Dataset}
        ``score``, ``polysemantic`` and ``detail`` (unit, detector); ``jaccard``,
        ``spearman`` (detector, detector_); ``n_flagged`` (detector); ``flag_count``,
        ``disagreement``, ``activation_std``, ``near_constant`` (unit);
        ``n_flagged_near_constant`` (detector); with truth ``truth`` (unit),
        ``precision``, ``recall`` (detector). attrs: ``site``, ``skipped_json`` ({name: why}), ``params_json``,
        ``labels_from``.
    detectors_ : {site: {name: Detector}}
        The fitted detectors (their full results).
    """

    def __init__(self, source: Any, sites: str | Sequence[str] | None = None,
                 detectors: Any = None, labels: Any = None, truth: Any = None, *,
                 params: Mapping[str, Mapping[str, Any]] | None = None, model: Any = None,
                 embedding: Any = None, fit_params: Mapping[str, Mapping[str, Any]] | None = None,
                 client: Any = None, near_constant: float = 0.05) -> None:
        if not 0 <= float(near_constant) < 1:
            raise ConfigError(f"near_constant={near_constant!r} is a share of the site's "
                              "95th-percentile unit std: pass a number in [0, 1) (0 marks only constant units).")
        self.source = source
        self.near_constant = float(near_constant)
        self.sites = sites
        self.detectors = detectors
        self.labels = labels
        self.truth = truth
        self.params = params
        self.model = model
        self.embedding = embedding
        self.fit_params = fit_params
        self.client = client

    def __repr__(self) -> str:
        fitted = f", fitted on {list(self.results_)}" if "results_" in self.__dict__ else ""
        return f"Atlas({type(self.source).__name__}, sites={self.sites!r}{fitted})"

    # ------------------------------------------------------------------ sources
    def site_arrays(self) -> dict[str, xr.DataArray]:
        """Each mapped site's activations (lazy for a store), with ``attrs['site']``."""
        src = self.source
        wanted = [self.sites] if isinstance(self.sites, str) else (
            list(self.sites) if self.sites is not None else None)
        if _is_store(src):
            known = list(src.sites)
            if not known:
                raise DetectorInputError(f"the store {getattr(src, 'path', src)!s} holds no "
                                         "sites yet; record activations first.")
            out = {}
            for site in wanted or known:
                if site not in known:
                    raise SiteNotFoundError(f"site {site!r} is not in the store; closest: "
                                            f"{closest_names(site, known) or known}")
                out[site] = src[site]
            return out
        if isinstance(src, xr.Dataset):
            if "activation" not in src.data_vars:
                raise DetectorInputError(f"the Dataset has no 'activation' variable (it has "
                                         f"{list(src.data_vars)}); pass the DataArray itself.")
            src = src["activation"]
        if not isinstance(src, xr.DataArray):
            raise DetectorInputError(
                f"Atlas cannot read a {type(src).__name__}; pass an ActivationStore or an "
                "xarray.DataArray with dims ('sample', 'unit', ...) (e.g. store['fc1']).")
        site = src.attrs.get("site") or (src.name if isinstance(src.name, str) and
                                         src.name != "activation" else None)
        site = site or (wanted[0] if wanted and len(wanted) == 1 else "activations")
        if wanted and wanted != [site]:
            raise ConfigError(f"sites={self.sites!r} but the DataArray holds one site, "
                              f"{site!r}; drop sites= or pass the store instead.")
        arr = src.copy(deep=False)
        arr.attrs = {**src.attrs, "site": site}
        return {site: arr}

    # ------------------------------------------------------------------ plan
    def _requested(self) -> list[tuple[str, Any, dict[str, Any], bool]]:
        """(name, Detector instance or None, params, explicit) per requested detector."""
        spec = self.detectors
        user = dict(self.params or {})
        if spec is None:
            return [(n, None, dict(user.get(n, {})), False) for n in _plan.ORDER]
        if isinstance(spec, str) or _is_detector(spec):
            spec = [spec]
        out = []
        if isinstance(spec, Mapping):
            for name, p in spec.items():
                out.append((str(name), None, {**user.get(name, {}), **dict(p or {})}, True))
            return out
        for item in spec:
            if _is_detector(item):
                name = getattr(item, "registry_name", "") or type(item).__name__
                out.append((name, item, {}, True))
            elif isinstance(item, str):
                out.append((item, None, dict(user.get(item, {})), True))
            else:
                raise ConfigError(f"detectors= takes names or Detector instances, got "
                                  f"{item!r}; e.g. detectors=['class_selectivity', 'hdbscan'].")
        return out

    def _truth(self, site: str, n_units: int) -> np.ndarray | None:
        value = _per_site(self.truth, site)
        src = self.source
        if value is None and _is_store(src):
            name = f"{TRUTH_PREFIX}/{site}"
            value = name if name in src.list_results() else None
        if value is None:
            return None
        if isinstance(value, str):
            if not _is_store(src):
                raise ConfigError(f"truth={value!r} names a stored result but the source is "
                                  "not a store; pass the truth as a bool array.")
            name = value if "/" in value else f"{value}/{site}"
            value = src.read_result(name)["polysemantic"]
        value = getattr(value, "polysemantic", value)
        mask = np.asarray(getattr(value, "values", value), dtype=bool)
        if mask.shape != (n_units,):
            raise ConfigError(f"truth for site {site!r} has shape {mask.shape} but the site "
                              f"has {n_units} units; give one bool per unit.")
        return mask

    # ------------------------------------------------------------------ fit
    def fit(self) -> Atlas:
        """Fit every applicable detector on every mapped site; returns ``self``."""
        from polysdk.detect import Detector

        self.results_: dict[str, xr.Dataset] = {}
        self.detectors_: dict[str, dict[str, Any]] = {}
        fit_params = dict(self.fit_params or {})
        if self.embedding is not None:
            fit_params.setdefault("feature_capacity", {})
            fit_params["feature_capacity"] = {"embedding": self.embedding,
                                              **fit_params["feature_capacity"]}
        for site, acts in self.site_arrays().items():
            f = _plan.facts(acts, _per_site(self.labels, site))
            fitted: dict[str, Any] = {}
            skipped: dict[str, str] = {}
            used: dict[str, dict[str, Any]] = {}
            for name, inst, user, explicit in self._requested():
                why = _plan.skip_reason(name, f, self.model)
                if why:
                    skipped[name] = why
                    continue
                try:
                    det = inst.clone() if inst is not None else Detector.from_name(
                        name, **{**_plan.default_params(name, f), **user})
                    kw = dict(fit_params.get(name, {}))
                    if self.client is not None:
                        kw["client"] = self.client
                    if _weight_based(det):
                        det.fit(self.model, **kw)
                    else:
                        if name in ("class_selectivity", "concept_ranking") and f.labels is not None:
                            kw.setdefault("labels", f.labels)
                        det.fit(acts, **kw)
                except (DetectorInputError, ConfigError, ValueError) as err:
                    if explicit:
                        raise
                    skipped[name] = f"failed on this site: {err}"
                    log.warning("atlas: %s skipped on %s: %s", name, site, err)
                    continue
                if int(det.result_.sizes["unit"]) != f.n_units:
                    skipped[name] = (f"its result has {det.result_.sizes['unit']} units but "
                                     f"the site has {f.n_units}: not the same neurons")
                    continue
                fitted[name] = det
                used[name] = det.get_params()
            truth = self._truth(site, f.n_units)
            self.detectors_[site] = fitted
            self.results_[site] = self._table(site, acts, f, fitted, skipped, used, truth)
        return self

    def _table(self, site: str, acts: xr.DataArray, f: _plan.Facts, fitted: dict[str, Any],
               skipped: dict[str, str], used: dict[str, Any], truth: np.ndarray | None
               ) -> xr.Dataset:
        from polysdk._util import jsonable
        from polysdk.data.planted import precision_recall

        names = list(fitted)
        n = f.n_units
        score = np.full((n, len(names)), np.nan)
        poly = np.zeros((n, len(names)), dtype=bool)
        detail = np.full((n, len(names)), "", dtype=object)
        for j, name in enumerate(names):
            res = fitted[name].result_
            score[:, j] = np.asarray(res["score"].values, dtype=float)
            poly[:, j] = np.asarray(res["polysemantic"].values, dtype=bool)
            detail[:, j] = details(name, res)
        jac = np.array([[jaccard(poly[:, a], poly[:, b]) for b in range(len(names))]
                        for a in range(len(names))]).reshape(len(names), len(names))
        rho = np.array([[spearman(score[:, a], score[:, b]) for b in range(len(names))]
                        for a in range(len(names))]).reshape(len(names), len(names))
        std = unit_std(acts)
        live = float(np.nanpercentile(std, 95)) if np.isfinite(std).any() else 0.0
        floor = self.near_constant * live
        flat = ~(std > floor) if floor > 0 else ~(std > 0)   # NaN (no input) counts as flat
        k = poly.sum(1)
        half = max(1, len(names) // 2)
        dis = np.minimum(k, len(names) - k) / half if len(names) >= 2 else np.zeros(n)
        unit_labels = acts.coords["unit"].values if "unit" in acts.coords else np.arange(n)
        ds = xr.Dataset(
            {"score": (("unit", "detector"), score),
             "polysemantic": (("unit", "detector"), poly),
             "detail": (("unit", "detector"), detail.astype(str)),
             "jaccard": (("detector", "detector_"), jac),
             "spearman": (("detector", "detector_"), rho),
             "n_flagged": ("detector", poly.sum(0).astype(np.int64)),
             "flag_count": ("unit", k.astype(np.int64)),
             "disagreement": ("unit", dis.astype(float)),
             "activation_std": ("unit", std),
             "near_constant": ("unit", flat),
             "n_flagged_near_constant": ("detector", poly[flat].sum(0).astype(np.int64))},
            coords={"unit": np.arange(n), "unit_label": ("unit", np.asarray(unit_labels)),
                    "detector": np.array(names, dtype=str),
                    "detector_": np.array(names, dtype=str)})
        if ds["unit_label"].dtype == object:
            ds["unit_label"] = ds["unit_label"].astype(str)
        if truth is not None:
            pr = [precision_recall(poly[:, j], truth) for j in range(len(names))]
            ds["truth"] = ("unit", truth)
            ds["precision"] = ("detector", np.array([p for p, _ in pr], dtype=float))
            ds["recall"] = ("detector", np.array([r for _, r in pr], dtype=float))
        params = {name: jsonable(p) for name, p in used.items()}
        ds.attrs = {"site": site, "skipped_json": json.dumps(skipped),
                    "params_json": json.dumps(params, default=repr),
                    "labels_from": f.labels_from or "none", "dims": json.dumps(list(f.dims)),
                    "n_inputs": int(f.n_inputs), "near_constant_share": self.near_constant}
        return ds

    # ------------------------------------------------------------------ reading
    def _fitted(self) -> dict[str, xr.Dataset]:
        if "results_" not in self.__dict__:
            from polysdk.errors import NotFittedError

            raise NotFittedError("this Atlas is not fitted yet; call atlas.fit() first (or "
                                 "Atlas.load(store)).")
        return self.results_

    def table(self, site: str | None = None) -> xr.Dataset:
        """The unit x detector table of ``site`` (the only site when None)."""
        res = self._fitted()
        if site is None:
            if len(res) != 1:
                raise ConfigError(f"the atlas maps several sites {list(res)}; choose one: "
                                  "atlas.table(site).")
            return next(iter(res.values()))
        if site not in res:
            raise SiteNotFoundError(f"site {site!r} is not in the atlas; closest: "
                                    f"{closest_names(site, list(res)) or list(res)}")
        return res[site]

    @property
    def result_(self) -> xr.Dataset:
        """The table of the only site (see :meth:`table` for several)."""
        return self.table()

    def skipped(self, site: str | None = None) -> dict[str, str]:
        """{detector: why it was not fitted} on ``site``."""
        return json.loads(self.table(site).attrs["skipped_json"])

    def agreement(self, detector: str, detector_: str, site: str | None = None
                  ) -> dict[str, float]:
        """Jaccard of the two flagged sets and Spearman correlation of the scores."""
        ds = self.table(site)
        names = list(ds["detector"].values)
        for d in (detector, detector_):
            if d not in names:
                raise ConfigError(f"detector {d!r} is not in the atlas of site "
                                  f"{ds.attrs['site']!r} (fitted: {names}; skipped: "
                                  f"{self.skipped(ds.attrs['site'])}).")
        sel = {"detector": detector, "detector_": detector_}
        return {"jaccard": float(ds["jaccard"].sel(sel)),
                "spearman": float(ds["spearman"].sel(sel))}

    def disputed(self, n: int = 10, site: str | None = None) -> list[int]:
        """The ``n`` units the detectors disagree on most (disagreement > 0), most first;
        ties broken by how far the units' score percentiles spread across detectors."""
        from scipy.stats import rankdata

        ds = self.table(site)
        dis = ds["disagreement"].values
        score = ds["score"].values
        if score.shape[1] == 0:
            return []
        pct = np.column_stack([rankdata(np.nan_to_num(score[:, j])) / max(1, score.shape[0])
                               for j in range(score.shape[1])])
        spread = pct.std(1)
        order = np.lexsort((-spread, -dis))
        return [int(u) for u in order if dis[u] > 0][:n]

    # ------------------------------------------------------------------ persistence
    def save(self, store: Any, detectors: bool = False) -> list[str]:
        """Write each site's table as result ``atlas/<site>`` (and, with
        ``detectors=True``, each detector's own result as ``<detector>/<site>``)."""
        names = []
        for site, ds in self._fitted().items():
            name = f"{RESULT_PREFIX}/{site}"
            store.write_result(name, ds, attrs=dict(ds.attrs))
            names.append(name)
            if detectors:
                for det in self.detectors_.get(site, {}).values():
                    names.append(det.save(store))
        return names

    @classmethod
    def load(cls, store: Any, sites: str | Sequence[str] | None = None) -> Atlas:
        """An atlas from the tables :meth:`save` wrote (no fitted detectors)."""
        stored = [r[len(RESULT_PREFIX) + 1:] for r in store.list_results()
                  if r.startswith(RESULT_PREFIX + "/")]
        wanted = [sites] if isinstance(sites, str) else list(sites or stored)
        missing = [s for s in wanted if s not in stored]
        if missing or not wanted:
            raise DetectorInputError(f"the store holds no atlas for site(s) {missing or wanted}"
                                     f" (stored: {stored}); run Atlas(store).fit().save(store).")
        atlas = cls(store, sites=wanted)
        atlas.results_ = {s: store.read_result(f"{RESULT_PREFIX}/{s}") for s in wanted}
        atlas.detectors_ = {s: {} for s in wanted}
        return atlas

    def to_html(self, path: Any, pages: int = 10, units: Mapping[str, Sequence[int]] | None = None,
                **page_kw: Any) -> Any:
        """Write the atlas page (and neuron pages of the disputed units); returns its path.

        ``pages``: neuron pages per site for the most disputed units; ``units``:
        {site: [unit, ...]} more pages. ``page_kw`` goes to every neuron page
        (``tokenizer=``, ``images=``, ``interventions=``; see
        :func:`polysdk.atlas.neuron_page`).
        """
        from polysdk.atlas._page import write_atlas_page

        return write_atlas_page(self, path, pages=pages, units=units, **page_kw)
