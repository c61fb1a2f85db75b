"""Streaming helpers shared by the built-in detectors (chunk-by-chunk dask reductions),
and the one path by which a detector reads per-token text activations.

Everything here builds lazy dask graphs; nothing loads a whole site. The detectors
compute the graphs with :func:`compute`, on the ``dask.distributed`` client ``fit``
got, if any (handed to ``_detect`` as an argument, never stored on the detector).

Which axis is what, and how a selection (``"centre"``, ``"max"``, ``-1``, ...) reduces
the others, is :mod:`polysdk.dims`'s decision; the helpers here only prepare what a
detector holds for it (padding mask under dims' name, small per-token coordinates in
memory) and add what a detector needs on top: a streaming per-text reduction of the flat
token layout, the real tokens of a padded array, and the choice between texts and
tokens as the rows a detector counts.

Two text layouts are read, with identical results for the same texts:

* flat (dims ``token``, ``unit``; per-token coordinates ``sample`` (which text),
  ``position`` (index among the text's real tokens), ``token_id``): padding is not
  there;
* padded (dims ``sample``, ``position``, ``unit``) with an ``attention_mask`` (or the
  older ``mask``) (``sample``, ``position``) coordinate, False / 0 at padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from polysdk import dims
from polysdk.dims import POSITION, SAMPLE, TOKEN, UNIT
from polysdk.errors import ConfigError, DetectorInputError, SiteError

DEFAULT_CHUNK = 4096
MASK_COORDS = ("attention_mask", "mask")
TOKEN_COORDS = ("token", "token_str", "token_id")  # token types, first found
PER = ("auto", "token", "text")

__all__ = [
    "DEFAULT_CHUNK", "as_dask", "compute", "grouped_sum", "is_flat", "label_codes",
    "prepare", "real_values", "rows_for", "select", "text_labels", "to_tokens",
    "token_values", "top_k_indices",
]


# --------------------------------------------------------------------------- computing
def compute(*objs: Any, client: Any = None) -> tuple[Any, ...]:
    """Compute dask-backed objects together (one pass over shared chunks), on
    ``client`` (a ``dask.distributed.Client``) when one is given."""
    import dask

    if client is not None:
        return tuple(dask.compute(*objs, scheduler=client))
    return tuple(dask.compute(*objs))


# --------------------------------------------------------------------------- layout
def is_flat(acts: xr.DataArray) -> bool:
    """True for the flat token layout (a ``token`` dim instead of ``sample``)."""
    return TOKEN in acts.dims


def is_text(acts: xr.DataArray) -> bool:
    """True when the rows hold per-token activations (flat, or a ``position`` dim)."""
    return is_flat(acts) or POSITION in acts.dims


def as_dask(acts: xr.DataArray, chunk: int = DEFAULT_CHUNK) -> xr.DataArray:
    """The same DataArray, dask-backed (in-memory arrays are split along their rows:
    ``sample``, or ``token`` in the flat layout)."""
    if isinstance(acts.data, da.Array):
        return acts
    row = TOKEN if is_flat(acts) else SAMPLE
    return acts.chunk({row: min(chunk, acts.sizes[row])})


def _mask_name(acts: xr.DataArray, mask_coord: str | None) -> str | None:
    if POSITION not in acts.dims:
        return None  # nothing to mask (e.g. one position already chosen)
    names = (mask_coord,) if mask_coord else MASK_COORDS
    for name in names:
        if name in acts.coords:
            m = acts.coords[name]
            if set(m.dims) != {SAMPLE, POSITION}:
                raise DetectorInputError(
                    f"coordinate {name!r} has dims {m.dims}; a padding mask must be (sample, "
                    "position), True / 1 at real tokens.")
            return name
    if mask_coord:
        raise DetectorInputError(
            f"mask coordinate {mask_coord!r} is not on the activations (coordinates: "
            f"{[str(c) for c in acts.coords]}); pass an existing name or leave it None.")
    return None


def prepare(acts: xr.DataArray, mask_coord: str | None = None) -> xr.DataArray:
    """What a detector holds, made ready for :mod:`polysdk.dims`.

    Flat layout: the per-token ``sample`` and ``position`` coordinates in memory (a
    store gives them lazily; dims groups by them). Padded layout: the padding mask under
    dims' name ``attention_mask`` (from ``mask_coord``, else ``attention_mask``, else the
    older ``mask``), in memory, boolean.
    """
    if is_flat(acts):
        if SAMPLE not in acts.coords or acts.coords[SAMPLE].dims != (TOKEN,):
            raise DetectorInputError(
                "a flat token array (dims ('token', 'unit')) needs its per-token 'sample' "
                "coordinate (which text each token belongs to); record it with Probe, which "
                "adds it, or assign_coords(sample=('token', text_of_each_token)).")
        new = {c: (TOKEN, np.asarray(acts.coords[c].values))
               for c in (SAMPLE, POSITION) if c in acts.coords and acts.coords[c].dims == (TOKEN,)}
        return acts.assign_coords(new)
    name = _mask_name(acts, mask_coord)
    if name is None:
        return acts
    m = np.asarray(acts.coords[name].transpose(SAMPLE, POSITION).values).astype(bool)
    out = acts.assign_coords(attention_mask=((SAMPLE, POSITION), m))
    if name != "attention_mask":
        out = out.drop_vars(name)
    return out


def _mask(acts: xr.DataArray) -> np.ndarray:
    """(sample, position) bool mask of a prepared padded array (all True without one)."""
    if "attention_mask" in acts.coords:
        return np.asarray(acts.coords["attention_mask"].transpose(SAMPLE, POSITION).values,
                          dtype=bool)
    return np.ones((acts.sizes[SAMPLE], acts.sizes[POSITION]), dtype=bool)


def real_values(acts: xr.DataArray) -> xr.DataArray:
    """The activations with padding set to 0: what the finite check reads (NaN written
    at padding is no error; NaN at a real token is)."""
    if not is_flat(acts) and "attention_mask" in acts.coords:
        return acts.where(acts.coords["attention_mask"], 0.0)
    return acts


def _texts(acts: xr.DataArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat layout: (text ids sorted, each token's text index, tokens per text)."""
    sample = np.asarray(acts.coords[SAMPLE].values)
    texts, inverse, counts = np.unique(sample, return_inverse=True, return_counts=True)
    return texts, inverse.reshape(-1), counts


