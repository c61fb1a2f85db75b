"""Named dims: which axis is what, and every way to select or reduce the others.

This is the one module that decides axes. ``Probe``, the store, the detectors, the
maskers and the interventions all ask it; none keeps its own rule. Importing it
does not import torch (the store and the detectors are torch-free); the functions
that take tensors import torch when they are called.

::

    from polysdk import dims

    dims.default_dims(3)                      # ('sample', 'position', 'unit')
    sel = dims.Selection.parse("mean")        # also "max", "centre", -1, [0, 5], {"y": 6}
    out, out_dims, coords = dims.select(hidden, ("sample", "position", "unit"), sel,
                                        mask=batch["attention_mask"])   # padding never counts
    dims.select_array(store["fc1"], "centre") # the same rules on an xarray.DataArray

Names: ``sample`` (one input), ``token`` (one real token of a flattened text batch,
with ``sample`` and ``position`` coordinates), ``unit`` (the neuron / channel axis),
``position`` (sequence positions), ``y``/``x`` (and ``z``) spatial positions.

Positions in a masked batch count *real* tokens only: with an attention mask, ``0``
is each text's first real token and ``-1`` its last, whether the batch was padded on
the right or on the left; a flattened token's ``position`` coordinate is its index
among its text's real tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from polysdk.errors import ConfigError, SiteError

if TYPE_CHECKING:
    import torch
    import xarray as xr

__all__ = [
    "POSITION",
    "ROW_DIMS",
    "SAMPLE",
    "SPATIAL",
    "TOKEN",
    "UNIT",
    "Selection",
    "check_dims",
    "coord_dims",
    "default_dims",
    "extra_dims",
    "flatten_tokens",
    "real_lengths",
    "reduce_texts",
    "select",
    "select_array",
    "select_unit",
    "unit_axis",
]

SAMPLE, TOKEN, UNIT, POSITION = "sample", "token", "unit", "position"
SPATIAL = ("z", "y", "x")
ROW_DIMS = (SAMPLE, TOKEN)
_KINDS = ("none", "mean", "max", "sum", "centre", "index")
_ALIASES = {"center": "centre"}
_TEXT_CHUNK = 4096


# --------------------------------------------------------------------------- the axis rule


def default_dims(ndim: int) -> tuple[str, ...]:
    """Dim names of an ``ndim``-D site tensor when none are given.

    2-D ``(sample, unit)``; 3-D ``(sample, position, unit)`` (transformers,
    ``batch_first`` RNNs); 4-D ``(sample, unit, y, x)`` (2-D convolutions); 5-D
    ``(sample, unit, z, y, x)``; 1-D ``(sample,)``; otherwise ``(sample, dim_1, ...)``.

    >>> default_dims(4)
    ('sample', 'unit', 'y', 'x')
    """
    table = {
        1: (SAMPLE,),
        2: (SAMPLE, UNIT),
        3: (SAMPLE, POSITION, UNIT),
        4: (SAMPLE, UNIT, "y", "x"),
        5: (SAMPLE, UNIT, "z", "y", "x"),
    }
    return table.get(ndim, (SAMPLE, *(f"dim_{i}" for i in range(1, ndim))))


def check_dims(
    given: Sequence[str] | None,
    shape: Sequence[int],
    *,
    site: str,
    rows: Sequence[str] = (SAMPLE,),
    need_unit: bool = False,
) -> tuple[str, ...]:
    """``given`` (or the default rule) checked against ``shape``: one unique name per
    axis, the first in ``rows``; with ``need_unit``, one of them ``unit``."""
    names = tuple(given) if given is not None else default_dims(len(shape))
    if len(names) != len(shape) or not names or names[0] not in rows or len(set(names)) != len(names):
        first = " or ".join(repr(r) for r in rows)
        raise SiteError(
            f"site {site!r}: dims {names} do not fit a tensor of shape {tuple(shape)}; "
            f"pass dims={{{site!r}: (...)}} with one unique name per axis, {first} first"
        )
    if need_unit and UNIT not in names:
        raise SiteError(f"dims {names} of site {site!r} have no 'unit' axis; name one 'unit'")
    return names


def coord_dims(name: str, ndim: int, row: str = SAMPLE) -> tuple[str, ...]:
    """Dims of a per-row coordinate given without them: ``(row,)``; 2-D ``(row,
    position)`` (token ids, masks); otherwise ``(row, <name>_dim1, ...)``."""
    if ndim == 2:
        return (row, POSITION)
    return (row, *(f"{name}_dim{i}" for i in range(1, ndim)))


def unit_axis(names: Sequence[str], *, site: str = "") -> int:
    """Index of ``unit`` in ``names`` (raises :class:`SiteError` when there is none)."""
    if UNIT not in names:
        where = f" of site {site!r}" if site else ""
        raise SiteError(f"dims {tuple(names)}{where} have no 'unit' axis; name one 'unit'")
    return list(names).index(UNIT)


def extra_dims(names: Sequence[str]) -> list[str]:
    """The dims a selection acts on: all but the row dim (``sample``/``token``) and ``unit``."""
    return [d for d in names if d not in ROW_DIMS and d != UNIT]


# --------------------------------------------------------------------------- selections


@dataclass(frozen=True)
class Selection:
    """What to do with the dims other than ``sample`` and ``unit``.

    ``kind`` is ``"none"`` (keep them), ``"mean"``, ``"max"``, ``"sum"`` (reduce them),
    ``"centre"`` (the middle index of each) or ``"index"``: ``index`` is an int (the
    one extra dim, e.g. a sequence position; ``-1`` = the last real token), a list of
    ints (chosen sequence positions, kept as a ``position`` dim), a tuple with one int
    per extra dim (``(6, 6)`` on a conv map) or a ``{dim: index}`` dict.

    >>> Selection.parse("center")
    Selection(kind='centre', index=None)
    >>> Selection.parse(-1)
    Selection(kind='index', index=-1)
    """

    kind: str
    index: Any = None

    @classmethod
    def parse(cls, spec: Any, *, name: str = "reduce") -> Selection:
        """Read every spelling users write; raise :class:`ConfigError` on anything else."""
        if isinstance(spec, Selection):
            return spec
        if spec is None:
            return cls("none")
        if isinstance(spec, str):
            key = _ALIASES.get(spec.lower(), spec.lower())
            if key in _KINDS and key != "index":
                return cls(key)
        elif isinstance(spec, (bool, np.bool_)):
            pass
        elif isinstance(spec, (int, np.integer)):
            return cls("index", int(spec))
        elif isinstance(spec, Mapping):
            if spec and all(isinstance(k, str) for k in spec) and all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in spec.values()
            ):
                return cls("index", {k: int(v) for k, v in spec.items()})
        elif isinstance(spec, (tuple, list)):
            if spec and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in spec):
                values = [int(v) for v in spec]
                return cls("index", tuple(values) if isinstance(spec, tuple) else values)
        raise ConfigError(
            f"{name}={spec!r} is not understood; use 'none', 'mean', 'max', 'sum', "
            f"'centre' (or 'center'), a position (-1 = the last real token), a list of "
            f"positions, a tuple with one index per spatial dim, or a {{dim: index}} dict"
        )

    @property
    def reduces(self) -> bool:
        """True when the selection removes every extra dim (a list of positions keeps one)."""
        return self.kind != "none" and not isinstance(self.index, list)


def _index_per_dim(sel: Selection, extra: list[str], sizes: Mapping[str, int], *, site: str,
                   name: str) -> dict[str, int]:
    """``{dim: index}`` of a ``centre`` / tuple / dict / int selection (checked)."""
    if sel.kind == "centre":
        return {d: sizes[d] // 2 for d in extra}
    idx = sel.index
    if isinstance(idx, Mapping):
        missing = [d for d in extra if d not in idx]
        unknown = [d for d in idx if d not in extra]
        if missing or unknown:
            raise SiteError(
                f"{name}={idx!r} does not match the dims {extra} of site {site!r} (missing "
                f"{missing}, unknown {unknown}); give one index per dim")
        chosen = dict(idx)
    elif isinstance(idx, tuple):
        if len(idx) != len(extra):
            raise SiteError(
                f"{name}={idx!r} has {len(idx)} indices but site {site!r} has the dims "
                f"{extra} to index; give one index per dim, 'centre' or a {{dim: index}} dict")
        chosen = dict(zip(extra, idx))
    else:
        if len(extra) != 1:
            raise SiteError(
                f"{name}={idx!r} is one index but site {site!r} has the dims {extra}; pass "
                f"a tuple with one index per dim or a {{dim: index}} dict")
        chosen = {extra[0]: int(idx)}
    for d, i in chosen.items():
        if not -sizes[d] <= i < sizes[d]:
            raise SiteError(f"{name}: index {i} is out of range for {d!r} of size {sizes[d]} "
                            f"at site {site!r}; pick an index inside it")
    return {d: i % sizes[d] for d, i in chosen.items()}


# --------------------------------------------------------------------------- tensors


def _mask_tensor(mask: Any, n: int, length: int, device: Any, *, site: str) -> torch.Tensor:
    import torch

    m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    m = m.to(device=device)
    if m.ndim != 2 or tuple(m.shape) != (n, length):
        raise SiteError(
            f"the attention mask has shape {tuple(m.shape)} but site {site!r} has {n} samples "
            f"x {length} positions; pass a (sample, position) mask of the site's sequence")
    return m.bool()


def real_lengths(mask: Any) -> np.ndarray:
    """Real tokens per sample of a ``(sample, position)`` mask, as int64."""
    import torch

    m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    return m.bool().sum(1).cpu().numpy().astype(np.int64)


def _real_index(m: torch.Tensor, wanted: Sequence[int], *, site: str) -> torch.Tensor:
    """(sample, len(wanted)) padded-axis index of each sample's wanted real positions."""
    import torch

    order = m.long().cumsum(1) - 1  # index among the real tokens (valid where m)
    length = m.long().sum(1)
    out = []
    for k in wanted:
        target = torch.where(torch.as_tensor(k, device=m.device) < 0, length + k,
                             torch.full_like(length, k))
        short = (target < 0) | (target >= length)
        if bool(short.any()):
            bad = torch.nonzero(short).flatten()[:5].tolist()
            raise SiteError(
                f"position {k} does not exist in sample(s) {bad} of site {site!r}, which have "
                f"{length[short][:5].tolist()} real tokens; choose positions every text has "
                f"(-1 is always the last real token)")
        hit = m & (order == target[:, None])
        out.append(hit.long().argmax(1))
    return torch.stack(out, 1)


