"""Selections on labelled DataArrays (what detectors read), lazy where dask is."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from polysdk.errors import ConfigError

if TYPE_CHECKING:
    import xarray as xr

from polysdk.dims._rule import POSITION, SAMPLE, TOKEN, UNIT, Selection, _TEXT_CHUNK, _index_per_dim, extra_dims

# --------------------------------------------------------------------------- xarray


def select_array(acts: xr.DataArray, selection: Any, *, name: str = "position") -> xr.DataArray:
    """The selection applied to a labelled DataArray; the result is ``(sample, unit)``.

    Honours padding the way :func:`select` does: a flattened text store (dims
    ``token``, ``unit`` with ``sample`` and ``position`` coordinates) is reduced per
    text (``mean``/``max``/``sum`` over its real tokens, ``0``/``-1``: its first / last
    real token); a padded ``(sample, position, unit)`` array with an
    ``attention_mask`` coordinate skips the masked positions. Lazy (dask) arrays
    stay lazy.
    """
    sel = Selection.parse(selection, name=name)
    if TOKEN in acts.dims:
        return _select_tokens(acts, sel, name=name)
    extra = extra_dims(acts.dims)
    if not extra:
        return acts.transpose(SAMPLE, UNIT)
    if sel.kind == "none":
        raise ConfigError(
            f"the activations have extra dims {extra} and {name}=None; pass {name}="
            "'centre', 'max', 'mean' or {dim: index} to reduce them")
    mask = acts.coords.get("attention_mask")
    if mask is not None and POSITION in extra:
        acts = acts.where(mask.astype(bool))
        if sel.kind == "index" and isinstance(sel.index, int):
            return _masked_position(acts, mask, sel.index, name=name)
        if sel.kind not in ("mean", "max", "sum"):
            raise ConfigError(
                f"{name}={sel.index if sel.kind == 'index' else sel.kind!r} indexes padded "
                "positions of masked text; use 'mean', 'max', 'sum' or one position (an int "
                "counting real tokens, -1 = the last)")
    if sel.kind in ("mean", "max", "sum"):
        if sel.kind != "max":  # float64 sums: a float32 drift reorders close rankings
            acts = acts.astype(np.float64)
        out = getattr(acts, sel.kind)(extra, skipna=True) if mask is not None else getattr(acts, sel.kind)(extra)
        return out.transpose(SAMPLE, UNIT)
    if isinstance(sel.index, list):
        raise ConfigError(f"{name}={sel.index!r} keeps several positions; a detector needs one "
                          "value per sample: pass one position, 'mean' or 'max'")
    chosen = _index_per_dim(sel, extra, dict(acts.sizes), site=str(acts.name), name=name)
    if set(chosen) != set(extra):
        raise ConfigError(f"{name}={sel.index!r} leaves the dims {sorted(set(extra) - set(chosen))}")
    return acts.isel(chosen).transpose(SAMPLE, UNIT)


def _masked_position(acts: xr.DataArray, mask: xr.DataArray, k: int, *, name: str) -> xr.DataArray:
    import xarray as xr

    m = np.asarray(mask.values).astype(bool)
    order = np.cumsum(m, 1) - 1
    length = m.sum(1)
    target = length + k if k < 0 else np.full_like(length, k)
    if np.any((target < 0) | (target >= length)):
        raise ConfigError(f"{name}={k}: some texts have fewer real tokens ({int(length.min())}); "
                          "choose a position every text has (-1 is the last real token)")
    where = np.argmax(m & (order == target[:, None]), 1)
    idx = xr.DataArray(where, dims=SAMPLE)
    return acts.isel({POSITION: idx}).transpose(SAMPLE, UNIT)


def _select_tokens(acts: xr.DataArray, sel: Selection, *, name: str) -> xr.DataArray:
    """Per-text reduction of a flattened ``(token, unit)`` array (contiguous texts)."""
    import xarray as xr

    if SAMPLE not in acts.coords:
        raise ConfigError("a 'token' array needs its per-token 'sample' coordinate to be "
                          "reduced per text; record it with Probe (it adds one)")
    sample = np.asarray(acts.coords[SAMPLE].values)
    texts, starts, counts = np.unique(sample, return_index=True, return_counts=True)
    ends = starts + counts
    if sel.kind in ("mean", "max", "sum"):
        return reduce_texts(acts, sel.kind)
    if sel.kind == "index" and isinstance(sel.index, int):
        k = sel.index
        if np.any(counts <= (k if k >= 0 else -k - 1)):
            raise ConfigError(f"{name}={k}: some texts have only {int(counts.min())} real tokens; "
                              "choose a position every text has (-1 is the last real token)")
        rows = (starts + k) if k >= 0 else (ends + k)
        out = acts.isel({TOKEN: xr.DataArray(rows, dims=SAMPLE)})
        out = out.drop_vars([c for c in (SAMPLE, TOKEN) if c in out.coords])
        return out.assign_coords({SAMPLE: texts}).transpose(SAMPLE, UNIT)
    raise ConfigError(f"{name}={sel.index if sel.kind == 'index' else sel.kind!r} does not apply "
                      "to flattened text tokens; use 'mean', 'max', 'sum' or one position")


def _text_bounds(sample: np.ndarray) -> np.ndarray:
    """Start of every run of equal ``sample`` values, plus the end."""
    change = np.flatnonzero(sample[1:] != sample[:-1]) + 1
    return np.concatenate([[0], change, [sample.size]]).astype(np.int64)


def reduce_texts(acts: xr.DataArray, kind: str) -> xr.DataArray:
    """Per-text ``mean`` / ``max`` / ``sum`` (float64) of a flat ``(token, unit)`` array.

    Streams: each dask block is cut at a text boundary and reduced with
    ``np.*.reduceat`` (a few tasks per chunk, not a groupby per text); in-memory arrays
    are split the same way. Texts come out in ``sample`` order.
    """
    import dask.array as da
    import xarray as xr

    acts = acts.transpose(TOKEN, UNIT)
    sample = np.asarray(acts.coords[SAMPLE].values)
    bounds = _text_bounds(sample)
    texts = sample[bounds[:-1]]
    if np.unique(texts).size != texts.size:  # a text split in several runs: order by text
        order = np.argsort(sample, kind="stable")
        acts = acts.isel({TOKEN: order})
        sample = sample[order]
        bounds = _text_bounds(sample)
        texts = sample[bounds[:-1]]
    x = acts.data if isinstance(acts.data, da.Array) else da.from_array(
        acts.data, chunks=(min(_TEXT_CHUNK, acts.shape[0]), -1))
    # chunk boundaries moved back to the start of the text they fall in
    cuts = np.cumsum((0,) + x.chunks[0])
    starts = bounds[:-1]
    moved = np.unique(np.concatenate([[0], starts[np.searchsorted(starts, cuts[1:-1],
                                                                    side="right") - 1],
                                      [sample.size]]))
    x = x.rechunk((tuple(np.diff(moved).tolist()), -1))
    per_block = [bounds[(bounds >= lo) & (bounds < hi)] - lo
                 for lo, hi in zip(moved[:-1], moved[1:])]

    def block(b: np.ndarray, block_info: Any = None) -> np.ndarray:
        local = per_block[block_info[0]["chunk-location"][0]]
        b = np.asarray(b, dtype=np.float64)
        if kind == "max":
            return np.maximum.reduceat(b, local, axis=0)
        total = np.add.reduceat(b, local, axis=0)
        if kind == "sum":
            return total
        counts = np.diff(np.concatenate([local, [b.shape[0]]]))
        return total / counts[:, None]

    out = x.map_blocks(block, chunks=(tuple(len(p) for p in per_block), x.chunks[1]),
                       dtype=np.float64)
    coords: dict[str, Any] = {SAMPLE: texts}
    if UNIT in acts.coords:
        coords[UNIT] = acts.coords[UNIT].values
    res = xr.DataArray(out, dims=(SAMPLE, UNIT), coords=coords, name=acts.name, attrs=acts.attrs)
    if np.any(np.diff(texts) < 0):
        res = res.isel({SAMPLE: np.argsort(texts, kind="stable")})
    return res
