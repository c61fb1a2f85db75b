"""Feature preservation: does a circuit (a masked model) still compute the unit?

On held-out inputs, with ``a`` the unit's activation map of the full model and ``c``
that of the circuit: Pearson ``r`` between ``c`` and ``a`` (over every input and
position; on text batches with an ``attention_mask``, over real tokens only) and ``dF_norm = mean|c - a| / mean|a|``; :func:`preservation_curve` does
this at a ladder of densities for a fitted saliency (``SNIP``, ``ActGrad``,
``FORCE``)::

    curve = preservation_curve(snip, heldout_images)           # xr.Dataset over density
    curve.pearson_r.sel(density=0.05)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from polysdk._util import progress_bar
from polysdk.errors import ConfigError
from polysdk.mask._core import SiteReader, eval_mode, masked_call, model_device
from polysdk.mask._data import Target, iter_batches
from polysdk.mask.io import densities
from polysdk.sites import SiteSpec

__all__ = ["DEFAULT_DENSITIES", "feature_preservation", "preservation_curve"]

DEFAULT_DENSITIES = (0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.001)


def preservation_scores(circuit: torch.Tensor, original: torch.Tensor) -> dict[str, float]:
    """Pearson r and ``dF_norm`` of two activation arrays of one shape.

    >>> r = preservation_scores(torch.tensor([2.0, 4.0, 6.0]), torch.tensor([1.0, 2.0, 3.0]))
    >>> round(r["pearson_r"], 9), r["dF_norm"]
    (1.0, 1.0)
    """
    c = circuit.detach().double().reshape(-1)
    a = original.detach().double().reshape(-1)
    if c.shape != a.shape:
        raise ConfigError(f"activation shapes differ: circuit {tuple(circuit.shape)}, original {tuple(original.shape)}")
    cc, ac = c - c.mean(), a - a.mean()
    denom = float(cc.norm() * ac.norm())
    r = float((cc * ac).sum()) / denom if denom > 0 else float("nan")
    scale = float(a.abs().mean())
    df = float((c - a).abs().mean()) / scale if scale > 0 else float("nan")
    return {"pearson_r": r, "dF_norm": df}


def feature_preservation(
    model: Any,
    target: SiteSpec,
    unit: int | None,
    x: Any,
    masks: Mapping[str, torch.Tensor],
    *,
    position: Any = None,
    dims: Sequence[str] | None = None,
    batch_size: int = 64,
    stop_at_target: bool = True,
) -> dict[str, float]:
    """Pearson r and ``dF_norm`` of the circuit ``masks`` against the full model.

    ``x`` is batched as by the maskers (a tensor, a tuple, a dict of model keyword
    arguments, or an iterable of batches); ``position`` and ``dims`` select the unit's
    value as they do there, and padded positions are left out.
    """
    device = model_device(model)
    circ, orig = [], []
    with eval_mode(model), SiteReader(model, target, stop=stop_at_target) as reader, torch.no_grad():
        spec = Target(reader.site, unit, position, dims)
        for batch in iter_batches(x, batch_size):
            b = batch.to(device)
            orig.append(spec.value(reader.run(lambda: b.call(model)), b.mask).flat().cpu())
            circ.append(spec.value(
                reader.run(lambda: masked_call(model, masks, *b.args, detach=True, **b.kwargs)), b.mask
            ).flat().cpu())
    return preservation_scores(torch.cat(circ), torch.cat(orig))


def preservation_curve(
    scorer: Any,
    x: Any,
    densities_: Sequence[float] = DEFAULT_DENSITIES,
    *,
    x_fit: Any = None,
    batch_size: int = 64,
    progress: bool = False,
) -> xr.Dataset:
    """``pearson_r``, ``dF_norm``, ``kept`` and ``density_all`` (kept / all scored
    weights) over ``density`` for a fitted saliency; FORCE is re-run at each density
    when ``x_fit`` is given."""
    if not hasattr(scorer, "scores_"):
        raise ConfigError(f"{type(scorer).__name__} is not fitted: call fit(x) before preservation_curve")
    rows: dict[str, list[float]] = {"pearson_r": [], "dF_norm": [], "kept": [], "density_all": []}
    for d in progress_bar(list(densities_), show=progress, desc="preservation"):
        masks = scorer.masks_for(d, x=x_fit)
        res = feature_preservation(
            scorer.model, scorer.target, scorer.unit, x, masks, position=scorer.position,
            dims=scorer.dims, batch_size=batch_size, stop_at_target=scorer.stop_at_target,
        )
        dens = densities(masks)
        rows["pearson_r"].append(res["pearson_r"])
        rows["dF_norm"].append(res["dF_norm"])
        rows["kept"].append(dens["kept"])
        rows["density_all"].append(dens["overall"])
    ds = xr.Dataset({k: ("density", np.asarray(v)) for k, v in rows.items()},
                    coords={"density": np.asarray(list(densities_), dtype=float)})
    ds.attrs.update({"method": type(scorer).__name__, "target": str(scorer.target),
                     "unit": -1 if scorer.unit is None else int(scorer.unit),
                     "structure": str(getattr(scorer, "structure", "weight"))})
    return ds
