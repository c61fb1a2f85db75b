"""Named-dimension helpers shared by the interventions (internal).

A site's tensor has named dims, by the rule of :mod:`polysdk.dims` (the one owner of
it, shared with :class:`polysdk.probe.Probe`): 2-D ``(sample, unit)``; 3-D
``(sample, position, unit)``; 4-D ``(sample, unit, y, x)``; otherwise
``(sample, dim_1, ...)``; or given per site with ``dims=``. Values that come from
elsewhere (a statistic, a direction, a store's DataArray) are turned into tensors that
broadcast against the site's tensor by these names; chosen units and chosen
positions become boolean tensors that broadcast the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from polysdk import dims as D
from polysdk.errors import ConfigError, SiteError

__all__ = ["position_mask", "site_dims", "to_layout", "unit_mask", "per_site"]


def per_site(value: Any, site: str, what: str, sites: Sequence[str]) -> Any:
    """``value[site]`` when ``value`` is a per-site mapping, else ``value`` itself."""
    if isinstance(value, Mapping) and not isinstance(value, xr.Dataset):
        if site not in value:
            raise ConfigError(
                f"{what} is a per-site mapping without an entry for site {site!r} (it has "
                f"{sorted(value)}); give one entry for every site in {list(sites)}"
            )
        return value[site]
    return value


def check_site_keys(value: Any, what: str, sites: Sequence[str]) -> None:
    """Raise when a per-site mapping names sites the component does not hook."""
    if isinstance(value, Mapping) and not isinstance(value, xr.Dataset):
        unknown = sorted(set(value) - set(sites))
        if unknown:
            raise ConfigError(
                f"{what} names sites {unknown} that are not among this component's sites "
                f"{list(sites)}; use the resolved site names"
            )


def site_dims(site: str, tensor: torch.Tensor, dims: Any, sites: Sequence[str]) -> tuple[str, ...]:
    """The dim names of ``tensor`` at ``site`` (from ``dims=`` or the default rule)."""
    given = per_site(dims, site, "dims", sites) if dims is not None else None
    return D.check_dims(None if given is None else tuple(given), tensor.shape, site=site, need_unit=True)


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, xr.DataArray):
        return torch.as_tensor(np.asarray(value.values))
    return torch.as_tensor(np.asarray(value))


def to_layout(
    value: Any,
    names: tuple[str, ...],
    shape: torch.Size,
    *,
    site: str,
    what: str,
    leading_sample: bool = False,
) -> torch.Tensor:
    """Turn ``value`` into a tensor that broadcasts against a site tensor.

    * an ``xr.DataArray``: its dims are matched by name (missing ones broadcast);
    * a scalar: as is;
    * a 1-D tensor as long as the unit axis: placed on the unit axis;
    * with ``leading_sample``, a 2-D ``(sample, unit)`` tensor: placed on both axes;
    * a tensor with one axis fewer than the site's: the site's shape without ``sample``;
    * a tensor with as many axes as the site's: as is.
    """
    ndim = len(names)
    unit_axis = D.unit_axis(names, site=site)
    if isinstance(value, xr.DataArray):
        extra = [d for d in value.dims if d not in names]
        if extra:
            raise SiteError(
                f"{what} for site {site!r} has dims {value.dims}; {extra} are not dims of "
                f"the site's tensor {names} (shape {tuple(shape)}); reduce them first or "
                f"pass dims= naming the site's axes"
            )
        ordered = value.transpose(*[n for n in names if n in value.dims])
        t = _as_tensor(ordered)
        view = [ordered.sizes[n] if n in value.dims else 1 for n in names]
        out = t.reshape(view)
    else:
        t = _as_tensor(value)
        n_units = shape[unit_axis]
        if t.ndim == 0:
            return t
        if t.ndim == 1 and t.shape[0] == n_units and not leading_sample:
            view = [1] * ndim
            view[unit_axis] = n_units
            out = t.reshape(view)
        elif leading_sample and t.ndim == 2 and ndim > 2 and t.shape[1] == n_units:
            view = [1] * ndim
            view[0], view[unit_axis] = t.shape[0], n_units
            out = t.reshape(view)
        elif t.ndim == ndim - 1 and not leading_sample:
            out = t.unsqueeze(0)
        elif t.ndim == ndim:
            out = t
        else:
            raise SiteError(
                f"{what} for site {site!r} has shape {tuple(t.shape)}, which does not fit the "
                f"site's tensor of shape {tuple(shape)} with dims {names}; give one value "
                f"per unit ({n_units},), the shape without the sample axis "
                f"{tuple(shape[1:])}, or an xarray.DataArray with named dims"
            )
    try:
        torch.broadcast_shapes(out.shape, shape)
    except RuntimeError:
        raise SiteError(
            f"{what} for site {site!r} has layout {tuple(out.shape)} over dims {names}, "
            f"which does not broadcast to the site's tensor of shape {tuple(shape)}"
        ) from None
    return out


def unit_mask(
    units: Any, names: tuple[str, ...], shape: torch.Size, device: torch.device, site: str
) -> torch.Tensor | None:
    """A boolean tensor, true on the chosen units (shaped to broadcast), or ``None`` = all."""
    if units is None:
        return None
    unit_axis = D.unit_axis(names, site=site)
    n_units = shape[unit_axis]
    u = torch.as_tensor(np.asarray(units) if not isinstance(units, torch.Tensor) else units)
    u = u.reshape(-1).to("cpu")
    if u.dtype == torch.bool:
        if u.shape[0] != n_units:
            raise SiteError(
                f"a boolean unit mask for site {site!r} needs {n_units} entries (the unit "
                f"axis), got {u.shape[0]}"
            )
        mask = u
    else:
        if u.is_floating_point():
            raise ConfigError(f"units must be ints or booleans, got dtype {u.dtype}")
        bad = u[(u >= n_units) | (u < -n_units)]
        if bad.numel():
            raise SiteError(
                f"units {bad.tolist()} are out of range for site {site!r}, which has "
                f"{n_units} units (axis {unit_axis} of shape {tuple(shape)})"
            )
        mask = torch.zeros(n_units, dtype=torch.bool)
        mask[u.long()] = True
    view = [1] * len(names)
    view[unit_axis] = n_units
    return mask.reshape(view).to(device)


def position_mask(
    positions: Any,
    names: tuple[str, ...],
    shape: torch.Size,
    device: torch.device,
    site: str,
    attention_mask: Any = None,
) -> torch.Tensor | None:
    """A boolean tensor, true at the chosen positions (shaped to broadcast against the
    site's tensor), or ``None`` = every position.

    ``positions`` is an int or a list of ints along the ``position`` dim (negative:
    from the end), a boolean ``(position,)`` or ``(sample, position)`` mask, or
    ``None``. With ``attention_mask`` (the batch's ``(sample, position)`` mask), ints
    count each text's real tokens (``0`` its first, ``-1`` its last, whichever side
    it is padded on), as :func:`polysdk.dims.select` does.
    """
    if positions is None:
        return None
    if D.POSITION not in names:
        raise SiteError(
            f"positions= needs a 'position' dim, but site {site!r} has dims {names} (shape "
            f"{tuple(shape)}); name the sequence axis 'position' with dims="
        )
    axis = names.index(D.POSITION)
    n, length = int(shape[0]), int(shape[axis])
    p = positions if isinstance(positions, torch.Tensor) else torch.as_tensor(np.asarray(positions))
    p = p.to("cpu")
    if p.dtype == torch.bool:
        if p.ndim == 1 and p.shape[0] == length:
            chosen = p[None, :]
        elif p.ndim == 2 and tuple(p.shape) == (n, length):
            chosen = p
        else:
            raise SiteError(
                f"a boolean positions mask for site {site!r} needs shape ({length},) or "
                f"({n}, {length}) (sample, position), got {tuple(p.shape)}"
            )
    else:
        if p.is_floating_point() or p.ndim > 1:
            raise ConfigError(
                f"positions must be an int, a list of ints or a boolean (sample, position) "
                f"mask, got {tuple(p.shape)} values of dtype {p.dtype}"
            )
        wanted = [int(k) for k in p.reshape(-1).tolist()]
        if attention_mask is None:
            bad = [k for k in wanted if not -length <= k < length]
            if bad:
                raise SiteError(
                    f"positions {bad} are out of range for site {site!r}, which has {length} "
                    f"positions (axis {axis} of shape {tuple(shape)})"
                )
            chosen = torch.zeros(1, length, dtype=torch.bool)
            chosen[0, [k % length for k in wanted]] = True
        else:
            # each text's real positions, through the dims rule: select the wanted
            # positions of an index tensor (sample, position, 1) under the mask
            index = torch.arange(length).expand(n, length)[..., None]
            picked, _, _ = D.select(index, (D.SAMPLE, D.POSITION, D.UNIT), wanted, mask=attention_mask,
                                    site=site, name="positions")
            chosen = torch.zeros(n, length, dtype=torch.bool)
            chosen.scatter_(1, picked[..., 0].to("cpu").long(), True)
    view = [1] * len(names)
    view[0], view[axis] = chosen.shape[0], length
    return chosen.reshape(view).to(device)
