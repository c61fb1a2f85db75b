"""Mask comparison: do two subnetworks share more weights than chance?

For two binary masks over the same parameters, per parameter and overall: the
intersection, union and IoU, and what to expect if the two masks were independent
random masks with the same kept counts: the intersection of a mask keeping ``k_a`` of
``n`` weights with one keeping ``k_b`` is hypergeometric,
``P(I = i) = C(k_a, i) C(n - k_a, k_b - i) / C(n, k_b)``, mean ``k_a k_b / n``.
``p_value`` is ``P(I >= observed)`` (more overlap than chance) and
``p_value_depletion`` is ``P(I <= observed)``::

    table = mask_overlap(cs_a.masks_, cs_b.masks_)
    table.sel(param="overall")[["intersection", "expected_intersection", "p_value"]]

The ``overall`` row's null keeps each parameter's kept counts (``null="layerwise"``,
the sum of independent per-parameter hypergeometrics) or only the total counts
(``null="pooled"``, one hypergeometric over all weights).

Every p-value also comes as its natural log (``log_p_value``), exact down to and
below the smallest float. The layerwise sum is convolved after an exponential tilt
``p_i(k) e^(theta k)`` chosen so that the tilted sum centres on the observed overlap:
FFT round-off is then relative to the terms that make up the tail, not to the peak of
the null (which put a floor near 1e-16 under the plain convolution), and the tilt is
undone in log space. Beyond 5 million support points the tails come from the
Lugannani-Rice saddlepoint formula on the same tilt (Daniels' continuity correction).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from scipy import optimize, signal, special, stats

from polysdk.errors import ConfigError
from polysdk.mask.io import dataset_to_masks

__all__ = ["hypergeom_overlap", "mask_overlap"]

_MAX_EXACT = 5_000_000


def _as_masks(masks: Any) -> dict[str, np.ndarray]:
    if isinstance(masks, xr.Dataset):
        masks = dataset_to_masks(masks)
    if not isinstance(masks, Mapping) or not masks:
        raise ConfigError(f"expected a non-empty dict {{param: bool mask}} or a mask Dataset, got {type(masks).__name__}")
    out = {}
    for name, m in masks.items():
        arr = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        out[str(name)] = arr.astype(bool)
    return out


def _pmf(n: int, ka: int, kb: int) -> tuple[int, np.ndarray]:
    """Support start and pmf of the hypergeometric overlap."""
    lo, hi = max(0, ka + kb - n), min(ka, kb)
    ks = np.arange(lo, hi + 1)
    return lo, stats.hypergeom(n, ka, kb).pmf(ks)


def _iou_mean(lo: int, pmf: np.ndarray, ka: int, kb: int) -> float:
    ks = np.arange(lo, lo + len(pmf))
    union = ka + kb - ks
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, ks / np.maximum(union, 1), np.nan)
    return float(np.nansum(pmf * iou)) if np.isfinite(iou).any() else float("nan")


def hypergeom_overlap(n: int, ka: int, kb: int, observed: int) -> dict[str, float]:
    """Expected intersection and IoU, the two one-sided p-values of ``observed`` and
    their natural logs (``log_p_value``, exact where ``p_value`` underflows to 0).

    >>> r = hypergeom_overlap(10, 5, 5, 5)
    >>> r["expected_intersection"], round(r["p_value"], 6)   # P(I = 5) = 1 / C(10, 5)
    (2.5, 0.003968)
    >>> round(r["log_p_value"], 6) == round(-math.log(252), 6)
    True
    """
    if not (0 <= ka <= n and 0 <= kb <= n and 0 <= observed <= min(ka, kb)):
        raise ConfigError(f"inconsistent counts: n={n}, k_a={ka}, k_b={kb}, intersection={observed}")
    rv = stats.hypergeom(n, ka, kb)
    expected = ka * kb / n if n else float("nan")
    lo, pmf = _pmf(n, ka, kb) if min(ka, kb) < _MAX_EXACT else (0, np.zeros(0))
    fixed = min(ka, kb) == max(0, ka + kb - n)  # one possible overlap
    return {
        "expected_intersection": expected,
        "expected_iou": _iou_mean(lo, pmf, ka, kb) if len(pmf) else expected / (ka + kb - expected),
        "p_value": float(rv.sf(observed - 1)),
        "p_value_depletion": float(rv.cdf(observed)),
        "log_p_value": 0.0 if fixed else min(0.0, float(stats.hypergeom.logsf(observed - 1, n, ka, kb))),
        "log_p_value_depletion": 0.0 if fixed else min(0.0, float(stats.hypergeom.logcdf(observed, n, ka, kb))),
    }


def _log1mexp(x: float) -> float:
    """``log(1 - exp(x))`` for ``x <= 0``, stable at both ends."""
    if x >= 0:
        return -math.inf
    return math.log(-math.expm1(x)) if x > -math.log(2) else math.log1p(-math.exp(x))


def _log_pmfs(rows: list[tuple[int, int, int]]) -> tuple[int, list[tuple[int, np.ndarray]]]:
    """Per parameter, the support start and log-pmf of its overlap; parameters whose
    overlap is fixed (nothing kept, or everything) only shift the total by ``offset``."""
    offset, logs = 0, []
    for n, a, b in rows:
        lo, hi = max(0, a + b - n), min(a, b)
        if hi == lo:
            offset += lo
        else:
            logs.append((lo, stats.hypergeom.logpmf(np.arange(lo, hi + 1), n, a, b)))
    return offset, logs


def _tilted(logs: list[tuple[int, np.ndarray]], theta: float
            ) -> tuple[float, float, float, list[np.ndarray]]:
    """Exponential tilt ``p_i(k) e^(theta k) / Z_i`` of every pmf: the cumulant
    generating function ``K = sum log Z_i``, its first two derivatives (the tilted mean
    and variance) and the tilted pmfs."""
    cgf = mean = var = 0.0
    parts = []
    for lo, lp in logs:
        ks = np.arange(lo, lo + len(lp), dtype=float)
        x = lp + theta * ks
        top = float(x.max())
        w = np.exp(x - top)
        z = float(w.sum())
        w /= z
        m = float(w @ ks)
        cgf += top + math.log(z)
        mean += m
        var += float(w @ (ks - m) ** 2)
        parts.append(w)
    return cgf, mean, var, parts


def _saddle(logs: list[tuple[int, np.ndarray]], target: float) -> float:
    """The tilt whose tilted mean is ``target`` (strictly inside the support)."""
    def gap(t: float) -> float:
        return _tilted(logs, t)[1] - target

    lo, hi = -1.0, 1.0
    for _ in range(64):
        if gap(lo) <= 0:
            break
        lo *= 2
    for _ in range(64):
        if gap(hi) >= 0:
            break
        hi *= 2
    return float(optimize.brentq(gap, lo, hi, xtol=1e-12, rtol=1e-12))


def _convolve(parts: list[np.ndarray]) -> np.ndarray:
    out = np.ones(1)
    for part in parts:
        big = len(out) * len(part) > 10_000
        out = np.clip(signal.fftconvolve(out, part) if big else np.convolve(out, part), 0, None)
    return out


def _exact_log_tails(logs: list[tuple[int, np.ndarray]], s: int) -> tuple[float, float]:
    """``log P(S >= s)`` and ``log P(S <= s)`` for ``S`` the sum of the overlaps, exact
    to round-off at any depth: the pmfs are tilted so that the tilted sum centres on
    ``s``, convolved (FFT round-off is then relative to the terms near ``s``) and
    untilted in log space. The far tail comes directly; the other as ``1 -`` it."""
    start = sum(lo for lo, _ in logs)
    stop = start + sum(len(lp) - 1 for _, lp in logs)
    if s >= stop or s <= start:  # an edge of the support: one configuration
        edge = sum(float(lp[-1] if s >= stop else lp[0]) for _, lp in logs)
        return (edge, 0.0) if s >= stop else (0.0, edge)
    theta = _saddle(logs, s)
    cgf, _, _, parts = _tilted(logs, theta)
    q = _convolve(parts)
    t = np.arange(start, start + len(q), dtype=float)
    with np.errstate(divide="ignore"):
        logp = np.log(q) - theta * t + cgf
    i = s - start
    if theta >= 0:  # s at or above the mean: the upper tail is the small one
        up = float(special.logsumexp(logp[i:]))
        return up, _log1mexp(float(special.logsumexp(logp[i + 1:])))
    down = float(special.logsumexp(logp[: i + 1]))
    return _log1mexp(float(special.logsumexp(logp[:i]))), down


def _lugannani_rice(w: float, u: float) -> float:
    """``log(P)`` with ``P = sf(w) + pdf(w) (1/u - 1/w)`` (normal sf and pdf)."""
    if w > 1:  # the tail: factor out pdf(w), Mills ratio by erfcx
        mills = math.sqrt(math.pi / 2) * float(special.erfcx(w / math.sqrt(2)))
        return -w * w / 2 - 0.5 * math.log(2 * math.pi) + math.log(mills + 1 / u - 1 / w)
    return math.log(max(float(stats.norm.sf(w)) + float(stats.norm.pdf(w)) * (1 / u - 1 / w),
                        1e-300))


def _saddlepoint_log_tail(logs: list[tuple[int, np.ndarray]], s: int, upper: bool,
                          mean: float, sd: float) -> float:
    """``log P(S >= s)`` (``upper``) or ``log P(S <= s)``: Lugannani-Rice with Daniels'
    continuity correction for lattice sums; relative error well under 1% in the tails."""
    start = sum(lo for lo, _ in logs)
    stop = start + sum(len(lp) - 1 for _, lp in logs)
    if (upper and s <= start) or (not upper and s >= stop):
        return 0.0
    if (upper and s >= stop) or (not upper and s <= start):
        return sum(float(lp[-1] if upper else lp[0]) for _, lp in logs)
    x = s - 0.5 if upper else s + 0.5
    if abs(x - mean) < 1e-3 * sd:  # at the mean the formula is 0/0: the normal value
        return math.log(0.5)
    theta = _saddle(logs, x)
    cgf, _, var, _ = _tilted(logs, theta)
    w = math.copysign(math.sqrt(max(2 * (theta * x - cgf), 0.0)), theta)
    u = 2 * math.sinh(theta / 2) * math.sqrt(var)
    return _lugannani_rice(w, u) if upper else _lugannani_rice(-w, -u)


def _layerwise_null(rows: list[tuple[int, int, int]], observed: int, ka: int, kb: int) -> dict[str, float]:
    """The overall row under independent per-parameter hypergeometrics (exact, or a
    saddlepoint approximation when the summed support exceeds ``_MAX_EXACT``)."""
    expected = sum(a * b / n for n, a, b in rows if n)
    offset, logs = _log_pmfs(rows)
    s = observed - offset
    support = sum(len(lp) for _, lp in logs)
    if not logs:  # every overlap is fixed
        log_up, log_down = (0.0 if s >= 0 else -math.inf), (0.0 if s <= 0 else -math.inf)
        iou = observed / (ka + kb - observed) if ka + kb - observed > 0 else float("nan")
        method = "exact"
    elif support <= _MAX_EXACT:
        log_up, log_down = _exact_log_tails(logs, s)
        pmf = _convolve([np.exp(lp) for _, lp in logs])
        iou = _iou_mean(offset + sum(lo for lo, _ in logs), pmf / pmf.sum(), ka, kb)
        method = "exact"
    else:
        var = sum(a * b * (n - a) * (n - b) / (n * n * (n - 1)) for n, a, b in rows if n > 1)
        mean, sd = expected - offset, max(var, 1e-300) ** 0.5
        log_up = _saddlepoint_log_tail(logs, s, True, mean, sd)
        log_down = _saddlepoint_log_tail(logs, s, False, mean, sd)
        iou = expected / (ka + kb - expected) if ka + kb - expected > 0 else float("nan")
        method = "saddlepoint"
    return {"expected_intersection": expected, "expected_iou": iou,
            "p_value": min(1.0, math.exp(log_up)), "p_value_depletion": min(1.0, math.exp(log_down)),
            "log_p_value": min(0.0, log_up), "log_p_value_depletion": min(0.0, log_down),
            "method": method}


def mask_overlap(a: Any, b: Any, *, null: Literal["layerwise", "pooled"] = "layerwise") -> xr.Dataset:
    """Overlap table of two mask sets over ``param`` (each parameter, then ``"overall"``).

    Variables: ``size``, ``kept_a``, ``kept_b``, ``intersection``, ``union``, ``iou``,
    ``expected_intersection``, ``expected_iou``, ``enrichment`` (observed / expected),
    ``p_value`` (more overlap than chance), ``p_value_depletion`` (less), and their
    natural logs ``log_p_value``, ``log_p_value_depletion`` (exact below the smallest
    float, where the p-values themselves underflow to 0). ``attrs["overall_method"]``
    says how the overall row was computed (``"exact"``, or ``"saddlepoint"`` for a
    layerwise null whose support exceeds 5 million).

    >>> t = mask_overlap({"w": torch.tensor([1, 1, 0, 0])}, {"w": torch.tensor([1, 0, 1, 0])})
    >>> int(t.intersection.sel(param="w")), float(t.iou.sel(param="w")), float(t.expected_intersection.sel(param="w"))
    (1, 0.3333333333333333, 1.0)
    """
    if null not in ("layerwise", "pooled"):
        raise ConfigError(f"null must be 'layerwise' or 'pooled', got {null!r}")
    ma, mb = _as_masks(a), _as_masks(b)
    if set(ma) != set(mb):
        raise ConfigError(
            f"the two mask sets cover different parameters: only in the first "
            f"{sorted(set(ma) - set(mb))}, only in the second {sorted(set(mb) - set(ma))}; "
            f"compare masks over the same parameters"
        )
    cols: dict[str, list[float]] = {k: [] for k in (
        "size", "kept_a", "kept_b", "intersection", "union", "iou", "expected_intersection",
        "expected_iou", "enrichment", "p_value", "p_value_depletion", "log_p_value",
        "log_p_value_depletion")}
    rows: list[tuple[int, int, int]] = []
    names = list(ma)

    def add(n: int, ka: int, kb: int, inter: int, null_stats: dict[str, float]) -> None:
        union = ka + kb - inter
        exp = null_stats["expected_intersection"]
        for key, val in (("size", n), ("kept_a", ka), ("kept_b", kb), ("intersection", inter),
                         ("union", union), ("iou", inter / union if union else float("nan")),
                         ("enrichment", inter / exp if exp else float("nan")), *null_stats.items()):
            cols[key].append(val)

    for name in names:
        x, y = ma[name], mb[name]
        if x.shape != y.shape:
            raise ConfigError(f"masks for {name!r} have shapes {x.shape} and {y.shape}; they must match")
        n, ka, kb, inter = int(x.size), int(x.sum()), int(y.sum()), int((x & y).sum())
        rows.append((n, ka, kb))
        add(n, ka, kb, inter, hypergeom_overlap(n, ka, kb, inter))
    n, ka, kb = (sum(r[i] for r in rows) for i in range(3))
    inter = int(sum(cols["intersection"]))
    overall = hypergeom_overlap(n, ka, kb, inter) if null == "pooled" else _layerwise_null(rows, inter, ka, kb)
    method = str(overall.pop("method", "exact"))
    add(n, ka, kb, inter, overall)
    ds = xr.Dataset(
        {k: ("param", np.asarray(v, dtype=np.int64 if k in ("size", "kept_a", "kept_b", "intersection", "union") else float))
         for k, v in cols.items()},
        coords={"param": [*names, "overall"]},
    )
    ds.attrs["null"] = null
    ds.attrs["overall_method"] = method
    return ds
