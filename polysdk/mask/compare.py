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
the sum of independent per-parameter hypergeometrics, exact by convolution) or only
the total counts (``null="pooled"``, one hypergeometric over all weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from scipy import signal, stats

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
    """Expected intersection and IoU and the two one-sided p-values of ``observed``.

    >>> r = hypergeom_overlap(10, 5, 5, 5)
    >>> r["expected_intersection"], round(r["p_value"], 6)   # P(I = 5) = 1 / C(10, 5)
    (2.5, 0.003968)
    """
    if not (0 <= ka <= n and 0 <= kb <= n and 0 <= observed <= min(ka, kb)):
        raise ConfigError(f"inconsistent counts: n={n}, k_a={ka}, k_b={kb}, intersection={observed}")
    rv = stats.hypergeom(n, ka, kb)
    expected = ka * kb / n if n else float("nan")
    lo, pmf = _pmf(n, ka, kb) if min(ka, kb) < _MAX_EXACT else (0, np.zeros(0))
    return {
        "expected_intersection": expected,
        "expected_iou": _iou_mean(lo, pmf, ka, kb) if len(pmf) else expected / (ka + kb - expected),
        "p_value": float(rv.sf(observed - 1)),
        "p_value_depletion": float(rv.cdf(observed)),
    }


def _layerwise_null(rows: list[tuple[int, int, int]], observed: int, ka: int, kb: int) -> dict[str, float]:
    expected = sum(a * b / n for n, a, b in rows if n)
    support = sum(min(a, b) - max(0, a + b - n) + 1 for n, a, b in rows)
    if support <= _MAX_EXACT:
        lo, pmf = 0, np.ones(1)
        for n, a, b in rows:
            start, part = _pmf(n, a, b)
            pmf = np.clip(signal.fftconvolve(pmf, part) if len(pmf) * len(part) > 10_000 else np.convolve(pmf, part), 0, None)
            lo += start
        pmf = pmf / pmf.sum()
        idx = observed - lo
        p_hi = float(pmf[max(idx, 0):].sum()) if idx < len(pmf) else 0.0
        p_lo = float(pmf[: idx + 1].sum()) if idx >= 0 else 0.0
        return {"expected_intersection": expected, "expected_iou": _iou_mean(lo, pmf, ka, kb),
                "p_value": min(1.0, p_hi), "p_value_depletion": min(1.0, p_lo)}
    # normal approximation for very large masks
    var = sum(a * b * (n - a) * (n - b) / (n * n * (n - 1)) for n, a, b in rows if n > 1)
    sd = max(var, 1e-300) ** 0.5
    return {
        "expected_intersection": expected,
        "expected_iou": expected / (ka + kb - expected) if ka + kb - expected > 0 else float("nan"),
        "p_value": float(stats.norm.sf((observed - 0.5 - expected) / sd)),
        "p_value_depletion": float(stats.norm.cdf((observed + 0.5 - expected) / sd)),
    }


def mask_overlap(a: Any, b: Any, *, null: Literal["layerwise", "pooled"] = "layerwise") -> xr.Dataset:
    """Overlap table of two mask sets over ``param`` (each parameter, then ``"overall"``).

    Variables: ``size``, ``kept_a``, ``kept_b``, ``intersection``, ``union``, ``iou``,
    ``expected_intersection``, ``expected_iou``, ``enrichment`` (observed / expected),
    ``p_value`` (more overlap than chance), ``p_value_depletion`` (less).

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
        "expected_iou", "enrichment", "p_value", "p_value_depletion")}
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
    add(n, ka, kb, inter, overall)
    ds = xr.Dataset(
        {k: ("param", np.asarray(v, dtype=np.int64 if k in ("size", "kept_a", "kept_b", "intersection", "union") else float))
         for k, v in cols.items()},
        coords={"param": [*names, "overall"]},
    )
    ds.attrs["null"] = null
    return ds
