"""Streaming helpers shared by the built-in detectors (chunk-by-chunk dask reductions).

Everything here builds lazy dask graphs; nothing loads a whole site. The detectors
compute the graphs through ``Detector._compute`` (on a ``dask.distributed`` client when
``fit`` got one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from polysdk.errors import ConfigError, DetectorInputError

SPATIAL_DIMS = ("position", "y", "x")
DEFAULT_CHUNK = 4096


def as_dask(acts: xr.DataArray, chunk: int = DEFAULT_CHUNK) -> xr.DataArray:
    """The same DataArray, dask-backed (in-memory arrays are split into sample chunks)."""
    if isinstance(acts.data, da.Array):
        return acts
    return acts.chunk({"sample": min(chunk, acts.sizes["sample"])})


def select_position(acts: xr.DataArray, position: Any, name: str = "position") -> xr.DataArray:
    """Reduce every dim other than ``sample`` / ``unit`` as ``position`` says.

    ``"centre"`` (or ``"center"``): the middle index of each extra dim (seed 000's rule:
    conv5's [6, 6] of 13 x 13); ``"max"`` / ``"mean"``: reduce over them; an ``int``
    (one extra dim) or a ``dict`` ``{dim: index}``: that index; ``None``: no extra dims
    allowed. The result has dims (``sample``, ``unit``) in that order.
    """
    extra = [d for d in acts.dims if d not in ("sample", "unit")]
    if extra:
        if position is None:
            raise DetectorInputError(
                f"the activations have extra dims {extra} and {name}=None; pass {name}="
                "'centre', 'max', 'mean' or {dim: index} to reduce them.")
        if isinstance(position, str):
            key = position.lower()
            if key in ("centre", "center"):
                acts = acts.isel({d: acts.sizes[d] // 2 for d in extra})
            elif key in ("max", "mean", "sum"):
                acts = getattr(acts, key)(extra)
            else:
                raise ConfigError(f"{name}={position!r} is not understood; use 'centre', "
                                  "'max', 'mean', an int or a {dim: index} dict.")
        elif isinstance(position, dict):
            missing = [d for d in extra if d not in position]
            unknown = [d for d in position if d not in extra]
            if missing or unknown:
                raise DetectorInputError(
                    f"{name}={position!r} does not match the extra dims {extra} (missing "
                    f"{missing}, unknown {unknown}); give one index per extra dim.")
            for d, i in position.items():
                if not -acts.sizes[d] <= int(i) < acts.sizes[d]:
                    raise DetectorInputError(f"{name}[{d!r}]={i} is out of range for size "
                                             f"{acts.sizes[d]}; pick an index inside it.")
            acts = acts.isel({d: int(i) for d, i in position.items()})
        elif isinstance(position, (int, np.integer)):
            if len(extra) != 1:
                raise DetectorInputError(f"{name}={position} is one index but the activations "
                                         f"have extra dims {extra}; pass a {{dim: index}} dict.")
            if not -acts.sizes[extra[0]] <= int(position) < acts.sizes[extra[0]]:
                raise DetectorInputError(f"{name}={position} is out of range for "
                                         f"{extra[0]} of size {acts.sizes[extra[0]]}.")
            acts = acts.isel({extra[0]: int(position)})
        else:
            raise ConfigError(f"{name}={position!r} is not understood; use 'centre', 'max', "
                              "'mean', an int or a {dim: index} dict.")
    return acts.transpose("sample", "unit")


def label_codes(labels: xr.DataArray, classes: Sequence[Any] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (``-1`` = not among ``classes``) and the class values."""
    values = np.asarray(labels.values)
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