def select(
    x: torch.Tensor,
    names: Sequence[str],
    selection: Any,
    *,
    mask: Any = None,
    site: str = "",
    name: str = "reduce",
) -> tuple[torch.Tensor, tuple[str, ...], dict[str, np.ndarray]]:
    """Apply a selection to a site tensor with dims ``names``.

    ``mask`` is a ``(sample, position)`` attention mask (1 = real token): ``mean``,
    ``max`` and ``sum`` skip padding (a text with no real token gives NaN), and
    positions count real tokens (``-1`` = each text's last real token, on left or
    right padding). Returns ``(tensor, dims, coords)``: ``coords`` holds the
    ``position`` labels kept by a list of positions. ``"none"`` returns ``x``
    unchanged (see :func:`flatten_tokens` for a masked batch).
    """
    import torch

    sel = Selection.parse(selection, name=name)
    names = tuple(names)
    extra = extra_dims(names)
    if sel.kind == "none" or (not extra and sel.kind in ("mean", "max", "sum")):
        return x, names, {}  # nothing to reduce: a 2-D site among conv maps stays as it is
    if not extra:
        raise SiteError(
            f"{name}={sel.index if sel.kind == 'index' else sel.kind!r} does not apply to site "
            f"{site!r} with dims {names}: there is no position or spatial dim to index; use "
            "'mean'/'max'/'none' there, or probe this site separately")
    sizes = dict(zip(names, x.shape))
    seq = POSITION in extra
    m = None
    if mask is not None and seq:
        m = _mask_tensor(mask, x.shape[0], sizes[POSITION], x.device, site=site)
    if sel.kind in ("mean", "max", "sum"):
        axes = tuple(names.index(d) for d in extra)
        out_dims = tuple(d for d in names if d not in extra)
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        if m is None:
            out = {"mean": xf.mean, "sum": xf.sum, "max": xf.amax}[sel.kind](axes)
            return out, out_dims, {}
        view = [1] * x.ndim
        view[0], view[names.index(POSITION)] = x.shape[0], sizes[POSITION]
        mv = m.reshape(view)
        if sel.kind == "max":
            out = xf.masked_fill(~mv, float("-inf")).amax(axes)
            return out.masked_fill(out == float("-inf"), float("nan")), out_dims, {}
        total = xf.masked_fill(~mv, 0.0).sum(axes)
        if sel.kind == "sum":
            return total, out_dims, {}
        count = mv.expand(x.shape).sum(axes).to(total.dtype)
        return total / count, out_dims, {}
    if seq and sel.kind == "index" and isinstance(sel.index, (int, list)):
        if len(extra) != 1:
            raise SiteError(f"{name}={sel.index!r} chooses sequence positions but site "
                            f"{site!r} has the dims {extra}; pass a {{dim: index}} dict")
        axis = names.index(POSITION)
        wanted = [sel.index] if isinstance(sel.index, int) else list(sel.index)
        length = sizes[POSITION]
        if m is None:
            for k in wanted:
                if not -length <= k < length:
                    raise SiteError(f"{name}: position {k} is out of range for {length} "
                                    f"positions at site {site!r}")
            index = torch.as_tensor([k % length for k in wanted], device=x.device)
            picked = x.index_select(axis, index)
            labels = np.asarray([k % length for k in wanted], dtype=np.int64)
        else:
            where = _real_index(m, wanted, site=site)  # (sample, k)
            moved = x.movedim(axis, 1)
            rows = torch.arange(x.shape[0], device=x.device)[:, None]
            picked = moved[rows, where].movedim(1, axis)
            labels = np.asarray(wanted, dtype=np.int64)
        if isinstance(sel.index, int):
            return picked.squeeze(axis), tuple(d for d in names if d != POSITION), {}
        return picked, names, {POSITION: labels}
    if m is not None:
        raise SiteError(f"{name}={sel.index!r} indexes padded positions of site {site!r}; with "
                        "an attention mask choose positions as an int or a list of ints")
    chosen = _index_per_dim(sel, extra, sizes, site=site, name=name)
    index = tuple(chosen.get(d, slice(None)) for d in names)
    return x[index], tuple(d for d in names if d not in chosen), {}