# --------------------------------------------------------------------------- selection
def select(acts: xr.DataArray, position: Any, *, name: str = "position") -> xr.DataArray:
    """One value per ``sample`` (a text in a text layout) and unit: ``(sample, unit)``.

    ``position`` is a :class:`polysdk.dims.Selection` spec; dims applies it
    (:func:`polysdk.dims.select_array`): padding never counts, ``0`` / ``-1`` are each
    text's first / last real token. On the flat layout ``mean`` / ``max`` / ``sum`` run
    here as one streaming pass over token chunks cut at text boundaries (xarray's
    groupby without flox makes tasks per text: 8-16 s for 2000 texts).
    ``acts`` must have gone through :func:`prepare`.
    """
    sel = dims.Selection.parse(position, name=name)
    if sel.kind in ("mean", "sum") and acts.dtype != np.float64:
        acts = acts.astype(np.float64)  # float32 sums drift by 1e-7: detectors rank on them
    if is_flat(acts):
        if sel.kind in ("mean", "max", "sum"):
            return dims.reduce_texts(acts, sel.kind)
        if sel.kind == "none":
            raise ConfigError(f"{name}=None keeps every token, but this detector needs one value "
                              f"per text here; pass {name}='mean', 'max' or a position (-1 = "
                              "the last real token).")
    elif "attention_mask" in acts.coords and POSITION in dims.extra_dims(acts.dims) and (
            sel.kind == "centre"
            or (sel.kind == "index" and not isinstance(sel.index, (int, list)))):
        raise ConfigError(
            f"{name}={position!r} would index padded positions, which differ from text to "
            f"text; with padding choose {name}='mean', 'max' or a real-token position "
            "(0 = each text's first real token, -1 its last).")
    try:
        return dims.select_array(acts, sel, name=name)
    except SiteError as err:  # dims' message, in the detectors' error class
        raise DetectorInputError(str(err)) from err


