"""Selections on tensors: masked reductions, real-token positions, flattening (torch
is imported by the functions, not by this module)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from polysdk.errors import SiteError

if TYPE_CHECKING:
    import torch

from polysdk.dims._rule import POSITION, SAMPLE, TOKEN, Selection, _index_per_dim, extra_dims, unit_axis

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
