"""What a store holds (sites, dims, shapes, dtypes, coords) and the checks on append."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from polysdk import dims as D
from polysdk.errors import StoreSchemaError
from polysdk.store import _layout as L

RESERVED = ("activation",)
_FIX = "append batches shaped like the first one, or write to a new store (mode='w')"

Coords = dict[str, tuple[tuple[str, ...], np.ndarray]]


def dtype_name(arr: np.ndarray) -> str:
    """numpy dtype name, or ``"string"`` for text (zarr's name for variable-length UTF-8)."""
    return "string" if arr.dtype.kind in "UOT" else arr.dtype.name


class Schema:
    """Sites and per-sample coordinates of a store, fixed by its first batch."""

    def __init__(self) -> None:
        self.sites: dict[str, dict[str, Any]] = {}  # site -> dims, trailing, dtype, chunk
        self.coords: dict[str, dict[str, Any]] = {}  # name -> dims, trailing, dtype

    @property
    def row_dim(self) -> str | None:
        """The first dim every site shares: ``sample``, or ``token`` for a flattened
        text store (one row per real token); None before the first batch."""
        first = next(iter(self.sites.values()), None)
        return None if first is None else first["dims"][0]

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Schema:
        """Read the schema from consolidated metadata (``{path: node metadata}``)."""
        schema = cls()
        for path, m in meta.items():
            parts = path.split("/")
            if len(parts) != 2 or parts[0] == L.RESULTS or m.get("node_type") != "array":
                continue
            site, name = parts
            info = {
                "dims": tuple(m["dimension_names"]),
                "trailing": tuple(m["shape"][1:]),
                "dtype": str(m["data_type"]),
            }
            if name == "activation":
                info["chunk"] = m["chunk_grid"]["configuration"]["chunk_shape"][0]
                schema.sites[site] = info
            else:
                schema.coords[name] = info
        row = schema.row_dim
        schema.coords.pop(row, None)  # the row index the store writes itself
        return schema

    # ------------------------------------------------------------------ normalising
    def dims_for(self, site: str, given: Any, a: np.ndarray) -> tuple[str, ...]:
        """Dims of ``site``: given, else the stored ones, else guessed from ``a.ndim``."""
        if given is not None:
            d = tuple(given)
        elif site in self.sites:
            d = self.sites[site]["dims"]
        else:
            d = D.default_dims(a.ndim) if a.ndim else ()
        if len(d) != a.ndim or not d or d[0] not in D.ROW_DIMS or len(set(d)) != len(d):
            raise StoreSchemaError(
                f"site {site!r}: dims {d} do not fit an array of shape {a.shape}; give one "
                "unique name per axis, the first being 'sample' (or 'token' for one row per "
                "real token of a text batch), e.g. ('sample', 'unit')"
            )
        return d

    @staticmethod
    def coords_for(coords: Mapping[str, Any], n: int, all_dims: set[str], row: str = "sample") -> Coords:
        """Per-row coords as ``{name: (dims, array)}`` (``row``: the store's first dim);
        a 2-D one defaults to ``(row, position)``; ``(dims, array)`` tuples give the
        dims explicitly."""
        out: Coords = {}
        for name, v in coords.items():
            explicit = isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], (tuple, list))
            cd, raw = (tuple(v[0]), v[1]) if explicit else (None, v)
            arr, _ = L.to_numpy(raw)
            if not name or "/" in name or name in RESERVED or name == row or name in all_dims:
                raise StoreSchemaError(
                    f"coordinate name {name!r} is reserved or a dim name; rename it "
                    f"(e.g. {name}_value)"
                )
            if cd is None:
                cd = D.coord_dims(name, arr.ndim, row)
            if arr.ndim == 0 or arr.shape[0] != n or len(cd) != arr.ndim or cd[0] != row:
                raise StoreSchemaError(
                    f"coordinate {name!r}: shape {arr.shape} with dims {cd} must have {n} "
                    f"rows (the batch size) along its first dim {row!r}"
                )
            out[name] = (cd, arr.astype(str) if arr.dtype.kind in "UOT" else arr)
        return out

    # ------------------------------------------------------------------ first batch / checks
    def define(
        self,
        data: Mapping[str, np.ndarray],
        site_dims: Mapping[str, tuple[str, ...]],
        source: Mapping[str, str | None],
        cvals: Coords,
        chunk_samples: int | None,
        compressors: Any,
        site_compressors: Mapping[str, tuple[Any, str]] | None = None,
    ) -> dict[str, dict[str, L.ArraySpec]]:
        """Fix the schema from the first batch; return the arrays the writer creates.

        ``compressors`` apply to coordinates; ``site_compressors`` maps a site to the
        (compressors, note) of its activation array (default: ``compressors``); the
        compressors may be a ``CodecChoice`` the writer resolves from the first batch.
        """
        create: dict[str, dict[str, L.ArraySpec]] = {}
        for s, a in data.items():
            trailing = tuple(a.shape[1:])
            cs = chunk_samples or L.auto_chunk_samples(trailing, a.dtype.itemsize)
            dt = dtype_name(a)
            self.sites[s] = {"dims": site_dims[s], "trailing": trailing, "dtype": dt, "chunk": cs}
            attrs: dict[str, Any] = {"coordinates": " ".join(cvals)} if cvals else {}
            if source[s]:
                attrs["source_dtype"] = source[s]
            site_comp, note = (site_compressors or {}).get(s, (compressors, None))
            if note:
                attrs["codec"] = note
            specs = {
                "activation": L.ArraySpec(site_dims[s], trailing, dt, cs, site_comp, attrs),
                site_dims[s][0]: L.ArraySpec((site_dims[s][0],), (), "int64", cs),
            }
            for k, (cd, arr) in cvals.items():
                specs[k] = L.ArraySpec(cd, tuple(arr.shape[1:]), dtype_name(arr), cs, compressors)
            create[s] = specs
        self.coords = {
            k: {"dims": cd, "trailing": tuple(arr.shape[1:]), "dtype": dtype_name(arr)}
            for k, (cd, arr) in cvals.items()
        }
        return create

    def validate(
        self,
        data: Mapping[str, np.ndarray],
        site_dims: Mapping[str, tuple[str, ...]],
        cvals: Coords,
    ) -> None:
        """Raise StoreSchemaError unless the batch matches; cast coords to stored dtypes."""
        if set(data) != set(self.sites):
            raise StoreSchemaError(
                f"sites differ from the store's: expected {sorted(self.sites)}, got "
                f"{sorted(data)}; {_FIX}"
            )
        labels = (("dims", "dims"), ("trailing", "shape after 'sample' (units...)"),
                  ("dtype", "dtype"))
        for s, a in data.items():
            want = self.sites[s]
            got = {"dims": site_dims[s], "trailing": tuple(a.shape[1:]), "dtype": dtype_name(a)}
            for key, label in labels:
                if got[key] != want[key]:
                    raise StoreSchemaError(
                        f"site {s!r}: {label} expected {want[key]}, got {got[key]}; {_FIX}"
                    )
        if set(cvals) != set(self.coords):
            raise StoreSchemaError(
                f"coordinates differ: expected {sorted(self.coords)}, got {sorted(cvals)}; "
                "pass the same coords with every batch"
            )
        for k, (cd, arr) in cvals.items():
            want = self.coords[k]
            if cd != want["dims"] or tuple(arr.shape[1:]) != want["trailing"]:
                raise StoreSchemaError(
                    f"coordinate {k!r}: expected dims {want['dims']} with shape "
                    f"(n, *{want['trailing']}), got {cd} with {arr.shape}; {_FIX}"
                )
            if want["dtype"] == "string":
                ok = arr.dtype.kind in "UOT"
            else:
                ok = arr.dtype.kind not in "UOT" and np.can_cast(
                    arr.dtype, np.dtype(want["dtype"]), "same_kind"
                )
            if not ok:
                raise StoreSchemaError(
                    f"coordinate {k!r}: dtype expected {want['dtype']}, got {arr.dtype}; {_FIX}"
                )
            if want["dtype"] != "string":
                cvals[k] = (cd, arr.astype(want["dtype"], copy=False))