def to_tokens(acts: xr.DataArray) -> xr.DataArray:
    """The real tokens only, flat: ``(token, unit)`` with per-token ``sample`` (text id),
    ``position`` (index among the text's real tokens) and every other coordinate carried
    along (per-text ones repeated on each token). ``acts`` has gone through
    :func:`prepare`; a flat array comes back as it is."""
    if is_flat(acts):
        return acts.transpose(TOKEN, UNIT)
    if POSITION not in acts.dims or set(acts.dims) != {SAMPLE, POSITION, UNIT}:
        raise DetectorInputError(
            f"per-token rows need dims (sample, position, unit) or (token, unit); the "
            f"activations have {acts.dims}.")
    m = _mask(acts)
    rows, cols = np.nonzero(m)
    order = (np.cumsum(m, 1) - 1)[rows, cols]
    a = acts.transpose(SAMPLE, POSITION, UNIT)
    x = a.data if isinstance(a.data, da.Array) else da.from_array(a.data)
    x = x.rechunk({1: -1}).reshape(-1, x.shape[2])[rows * m.shape[1] + cols]
    sample_ids = np.asarray(acts.coords[SAMPLE].values) if SAMPLE in acts.coords \
        else np.arange(m.shape[0])
    coords: dict[str, Any] = {SAMPLE: (TOKEN, sample_ids[rows]), POSITION: (TOKEN, order)}
    for name, c in acts.coords.items():
        if name in (SAMPLE, POSITION, "attention_mask"):
            continue
        if c.dims == (UNIT,):
            coords[name] = c
        elif c.dims == (SAMPLE,):
            coords[name] = (TOKEN, np.asarray(c.values)[rows])
        elif set(c.dims) == {SAMPLE, POSITION}:
            coords[name] = (TOKEN, np.asarray(c.transpose(SAMPLE, POSITION).values)[rows, cols])
    return xr.DataArray(x, dims=(TOKEN, UNIT), coords=coords, name=acts.name, attrs=acts.attrs)


def token_values(acts: xr.DataArray, values: xr.DataArray) -> np.ndarray:
    """A coordinate or label along ``token``, ``(sample, position)`` or ``sample``, as one
    value per real token (the order of :func:`to_tokens`)."""
    v = values
    if is_flat(acts):
        if v.dims == (TOKEN,):
            return np.asarray(v.values)
        if v.dims == (SAMPLE,):  # one per text, in sorted text order
            _, inverse, _ = _texts(acts)
            return np.asarray(v.values)[inverse]
    else:
        m = _mask(acts) if POSITION in acts.dims else None
        if set(v.dims) == {SAMPLE, POSITION}:
            return np.asarray(v.transpose(SAMPLE, POSITION).values)[m]
        if v.dims == (SAMPLE,):
            rows = np.nonzero(m)[0] if m is not None else np.arange(v.size)
            return np.asarray(v.values)[rows]
    raise DetectorInputError(f"labels with dims {v.dims} do not fit activations with dims "
                             f"{acts.dims}; give one label per text or per token.")


def _varies(acts: xr.DataArray, values: xr.DataArray) -> bool:
    """True when a per-token label or coordinate differs between tokens of one text."""
    if values.dims == (SAMPLE,):
        return False
    v = token_values(acts, values)
    text = _texts(acts)[1] if is_flat(acts) else np.nonzero(_mask(acts))[0]
    if v.size == 0:
        return False
    order = np.argsort(text, kind="stable")
    t, v = text[order], v[order]
    same_text = t[1:] == t[:-1]
    return bool(np.any(same_text & (v[1:] != v[:-1])))


