"""``ActivationStore``: activations streamed into a Zarr v3 store that plain xarray reads."""

from __future__ import annotations

import datetime as _dt
import functools
import os
import shutil
import threading
import uuid
import warnings
from collections.abc import Mapping
from importlib import metadata as _md
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from polysdk.errors import StoreError, StoreSchemaError, WriterError, closest_names
from polysdk.store import _layout as L
from polysdk.store._writer import ArraySpec, Batch, Writer

if TYPE_CHECKING:
    import xarray as xr

_MODES = ("w", "w-", "a", "r")
_RESERVED = ("activation", "sample")


@functools.lru_cache(maxsize=None)
def _version(pkg: str) -> str | None:
    try:
        return _md.version(pkg)
    except _md.PackageNotFoundError:
        return None


def _dtype_name(arr: np.ndarray) -> str:
    return "string" if arr.dtype.kind in "UOT" else arr.dtype.name


class ActivationStore:
    """Activations of many sites, one Zarr group per site, readable by plain xarray.

    Parameters
    ----------
    path : str or Path
        Directory of the store (a local path).
    mode : {"r", "a", "w", "w-"}
        read only; append/resume from the committed count; create (replacing an
        existing store); create, failing if ``path`` exists.
    chunk_samples : int or None
        Samples per chunk along ``sample``; None picks ~8 MiB chunks per site.
    codec : str, zarr codec or None
        Compression (``"zstd:1"`` default, ``"blosc-lz4"``, ``"none"``...).
    max_queue : int
        Batches that may wait for the background writer before ``append`` blocks.
    attrs : dict, optional
        Stored in the root attributes (e.g. ``{"model": "alexnet"}``).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "acts.zarr")
    >>> with ActivationStore(path, mode="w", chunk_samples=4) as store:
    ...     store.append({"fc1": np.ones((3, 2), "f4")}, dims={"fc1": ("sample", "unit")},
    ...                  coords={"label": np.array([0, 1, 2])})
    >>> ActivationStore(path)["fc1"].sizes["sample"]
    3
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: str = "r",
        chunk_samples: int | None = None,
        codec: Any = L.DEFAULT_CODEC,
        max_queue: int = 8,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in _MODES:
            raise StoreError(f"unknown mode {mode!r}; use one of {_MODES}")
        if chunk_samples is not None and int(chunk_samples) < 1:
            raise StoreError(f"chunk_samples must be >= 1 or None, got {chunk_samples!r}")
        if "://" in str(path):
            raise StoreError(f"only local paths are supported, got {str(path)!r}; "
                             "copy the store locally (or mount the filesystem)")
        self.path = Path(path)
        self.mode = mode
        self.chunk_samples = None if chunk_samples is None else int(chunk_samples)
        self._compressors = L.make_compressors(codec)
        self._lock = threading.RLock()
        self._writer: Writer | None = None
        self._closed = False
        self._sites: dict[str, dict[str, Any]] = {}  # site -> {"dims","trailing","dtype"}
        self._coords: dict[str, dict[str, Any]] | None = None  # fixed by the first batch
        self._disk_sites: list[str] = []
        if mode in ("w", "w-"):
            self._create(codec, attrs)
        else:
            self._load(attrs)
        if mode != "r":
            self._writer = Writer(
                self.path, self._committed, list(self._sites), self._commit, max_queue
            )
            self._disk_sites = list(self._sites)
            self._queued = self._committed  # samples handed to the writer

    # ------------------------------------------------------------------ open / create
    def _create(self, codec: Any, attrs: Mapping[str, Any] | None) -> None:
        p = self.path
        if p.exists():
            if self.mode == "w-":
                raise StoreError(f"store {str(p)!r} already exists (mode='w-'); use mode='a' to append or 'w' to replace it")
            if p.is_dir() and (p / L.ROOT_META).exists():
                shutil.rmtree(p)
            elif not p.is_dir() or any(p.iterdir()):
                raise StoreError(f"{str(p)!r} exists and is not a Zarr store; refusing to overwrite it. Choose another path")
        p.mkdir(parents=True, exist_ok=True)
        self._attrs: dict[str, Any] = dict(attrs or {})
        self._attrs["polysdk"] = {
            "format": 1,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "chunk_samples": self.chunk_samples,
            "codec": L.codec_label(codec),
            "model": self._attrs.get("model"),
            "versions": {k: _version(k) for k in ("polysdk", "torch", "zarr", "xarray", "numpy")},
            "bfloat16": "stored as float32; the site's activation has attr source_dtype='bfloat16'",
        }
        self._committed = 0
        self._commit(0, [])

    def _load(self, attrs: Mapping[str, Any] | None) -> None:
        p = self.path
        if not (p / L.ROOT_META).exists():
            raise StoreError(f"no activation store at {str(p)!r} (mode={self.mode!r}); create one with mode='w'")
        rec = L.read_commit_record(p)
        if rec is None:
            root_attrs = L.read_json(p / L.ROOT_META).get("attributes", {})
            if "polysdk" not in root_attrs:
                raise StoreError(f"{str(p)!r} is a Zarr group but not an activation store (no commit record)")
            rec = (root_attrs, {})  # creation was interrupted: empty store
        self._attrs, meta = dict(rec[0]), rec[1]
        if attrs:
            self._attrs.update(attrs)
        self._read_schema(meta)
        self._committed = int(self._attrs.get("n_samples", 0))
        if self.mode == "a":
            self._repair()

    def _read_schema(self, meta: Mapping[str, Any]) -> None:
        for path, m in meta.items():
            parts = path.split("/")
            if len(parts) != 2 or parts[0] == L.RESULTS or m.get("node_type") != "array":
                continue
            site, name = parts
            dims, trailing = tuple(m["dimension_names"]), tuple(m["shape"][1:])
            dtype = m["data_type"] if isinstance(m["data_type"], str) else str(m["data_type"])
            if name == "activation":
                self._sites[site] = {"dims": dims, "trailing": trailing, "dtype": dtype,
                                     "chunk": m["chunk_grid"]["configuration"]["chunk_shape"][0]}
            elif name != "sample":
                self._coords = self._coords or {}
                self._coords[name] = {"dims": dims, "trailing": trailing, "dtype": dtype}
        if self._sites and self._coords is None:
            self._coords = {}

    def _repair(self) -> None:
        """Drop everything not in the commit record (an interrupted run's tail)."""
        import zarr

        p, n = self.path, self._committed
        shutil.rmtree(p / L.STAGING, ignore_errors=True)
        for child in p.iterdir():
            if child.is_dir() and child.name not in self._sites and child.name != L.RESULTS \
                    and (child / L.ROOT_META).exists():
                shutil.rmtree(child)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for site in self._sites:
                g = zarr.open_group(store=str(p / site), mode="r+", use_consolidated=False)
                for _, arr in g.arrays():
                    if arr.shape[0] != n:
                        arr.resize((n, *arr.shape[1:]))
        self._commit(n, list(self._sites))

    # ------------------------------------------------------------------ commit
    def _commit(self, n: int, sites: list[str], exclude: tuple[str, ...] = ()) -> None:
        with self._lock:
            self._committed = n
            self._disk_sites = list(sites)
            self._attrs["n_samples"] = int(n)
            L.write_commit_record(self.path, self._attrs, sites, n, exclude)

    # ------------------------------------------------------------------ writing
    def _check_writable(self) -> Writer:
        if self._closed:
            raise StoreError(f"store {str(self.path)!r} is closed; reopen it with mode='a'")
        if self._writer is None:
            raise StoreError(f"store {str(self.path)!r} was opened read-only (mode='r'); open it with mode='a' to append")
        self._raise_writer_error()
        return self._writer

    def _raise_writer_error(self) -> None:
        if self._writer is not None and self._writer.error is not None:
            err = self._writer.error
            raise WriterError(
                f"the background writer of {str(self.path)!r} failed ({type(err).__name__}: {err}); "
                f"batches after sample {self._committed} were not committed. Fix the cause, "
                "then reopen with mode='a' to resume"
            ) from err

    def append(
        self,
        arrays: Mapping[str, Any],
        dims: Mapping[str, tuple[str, ...]] | None = None,
        coords: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue one batch (all sites, same sample count); committed atomically.

        ``arrays`` maps site -> ndarray/tensor (first axis = sample); ``dims`` site ->
        dim names (first ``"sample"``; guessed from ndim if omitted); ``coords`` name ->
        per-sample array, or ``(dims, array)`` for extra dims (a 2-D coord defaults
        to ``("sample", "position")``). Returns once the batch is queued.
        """
        writer = self._check_writable()
        if not arrays:
            raise StoreError("append() got no arrays; pass {site: array}")
        dims = dims or {}
        data: dict[str, np.ndarray] = {}
        source: dict[str, str | None] = {}
        for site, x in arrays.items():
            L.check_name(site, "site")
            data[site], source[site] = L.to_numpy(x)
        n = {a.shape[0] if a.ndim else -1 for a in data.values()}
        if len(n) != 1 or -1 in n:
            raise StoreSchemaError(f"every site of one batch needs the same number of samples (first axis); got shapes { {s: a.shape for s, a in data.items()} }")
        n_samples = n.pop()
        site_dims = {s: self._dims_for(s, dims.get(s), a) for s, a in data.items()}
        cvals = self._coords_for(coords or {}, n_samples, site_dims)
        with self._lock:
            create = None
            if not self._sites:
                create = self._define(data, site_dims, source, cvals)
            else:
                self._validate(data, site_dims, cvals)
        sample = np.arange(self._queued, self._queued + n_samples, dtype=np.int64)
        self._queued += n_samples
        per_site = {s: {"activation": a, "sample": sample, **{k: v[1] for k, v in cvals.items()}} for s, a in data.items()}
        writer.put(Batch(per_site, n_samples, create))

    def _dims_for(self, site: str, given: Any, a: np.ndarray) -> tuple[str, ...]:
        d = tuple(given) if given is not None else (
            self._sites[site]["dims"] if site in self._sites else L.default_dims(a.ndim)
        )
        if len(d) != a.ndim or d[0] != "sample" or len(set(d)) != len(d):
            raise StoreSchemaError(
                f"site {site!r}: dims {d} do not fit an array of shape {a.shape}; give one unique name "
                "per axis, the first being 'sample', e.g. ('sample', 'unit')"
            )
        return d

    def _coords_for(self, coords: Mapping[str, Any], n: int, site_dims: dict) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        out = {}
        all_dims = {d for ds in site_dims.values() for d in ds}
        for name, v in coords.items():
            cd, arr = (tuple(v[0]), v[1]) if isinstance(v, tuple) and len(v) == 2 and not isinstance(v[0], (int, np.integer)) else (None, v)
            arr, _ = L.to_numpy(arr)
            if name in _RESERVED or name in all_dims or not name or "/" in name:
                raise StoreSchemaError(f"coordinate name {name!r} is reserved or a dim name; rename it (e.g. {name}_value)")
            if cd is None:
                cd = ("sample",) if arr.ndim == 1 else ("sample", "position") if arr.ndim == 2 else \
                    ("sample", *[f"{name}_dim{i}" for i in range(1, arr.ndim)])
            if arr.ndim == 0 or arr.shape[0] != n or len(cd) != arr.ndim or cd[0] != "sample":
                raise StoreSchemaError(f"coordinate {name!r}: shape {arr.shape} with dims {cd} must have {n} samples (the batch size) along its first dim 'sample'")
            out[name] = (cd, arr.astype(str) if arr.dtype.kind in "UOT" else arr)
        return out

    def _define(self, data, site_dims, source, cvals) -> dict[str, dict[str, ArraySpec]]:
        """First batch: fix the schema and describe the arrays the writer creates."""
        create: dict[str, dict[str, ArraySpec]] = {}
        for s, a in data.items():
            trailing = tuple(a.shape[1:])
            cs = self.chunk_samples or L.auto_chunk_samples(trailing, a.dtype.itemsize)
            self._sites[s] = {"dims": site_dims[s], "trailing": trailing, "dtype": _dtype_name(a), "chunk": cs}
            attrs: dict[str, Any] = {"coordinates": " ".join(cvals)} if cvals else {}
            if source[s]:
                attrs["source_dtype"] = source[s]
            specs = {"activation": ArraySpec(site_dims[s], trailing, _dtype_name(a), cs, self._compressors, attrs),
                     "sample": ArraySpec(("sample",), (), "int64", cs)}
            for k, (cd, arr) in cvals.items():
                specs[k] = ArraySpec(cd, tuple(arr.shape[1:]), _dtype_name(arr), cs, self._compressors)
            create[s] = specs
        self._coords = {k: {"dims": cd, "trailing": tuple(arr.shape[1:]), "dtype": _dtype_name(arr)} for k, (cd, arr) in cvals.items()}
        return create

    def _validate(self, data, site_dims, cvals) -> None:
        fix = "append batches shaped like the first one, or write to a new store (mode='w')"
        if set(data) != set(self._sites):
            raise StoreSchemaError(f"sites differ from the store's: expected {sorted(self._sites)}, got {sorted(data)}; {fix}")
        for s, a in data.items():
            want = self._sites[s]
            got = {"dims": site_dims[s], "trailing": tuple(a.shape[1:]), "dtype": _dtype_name(a)}
            for key, label in (("dims", "dims"), ("trailing", "shape after 'sample' (units...)"), ("dtype", "dtype")):
                if got[key] != want[key]:
                    raise StoreSchemaError(f"site {s!r}: {label} expected {want[key]}, got {got[key]}; {fix}")
        coords = self._coords or {}
        if set(cvals) != set(coords):
            raise StoreSchemaError(f"coordinates differ: expected {sorted(coords)}, got {sorted(cvals)}; pass the same coords with every batch")
        for k, (cd, arr) in cvals.items():
            want = coords[k]
            if cd != want["dims"] or tuple(arr.shape[1:]) != want["trailing"]:
                raise StoreSchemaError(f"coordinate {k!r}: expected dims {want['dims']} with shape (n, *{want['trailing']}), got {cd} with {arr.shape}; {fix}")
            if want["dtype"] == "string":
                ok = arr.dtype.kind in "UOT"
            else:
                ok = arr.dtype.kind not in "UOT" and np.can_cast(arr.dtype, np.dtype(want["dtype"]), "same_kind")
            if not ok:
                raise StoreSchemaError(f"coordinate {k!r}: dtype expected {want['dtype']}, got {arr.dtype}; {fix}")
            if want["dtype"] != "string":
                cvals[k] = (cd, arr.astype(want["dtype"], copy=False))

    def flush(self) -> None:
        """Write and commit every queued batch; re-raise a writer failure as WriterError."""
        if self._writer is not None and not self._closed:
            self._writer.flush()
        self._raise_writer_error()

    def close(self) -> None:
        """Flush, stop the writer and release the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.stop()
            self._raise_writer_error()

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # keep the original exception; still commit what was queued
            try:
                self.close()
            except WriterError:
                pass

    # ------------------------------------------------------------------ reading
    @property
    def n_samples(self) -> int:
        """Committed samples (what a reader sees)."""
        return self._committed

    @property
    def sites(self) -> list[str]:
        """Site names, in the order of the first batch."""
        return list(self._sites)

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (config, versions, user attrs); edits are saved at the next commit."""
        return self._attrs

    def _sync(self) -> None:
        if self._writer is not None and not self._closed:
            self.flush()

    def open(self, site: str | None = None) -> xr.Dataset | xr.DataTree:
        """Lazy (dask) view: one site as a Dataset, or the whole store as a DataTree.

        Pending batches are flushed first. Dask chunks equal the Zarr chunks.
        """
        import xarray as xr

        self._sync()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated.*")
            if site is None:
                return xr.open_datatree(self.path, engine="zarr", chunks={}, consolidated=True)
            if site not in self._sites:
                raise StoreError(f"no site {site!r} in {str(self.path)!r}; sites are {closest_names(site, list(self._sites)) or list(self._sites)}")
            return xr.open_zarr(self.path, group=site, chunks={}, consolidated=True)

    def __getitem__(self, site: str) -> xr.DataArray:
        """The ``activation`` DataArray of ``site`` with its coordinates (lazy)."""
        return self.open(site)["activation"]

    def __contains__(self, site: object) -> bool:
        return site in self._sites

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, mode={self.mode!r}, n_samples={self.n_samples}, sites={self.sites})"

    # ------------------------------------------------------------------ results
    def list_results(self) -> list[str]:
        """Names of the committed results (``write_result``), sorted."""
        rec = L.read_commit_record(self.path)
        return L.result_names(rec[1]) if rec else []

    def write_result(self, name: str, ds: xr.Dataset, attrs: Mapping[str, Any] | None = None) -> None:
        """Store a derived Dataset under ``results/<name>``; atomic (all or nothing).

        Replacing an existing result: a kill during the swap may leave neither the old
        nor the new one, but never a mix.
        """
        import xarray as xr

        L.check_name(name, "result")
        if self._writer is None:
            raise StoreError(f"store {str(self.path)!r} was opened read-only (mode='r'); open it with mode='a' to write results")
        existing = self.list_results()
        clash = [r for r in existing if r.startswith(name + "/") or name.startswith(r + "/")]
        if clash:
            raise StoreError(f"result name {name!r} nests with existing result {clash[0]!r}; choose a name that is not a prefix of another")
        if isinstance(ds, xr.DataArray):
            ds = ds.to_dataset(name=ds.name or "value")
        out = ds.copy()
        for v in out.variables.values():
            v.encoding = {}
        out.attrs.update(attrs or {})
        out.attrs["polysdk_result"] = name
        stage = self.path / L.STAGING / uuid.uuid4().hex
        stage.parent.mkdir(exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.to_zarr(stage, mode="w", consolidated=False, zarr_format=3)
        target = self.path / L.RESULTS / name
        with self._lock:
            for parent in [self.path / L.RESULTS, *(self.path / L.RESULTS / "/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1))]:
                parent.mkdir(exist_ok=True)
                if not (parent / L.ROOT_META).exists():
                    L.atomic_write_json(parent / L.ROOT_META, {"attributes": {}, "zarr_format": 3, "node_type": "group"})
            old = None
            if target.exists():
                self._commit(self._committed, self._disk_sites, exclude=(name,))
                old = self.path / L.STAGING / (uuid.uuid4().hex + ".old")
                os.rename(target, old)
            os.rename(stage, target)
            self._commit(self._committed, self._disk_sites)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def read_result(self, name: str) -> xr.Dataset:
        """Load the result ``name`` (into memory) as an ``xr.Dataset``."""
        import xarray as xr

        names = self.list_results()
        if name not in names:
            raise StoreError(f"no result {name!r} in {str(self.path)!r}; results are {closest_names(name, names) or names}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated.*")
            ds = xr.open_zarr(self.path, group=f"{L.RESULTS}/{name}", consolidated=True).load()
        ds.attrs.pop("polysdk_result", None)
        return ds
