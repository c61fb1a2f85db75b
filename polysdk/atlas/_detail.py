"""One short line per unit saying why each detector decided as it did."""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["details"]


def _names(mask: np.ndarray, names: np.ndarray, limit: int = 4) -> str:
    picked = [str(n) for n in names[np.asarray(mask, dtype=bool)]]
    more = f" +{len(picked) - limit}" if len(picked) > limit else ""
    return ", ".join(picked[:limit]) + more if picked else "none"


def _per_other(res: xr.Dataset, var: str, other: str, unit: int, words: str) -> str:
    row = res[var].isel(unit=unit).values
    return f"{words} {_names(row, res[other].values)}"


def details(name: str, res: xr.Dataset) -> list[str]:
    """The reason of detector ``name`` for every unit of its result ``res``."""
    n = res.sizes["unit"]
    out = []
    for u in range(n):
        try:
            out.append(_one(name, res, u))
        except (KeyError, IndexError, ValueError):
            out.append(f"score {float(res['score'].values[u]):.3g}")
    return out


def _one(name: str, res: xr.Dataset, u: int) -> str:
    if name == "class_selectivity" and "fires_for" in res:
        return _per_other(res, "fires_for", "class", u, "fires for")
    if name == "concept_ranking" and "top" in res:
        return _per_other(res, "top", "concept", u, "top unit of")
    if name == "concept_sets" and "active" in res:
        text = _per_other(res, "active", "set", u, "active on")
        shallow = res["shallow"].isel(unit=u).values if "shallow" in res else None
        if shallow is not None and shallow.any():
            tokens = res["top_token"].isel(unit=u).values
            sets = res["set"].values
            text += "; shallow: " + ", ".join(f"{tokens[i]!r} on {sets[i]}"
                                              for i in np.flatnonzero(shallow))
        return text
    if name == "hdbscan" and "n_clusters" in res:
        k = int(res["n_clusters"].values[u])
        top = res.sizes.get("rank", 0)
        noise = float(res["noise_fraction"].values[u]) if "noise_fraction" in res else np.nan
        return f"{k} cluster{'s' if k != 1 else ''} among its top {top} inputs (noise {noise:.0%})"
    if name == "dictionary_features" and "n_served" in res:
        served = int(res["n_served"].values[u])
        eff = float(res["effective_features"].values[u]) if "effective_features" in res else np.nan
        return f"serves {served} dictionary feature{'s' if served != 1 else ''} (effective {eff:.2f})"
    if name == "feature_capacity" and "capacity" in res:
        return f"capacity max/sum {float(res['capacity'].values[u]):.3f}"
    return f"score {float(res['score'].values[u]):.3g}"