def flatten_tokens(
    x: torch.Tensor, names: Sequence[str], mask: Any, *, site: str = ""
) -> tuple[torch.Tensor, tuple[str, ...], dict[str, np.ndarray]]:
    """A padded ``(sample, position, ...)`` tensor as its real tokens only.

    Returns ``(values, dims, coords)``: ``values`` has ``token`` first in place of
    ``sample`` and ``position``; ``coords`` has the ``sample`` (row in the batch) and
    ``position`` (index among the text's real tokens) of each token, in text order.
    """
    names = tuple(names)
    if POSITION not in names:
        raise SiteError(f"site {site!r} has no position dim to flatten (dims {names})")
    axis = names.index(POSITION)
    m = _mask_tensor(mask, x.shape[0], x.shape[axis], x.device, site=site)
    moved = x.movedim(axis, 1)
    values = moved[m]  # (token, ...rest) in (sample, position) order
    sample, _ = (t.cpu().numpy() for t in m.nonzero(as_tuple=True))
    order = (m.long().cumsum(1) - 1)[m].cpu().numpy()
    rest = tuple(d for d in names if d not in (SAMPLE, POSITION))
    return values, (TOKEN, *rest), {SAMPLE: sample.astype(np.int64), POSITION: order.astype(np.int64)}


def select_unit(
    x: torch.Tensor,
    names: Sequence[str],
    unit: int | None,
    selection: Any = None,
    *,
    mask: Any = None,
    site: str = "",
) -> torch.Tensor:
    """One unit's activation (``unit=None``: every unit), then the selection of the
    remaining dims (``None`` keeps them): ``[sample, *rest]``."""
    names = tuple(names)
    axis = unit_axis(names, site=site)
    if unit is not None:
        size = x.shape[axis]
        if not -size <= int(unit) < size:
            raise SiteError(f"unit {unit} is out of range for site {site!r}, which has {size} "
                            f"units; pick 0..{size - 1}")
        x = x.select(axis, int(unit))
        names = names[:axis] + names[axis + 1:]
    out, _, _ = select(x, names, selection, mask=mask, site=site, name="position")
    return out


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
