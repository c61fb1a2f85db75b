"""Where interventions read recorded activations from (internal).

A *source* is an :class:`~polysdk.store.ActivationStore` (``source[site]`` is a lazy
DataArray with dims ``(sample, unit, ...)``), a ``{site: DataArray | Tensor}`` mapping,
or one DataArray / tensor used for every site. Nothing here imports zarr: a store is
only indexed by site name, and the statistics are computed with xarray/dask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from polysdk import dims as D
from polysdk.errors import ConfigError

__all__ = ["SamplePool", "site_source"]


def site_source(source: Any, site: str, what: str) -> Any:
    """The part of ``source`` that belongs to ``site`` (a DataArray, tensor or array)."""
    if source is None:
        raise ConfigError(
            f"{what} needs recorded activations: pass source= an ActivationStore, a "
            f"{{site: DataArray or Tensor}} mapping, or one DataArray/Tensor"
        )
    if isinstance(source, (torch.Tensor, np.ndarray, xr.DataArray)):
        return source
    if isinstance(source, Mapping) and not isinstance(source, xr.Dataset):
        if site not in source:
            raise ConfigError(
                f"{what}: source has no entry for site {site!r}; it has {sorted(source)}"
            )
        out = source[site]
    elif isinstance(source, xr.Dataset):
        out = source[site] if site in source else source.get("activation")
    elif hasattr(source, "__getitem__"):  # an ActivationStore (duck-typed)
        try:
            out = source[site]
        except KeyError as err:
            raise ConfigError(f"{what}: the store has no site {site!r} ({err})") from None
    else:
        raise ConfigError(
            f"{what}: cannot read activations from a {type(source).__name__}; pass an "
            f"ActivationStore, a mapping of sites, a DataArray or a Tensor"
        )
    if isinstance(out, xr.Dataset):
        out = out["activation"]
    if out is None:
        raise ConfigError(f"{what}: no activations for site {site!r} in the given source")
    return out


def mean_of(data: Any, over: Sequence[str]) -> Any:
    """The mean of recorded activations over ``over`` dims (a DataArray, computed).

    A DataArray without a ``sample`` dim and a tensor are taken to be the statistic
    already; a DataArray with ``sample`` is reduced (lazily with dask, then loaded).
    """
    if isinstance(data, xr.DataArray):
        if D.SAMPLE not in data.dims:
            return data
        dims = [d for d in over if d in data.dims]
        if D.SAMPLE not in dims:
            dims = [D.SAMPLE, *dims]
        return data.astype("float64").mean(dim=dims).compute()
    return data


class SamplePool:
    """Recorded activations to draw whole samples from (resampling, patching).

    ``data`` is a DataArray with a ``sample`` dim (lazy is fine: only the drawn samples
    are loaded) or a tensor / array whose first axis is the sample.
    """

    def __init__(self, data: Any, site: str, what: str) -> None:
        if isinstance(data, xr.DataArray):
            if D.SAMPLE not in data.dims:
                raise ConfigError(
                    f"{what}: the activations of site {site!r} have dims {data.dims} and no "
                    f"'sample' dim to draw from"
                )
            self.size = int(data.sizes[D.SAMPLE])
        else:
            data = data if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))
            if data.ndim < 2:
                raise ConfigError(
                    f"{what}: a tensor of samples for site {site!r} needs a sample axis "
                    f"first and a unit axis, got shape {tuple(data.shape)}"
                )
            self.size = int(data.shape[0])
        if self.size == 0:
            raise ConfigError(f"{what}: no recorded samples for site {site!r}")
        self.data = data
        self.site = site

    def take(self, index: torch.Tensor | Sequence[int]) -> Any:
        """The samples at ``index`` (in that order, repeats allowed)."""
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        bad = idx[(idx >= self.size) | (idx < -self.size)]
        if bad.numel():
            raise ConfigError(
                f"sample indices {bad.tolist()} are out of range for site {self.site!r}, "
                f"which holds {self.size} samples"
            )
        idx = torch.where(idx < 0, idx + self.size, idx)
        if isinstance(self.data, xr.DataArray):
            # load each needed sample once, in ascending order (cheap for chunked stores)
            uniq, inverse = torch.unique(idx, sorted=True, return_inverse=True)
            loaded = self.data.isel(sample=uniq.numpy()).load()
            return loaded.isel(sample=inverse.numpy())
        return self.data[idx]
