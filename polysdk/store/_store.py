"""``ActivationStore``: activations streamed into a Zarr v3 store that plain xarray reads."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from polysdk.errors import ConfigError, StoreError, StoreSchemaError, WriterError, closest_names
from polysdk.store import _layout as L
from polysdk.store import _open as O
from polysdk.store import _remote as RM
from polysdk.store import _results as R
from polysdk.store._chunks import measure_write_speed
from polysdk.store._commit import BatchRecord, CommitLog
from polysdk.store._schema import Schema
from polysdk.store._writer import Batch, Writer

if TYPE_CHECKING:
    import xarray as xr

_MODES = ("w", "w-", "a", "r")
_IN_MEMORY_COORD_BYTES = 256 * 2**20


class ActivationStore:
    """Activations of many sites, one Zarr group per site, readable by plain xarray.

    Parameters
    ----------
    path : str or Path
        Directory of the store: a local path, or any fsspec URL (``s3://bucket/run.zarr``,
        ``gs://...``; ``file://`` is a local path) for a store on object storage, written
        through zarr's own path with the same commit protocol (one writer at a time; see
        ``polysdk.store._remote``).
    mode : {"r", "a", "w", "w-"}
        read only; append to the committed batches (creating the store when ``path``
        does not exist, as ``open`` and zarr do); create (replacing an existing
        store); create, failing if ``path`` exists. Appending is not resuming:
        :meth:`Probe.run <polysdk.Probe.run>` resumes only where it can prove the
        data is the same stream (see :attr:`batches`).
    chunk_samples : int or None
        Samples per chunk along ``sample``; None picks ~8 MiB chunks per site.
    codec : str, zarr codec or None
        Compression: ``"auto"`` (default: zstd level 1 for each site whose first
        batch it makes at least 1/8 smaller, where compressing is also faster than
        writing the bytes it saves on this store's disk, else none), ``"zstd:1"``
        (smallest files), ``"blosc-lz4"``, ``"none"``... The choice and its reason
        are in each activation's attrs (``codec``).
    max_queue : int
        Batches that may wait for the background writer before ``append`` blocks.
        Memory held by the store is at most about ``max_queue + 1`` batches plus one
        chunk per site (the unwritten tail, kept to write whole chunks).
    attrs : dict, optional
        Stored in the root attributes (e.g. ``{"model": "alexnet"}``).
    commit_interval : float
        Seconds between commit records while batches stream in: written batches are
        committed together at most this often (and always at ``flush``/``close``), so a
        fast producer does not rewrite the root metadata for every batch. A process
        killed mid-run loses at most this much work to redo on resume. ``0`` commits
        after every batch.
    storage_options : dict, optional
        fsspec options of a URL ``path`` (credentials, ``endpoint_url``...), as
        ``xarray.open_zarr(url, storage_options=...)`` takes them.

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
        max_queue: int = 4,
        attrs: Mapping[str, Any] | None = None,
        commit_interval: float = 0.25,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in _MODES:
            raise ConfigError(f"unknown mode {mode!r}; use one of {_MODES}")
        try:
            interval_ok = float(commit_interval) >= 0
        except (TypeError, ValueError):
            interval_ok = False
        if not interval_ok:
            raise ConfigError(f"commit_interval must be >= 0 seconds, got {commit_interval!r}")
        if chunk_samples is not None and (
            isinstance(chunk_samples, bool) or not isinstance(chunk_samples, (int, np.integer))
            or chunk_samples < 1
        ):
            raise ConfigError(f"chunk_samples must be an int >= 1 or None, got {chunk_samples!r}")
        local = RM.local_path_of(str(path)) if RM.is_url(path) else path
        if local is None:  # object storage: zarr's own write path (see _remote)
            self.path: Path | RM.RemotePath = RM.RemotePath(RM.RemoteRoot(str(path), storage_options))
        else:
            if storage_options:
                raise ConfigError(
                    f"storage_options apply to fsspec URLs (s3://..., gs://...), not to the "
                    f"local path {str(path)!r}"
                )
            self.path = Path(local)
        self._remote = isinstance(self.path, RM.RemotePath)
        self.mode = mode
        self.chunk_samples = None if chunk_samples is None else int(chunk_samples)
        self._codec = codec
        self._compressors = L.make_compressors(codec)  # validates the spec now
        self._writer: Writer | None = None
        self._closed = False
        self._schema = Schema()  # fixed by the first batch
        self._log: CommitLog  # the committed state (rows, attrs, ledger), set just below
        if mode == "a" and not O.exists(self.path):
            mode = "w-"  # append to a store that does not exist yet: create it
        if mode in ("w", "w-"):
            self._log = O.create(self.path, self.mode, attrs, self.chunk_samples, codec)
        else:
            self._log, self._schema = O.load(self.path, self.mode, attrs, self.chunk_samples)
        if mode != "r":
            sites = list(self._schema.sites)
            try:
                self._writer = Writer(
                    self.path, self._log.n, sites, self._log, max_queue, float(commit_interval)
                )
            except BaseException:
                if self._log.writers is not None:
                    self._log.writers.release()
                raise
            if not sites and L.is_auto(self._codec) and not self._remote:
                # measured while the model computes the first batch, not after it
                self._writer.call_soon(self._disk_speed)
            self._queued = self._log.n  # rows handed to the writer
        ledger_rows = sum(b.rows for b in self._log.batches)
        self._queued_samples = (  # samples handed to the writer
            sum(b.samples for b in self._log.batches) + self._log.n - ledger_rows
        )

    # ------------------------------------------------------------------ open / create
    def _site_codec(self, first_batch: np.ndarray) -> tuple[Any, str | None]:
        """(compressors, note) of a new site; ``"auto"`` is decided by the writer thread."""
        if L.is_auto(self._codec):
            # object storage: no disk to time; zstd wherever it saves 1/8 (the network is
            # slower than zstd's ~400 MB/s)
            speed = None if self._remote else self._disk_speed
            return L.CodecChoice(functools.partial(
                L.choose_compressors, self._codec, disk_mb_per_s=speed)), None
        return L.choose_compressors(self._codec, first_batch)

    def _disk_speed(self) -> float:
        """MB/s this store's filesystem writes (``codec="auto"`` weighs it against zstd)."""
        return measure_write_speed(self.path)

    # ------------------------------------------------------------------ writing
    def _check_writable(self) -> Writer:
        if self._closed:
            raise StoreError(f"store {str(self.path)!r} is closed; reopen it with mode='a'")
        if self._writer is None:
            raise StoreError(
                f"store {str(self.path)!r} was opened read-only (mode='r'); open it with "
                "mode='a' to append"
            )
        self._raise_writer_error()
        return self._writer

    def _raise_writer_error(self) -> None:
        if self._writer is not None and self._writer.error is not None:
            err = self._writer.error
            raise WriterError(
                f"the background writer of {str(self.path)!r} failed "
                f"({type(err).__name__}: {err}); batches after sample {self._log.n} were "
                "not committed. Fix the cause, then reopen with mode='a' to resume"
            ) from err

    def append(
        self,
        arrays: Mapping[str, Any],
        dims: Mapping[str, tuple[str, ...]] | None = None,
        coords: Mapping[str, Any] | None = None,
        *,
        copy: bool = True,
        fingerprint: str | None = None,
        n_samples: int | None = None,
    ) -> None:
        """Queue one batch (all sites, same row count); committed atomically.

        ``arrays`` maps site -> ndarray/tensor (first axis = sample); ``dims`` site ->
        dim names (first ``"sample"``, or ``"token"`` in a store of flattened text
        tokens; guessed from ndim if omitted); ``coords`` name -> per-row array, or
        ``(dims, array)`` for extra dims (a 2-D coord defaults to ``("sample",
        "position")``). Returns once the batch is queued.

        ``fingerprint`` (a short string identifying the batch's inputs) and
        ``n_samples`` (the texts a token batch holds; default: its rows) are kept in
        the store's batch ledger (:attr:`batches`), committed with the batch.

        The writer works on a copy of each array, so the caller may reuse its buffers
        at once. ``copy=False`` hands the activation arrays over instead (no copy): the
        caller must not modify them afterwards. :class:`~polysdk.Probe` does this with
        the fresh tensors its hooks captured.
        """
        n_samples_given = n_samples
        writer = self._check_writable()
        if not arrays:
            raise StoreError("append() got no arrays; pass {site: array}")
        dims = dims or {}
        data: dict[str, np.ndarray] = {}
        source: dict[str, str | None] = {}
        for site, x in arrays.items():
            L.check_name(site, "site")
            data[site], source[site] = L.to_numpy(x, copy=copy)
        schema = self._schema
        site_dims = {s: schema.dims_for(s, dims.get(s), a) for s, a in data.items()}
        rows = {d[0] for d in site_dims.values()} | ({schema.row_dim} if schema.row_dim else set())
        if len(rows) != 1:
            raise StoreSchemaError(
                f"the sites of one store share their first dim, but this batch gives "
                f"{ {s: d[0] for s, d in site_dims.items()} } (store: {schema.row_dim!r}); "
                "write per-token sites (first dim 'token') and per-sample sites to two stores"
            )
        row = rows.pop()
        n = {a.shape[0] for a in data.values()}
        if len(n) != 1:
            shapes = {s: a.shape for s, a in data.items()}
            raise StoreSchemaError(
                f"every site of one batch needs the same number of rows (first axis); "
                f"got shapes {shapes}"
            )
        n_samples = n.pop()
        all_dims = {d for ds in site_dims.values() for d in ds}
        cvals = schema.coords_for(coords or {}, n_samples, all_dims, row)
        texts = n_samples if n_samples_given is None else int(n_samples_given)
        with self._log.lock:
            create = None
            if not schema.sites:
                create = schema.define(
                    data, site_dims, source, cvals, self.chunk_samples, self._compressors,
                    {site: self._site_codec(a) for site, a in data.items()},
                )
            else:
                schema.validate(data, site_dims, cvals)
            index = np.arange(self._queued, self._queued + n_samples, dtype=np.int64)
            self._queued += n_samples
            self._queued_samples += texts
            self._log.add(BatchRecord(n_samples, texts, fingerprint))
        coord_arrays = {k: v[1] for k, v in cvals.items()}
        per_site = {
            s: {"activation": a, row: index, **coord_arrays} for s, a in data.items()
        }
        writer.put(Batch(per_site, n_samples, create))

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
            try:
                self._writer.stop()
            finally:
                if self._log.writers is not None:
                    self._log.writers.release()
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
    def _refresh(self) -> None:
        """Read-only stores follow a writer in another process: re-read the record."""
        if self._writer is None and (self._remote or (self.path / L.ROOT_META).exists()):
            rec = L.read_commit_record(self.path)
            if rec is not None:
                self._log.reload(rec[0])
                if not self._schema.sites:
                    self._schema = Schema.from_metadata(rec[1])

    @property
    def n_samples(self) -> int:
        """Committed samples (what a reader sees); in a token store, the texts."""
        self._refresh()
        if self._schema.row_dim == "token":
            return sum(b.samples for b in self._log.batches)
        return self._log.n

    @property
    def next_sample(self) -> int:
        """Index the next appended sample gets: committed plus queued samples."""
        with self._log.lock:
            return self._queued_samples

    @property
    def n_rows(self) -> int:
        """Committed rows along the first dim: samples, or tokens in a token store."""
        self._refresh()
        return self._log.n

    @property
    def row_dim(self) -> str | None:
        """``"sample"``, ``"token"`` (one row per real token), or None while empty."""
        self._refresh()
        return self._schema.row_dim

    @property
    def batches(self) -> list[BatchRecord]:
        """The committed batches in order: rows, samples and input fingerprint of each
        ``append`` (what a resume compares its data with)."""
        self._refresh()
        return list(self._log.batches)

    @property
    def sites(self) -> list[str]:
        """Site names, in the order of the first batch."""
        self._refresh()
        return list(self._schema.sites)

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (config, versions, user attrs); edits are saved at the next commit."""
        return self._log.attrs

    def _sync(self) -> None:
        if self._writer is not None and not self._closed:
            self.flush()

    def open(self, site: str | None = None) -> xr.Dataset | xr.DataTree:
        """Lazy (dask) view: one site as a Dataset, or the whole store as a DataTree.

        Pending batches are flushed first. Dask chunks equal the Zarr chunks.
        """
        import xarray as xr

        self._sync()
        self._refresh()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated.*")
            where = self.path.root.zarr_store(read_only=True) if self._remote else self.path
            if site is None:
                return xr.open_datatree(where, engine="zarr", chunks={}, consolidated=True)
            if site not in self._schema.sites:
                names = list(self._schema.sites)
                raise StoreError(
                    f"no site {site!r} in {str(self.path)!r}; closest: "
                    f"{closest_names(site, names) or names}"
                )
            ds = xr.open_zarr(where, group=site, chunks={}, consolidated=True)
        # small coordinates (labels, ids, tokens) in memory: groupby and .sel just work
        small = [k for k, v in ds.coords.items() if v.nbytes <= _IN_MEMORY_COORD_BYTES]
        return ds.assign_coords({k: ds.coords[k].load() for k in small})

    def __getitem__(self, site: str) -> xr.DataArray:
        """The ``activation`` DataArray of ``site`` with its coordinates (lazy)."""
        return self.open(site)["activation"]

    def __contains__(self, site: object) -> bool:
        return site in self._schema.sites

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, mode={self.mode!r}, "
            f"n_samples={self.n_samples}, sites={self.sites})"
        )

    # ------------------------------------------------------------------ results
    def list_results(self) -> list[str]:
        """Names of the committed results (``write_result``), sorted."""
        return R.list_results(self.path)

    def write_result(
        self, name: str, ds: xr.Dataset, attrs: Mapping[str, Any] | None = None
    ) -> None:
        """Store a derived Dataset under ``results/<name>``; atomic (all or nothing).

        Replacing an existing result: a kill during the swap may leave neither the old
        nor the new one, but never a mix.
        """
        L.check_name(name, "result")
        if self._writer is None:
            raise StoreError(
                f"store {str(self.path)!r} was opened read-only (mode='r'); open it with "
                "mode='a' to write results"
            )
        R.write_result(self._log, name, ds, attrs)

    def read_result(self, name: str) -> xr.Dataset:
        """Load the result ``name`` (into memory) as an ``xr.Dataset``."""
        return R.read_result(self.path, name)