def text_labels(acts: xr.DataArray, labels: xr.DataArray, *, what: str = "labels") -> np.ndarray:
    """One label per text (the rows of :func:`select`), from per-text or per-token
    labels; raises when a text's tokens carry different labels."""
    if labels.dims == (SAMPLE,):
        return np.asarray(labels.values)
    if _varies(acts, labels):
        raise DetectorInputError(
            f"the {what} differ between tokens of one text, but one value per text is needed "
            f"here; give one {what[:-1] if what.endswith('s') else what} per text (a per-text "
            "coordinate), or count tokens (per='token' where the detector offers it).")
    v = token_values(acts, labels)
    if is_flat(acts):
        _, inverse, _ = _texts(acts)
        first = np.unique(inverse, return_index=True)[1]
        return v[first]
    rows = np.nonzero(_mask(acts))[0]
    first = np.unique(rows, return_index=True)[1]
    if first.size != acts.sizes[SAMPLE]:
        raise DetectorInputError("some texts have no real token; drop them or fix the mask.")
    return v[first]


def rows_for(acts: xr.DataArray, labels: xr.DataArray | None, position: Any, per: str, *,
             name: str = "position") -> tuple[xr.DataArray, np.ndarray | None, str]:
    """The rows a label-counting detector reads: ``(a, label_values, per)``.

    ``a`` is ``(sample, unit)`` where a row is a text (its tokens reduced by
    ``position``) or, with ``per="token"``, one real token (``position`` unused).
    ``per="auto"``: tokens when the labels differ between tokens of one text
    (token-level labels), else texts. Non-text activations: one row per sample.
    """
    if per not in PER:
        raise ConfigError(f"per={per!r} must be one of {PER}.")
    if not is_text(acts):
        if per == "token":
            raise DetectorInputError(
                f"per='token' needs per-token activations (dims (token, unit) or (sample, "
                f"position, unit)); these have {acts.dims}. Leave per='auto'.")
        return select(acts, position, name=name), \
            None if labels is None else np.asarray(labels.values), "text"
    if per == "auto":
        per = "token" if labels is not None and _varies(acts, labels) else "text"
    if per == "text":
        lab = None if labels is None else text_labels(acts, labels)
        return select(acts, position, name=name), lab, "text"
    tok = to_tokens(acts)
    lab = None if labels is None else token_values(acts, labels)
    a = tok.drop_vars([c for c in tok.coords if c != UNIT]).rename({TOKEN: SAMPLE})
    return a.transpose(SAMPLE, UNIT), lab, "token"


# --------------------------------------------------------------------------- reductions
def label_codes(labels: Any, classes: Sequence[Any] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (``-1`` = not among ``classes``) and the class values."""
    values = np.asarray(labels.values if isinstance(labels, xr.DataArray) else labels)
    if values.dtype.kind == "f" and np.isnan(values).any():
        raise DetectorInputError(f"{int(np.isnan(values).sum())} labels of real tokens are "
                                 "NaN; give every token a label or drop them.")
    if classes is None:
        uniq = np.unique(values)
    else:
        uniq = np.asarray(list(classes))
        absent = [c for c in uniq.tolist() if not np.any(values == c)]
        if absent:
            raise DetectorInputError(
                f"classes {absent} have no samples (labels present: "
                f"{np.unique(values).tolist()[:20]}); drop them from classes= or add samples.")
    lookup = {v: i for i, v in enumerate(uniq.tolist())}
    codes = np.array([lookup.get(v, -1) for v in values.tolist()], dtype=np.int64)
    return codes, uniq


def grouped_sum(x: da.Array, codes: np.ndarray, n_groups: int) -> da.Array:
    """Per-group column sums of a (sample, unit) dask array -> (group, unit), streaming.

    Each sample chunk is multiplied by its own one-hot block; only (group, unit)
    partial sums travel between chunks. Codes of ``-1`` count nowhere.
    """
    codes_d = da.from_array(codes, chunks=(x.chunks[0],))

    def onehot(c: np.ndarray) -> np.ndarray:
        out = np.zeros((c.shape[0], n_groups), dtype=np.float64)
        ok = c >= 0
        out[np.flatnonzero(ok), c[ok]] = 1.0
        return out

    oh = codes_d.map_blocks(onehot, new_axis=1, chunks=(x.chunks[0], (n_groups,)),
                            dtype=np.float64)
    return da.einsum("sg,su->gu", oh, x.astype(np.float64))


def top_k_indices(x: da.Array, k: int) -> da.Array:
    """(k, unit) sample indices of each column's k largest values, best first (streaming)."""
    return da.argtopk(x, k, axis=0)
