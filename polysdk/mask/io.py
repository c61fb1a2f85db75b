"""Masks as labelled data: densities, ``xr.Dataset`` round trip, the store.

A mask set is a ``dict`` from parameter name (``"features.0.weight"``) to a boolean
tensor of the parameter's shape. As a Dataset it has one boolean variable per
parameter (named as the parameter, with its own dims ``"<name>.out"``, ``"<name>.in"``,
...), plus ``kept``/``size``/``density`` over ``param`` and ``layer_density`` over
``layer`` (a layer is the module owning the parameters); the overall density is the
attribute ``density``::

    ds = masks_to_dataset(masks, attrs={"target": "features.10", "unit": 255})
    store.write_result("subnetwork/features.10/255/a", ds)
    masks = dataset_to_masks(store.read_result("subnetwork/features.10/255/a"))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

from polysdk.errors import ConfigError

__all__ = ["dataset_to_masks", "densities", "load_masks", "masks_to_dataset", "save_masks"]

_AXES = {1: ("out",), 2: ("out", "in"), 3: ("out", "in", "k"), 4: ("out", "in", "kh", "kw")}
_ROLE = "polysdk.mask"


def _as_bool(mask: Any) -> np.ndarray:
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return arr.astype(bool)


def layer_of(param: str) -> str:
    """The module that owns a parameter: ``"features.0.weight"`` -> ``"features.0"``."""
    return param.rsplit(".", 1)[0] if "." in param else ""


def densities(masks: Mapping[str, Any]) -> dict[str, Any]:
    """Kept counts and densities per parameter, per layer and overall.

    >>> d = densities({"fc.weight": torch.tensor([[1, 0], [0, 0]]), "fc.bias": torch.ones(2)})
    >>> d["param"]["fc.weight"], d["layer"]["fc"], d["overall"]
    (0.25, 0.5, 0.5)
    """
    per_param: dict[str, float] = {}
    kept_layer: dict[str, list[int]] = {}
    total = [0, 0]
    for name, mask in masks.items():
        arr = _as_bool(mask)
        k, n = int(arr.sum()), int(arr.size)
        per_param[name] = k / n if n else float("nan")
        acc = kept_layer.setdefault(layer_of(name), [0, 0])
        acc[0] += k
        acc[1] += n
        total[0] += k
        total[1] += n
    return {
        "param": per_param,
        "layer": {layer: k / n if n else float("nan") for layer, (k, n) in kept_layer.items()},
        "overall": total[0] / total[1] if total[1] else float("nan"),
        "kept": total[0],
        "size": total[1],
    }


def masks_to_dataset(masks: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """One boolean variable per parameter plus densities (see the module docstring)."""
    if not masks:
        raise ConfigError("no masks given: pass a dict {parameter name: boolean mask}")
    data_vars: dict[str, Any] = {}
    names = list(masks)
    for name in names:
        if name in ("kept", "size", "density", "layer_density"):
            raise ConfigError(f"parameter name {name!r} clashes with a density variable; rename it")
        arr = _as_bool(masks[name])
        axes = _AXES.get(arr.ndim, tuple(f"d{i}" for i in range(arr.ndim)))
        data_vars[name] = xr.Variable(tuple(f"{name}.{a}" for a in axes), arr, attrs={"role": _ROLE})
    dens = densities(masks)
    kept = [int(_as_bool(masks[n]).sum()) for n in names]
    size = [int(_as_bool(masks[n]).size) for n in names]
    layers = list(dens["layer"])
    data_vars["kept"] = xr.Variable(("param",), np.asarray(kept, dtype=np.int64))
    data_vars["size"] = xr.Variable(("param",), np.asarray(size, dtype=np.int64))
    data_vars["density"] = xr.Variable(("param",), np.asarray([dens["param"][n] for n in names]))
    data_vars["layer_density"] = xr.Variable(
        ("layer",), np.asarray([dens["layer"][name] for name in layers])
    )
    ds = xr.Dataset(data_vars, coords={"param": names, "layer": layers})
    ds.attrs.update(dict(attrs or {}))
    ds.attrs["density"] = float(dens["overall"])
    ds.attrs["kept"] = int(dens["kept"])
    ds.attrs["size"] = int(dens["size"])
    return ds


def dataset_to_masks(ds: xr.Dataset) -> dict[str, torch.Tensor]:
    """Back from :func:`masks_to_dataset` to ``{parameter name: bool tensor}``."""
    names = [str(n) for n in ds.coords["param"].values] if "param" in ds.coords else [
        str(n) for n, v in ds.data_vars.items() if v.attrs.get("role") == _ROLE
    ]
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise ConfigError(f"dataset has no mask variable for {missing}; was it written by masks_to_dataset?")
    return {n: torch.from_numpy(np.asarray(ds[n].values).astype(bool)) for n in names}


def save_masks(store: Any, name: str, masks: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Write a mask set to an ``ActivationStore`` as result ``name``; returns the Dataset."""
    ds = masks_to_dataset(masks, attrs)
    store.write_result(name, ds, attrs=dict(ds.attrs))
    return ds


def load_masks(store: Any, name: str) -> dict[str, torch.Tensor]:
    """Read a mask set written by :func:`save_masks` (or ``ContinuousSparsification.save``)."""
    return dataset_to_masks(store.read_result(name))
