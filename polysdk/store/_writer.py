"""Background writer of an activation store: a thread fed by a bounded queue.

Batches are buffered per site so that whole chunks are written (no read-modify-write
of partial chunks except once per ``flush``). A batch is committed -- made visible by
the commit record -- only once every site has all of its samples on disk.
"""

from __future__ import annotations

import atexit
import errno
import mmap
import os
import queue
import shutil
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polysdk.store._layout import ROOT_META, atomic_write_bytes


@dataclass(frozen=True)
class ArraySpec:
    """How to create one array of a site group (shape along sample starts at 0)."""

    dims: tuple[str, ...]
    trailing: tuple[int, ...]
    dtype: str  # numpy dtype name, or "string"
    chunk_samples: int
    compressors: Any = None
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CodecChoice:
    """Compressors the writer picks from a site's first batch (``codec="auto"``).

    ``choose(first_batch) -> (compressors, note)``. Deferred to the writer thread so
    that sampling zstd and measuring the disk never hold up the model's thread.
    """

    choose: Callable[[np.ndarray], tuple[Any, str]]


@dataclass
class Batch:
    """One ``append`` call: per site, per variable, arrays of ``n`` samples."""

    data: dict[str, dict[str, np.ndarray]]
    n: int
    create: dict[str, dict[str, ArraySpec]] | None = None


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Call:
    """Work for the writer thread ahead of the batches (``Writer.call_soon``)."""

    fn: Callable[[], Any]


class ArrayFiles:
    """One array of a site group as the writer keeps it: zarr's metadata and its folder.

    The writer writes the chunk files and the array's ``zarr.json`` itself (whole
    chunks of the codec chains ``_chunk_encoder`` knows); anything else goes through a
    zarr array opened on first need.
    """

    def __init__(self, metadata: Any, directory: Path) -> None:
        self.metadata = metadata
        self.directory = directory
        self._opened: Any = None

    @property
    def length(self) -> int:
        return int(self.metadata.shape[0])

    @property
    def chunk(self) -> int:
        return int(self.metadata.chunks[0])

    def write_metadata(self) -> None:
        """(Re)write this array's ``zarr.json`` atomically, as zarr serialises it."""
        from zarr.core.buffer import default_buffer_prototype

        doc = self.metadata.to_buffer_dict(default_buffer_prototype())[ROOT_META]
        atomic_write_bytes(self.directory / ROOT_META, doc.to_bytes())

    def resize(self, length: int) -> None:
        """Set the length along ``sample``; only the metadata changes (chunks past it stay
        unwritten, or are ignored)."""
        self.metadata = self.metadata.update_shape((int(length), *self.metadata.shape[1:]))
        self.write_metadata()
        self._opened = None

    def zarr_array(self) -> Any:
        """The array opened with zarr (for the writes the writer does not do itself)."""
        if self._opened is None:
            import zarr

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = zarr.open_array(store=str(self.directory), mode="r+", zarr_format=3)
            # every chunk written holds data: skip zarr's per-chunk "all fill value?" scan
            self._opened = arr.with_config({"write_empty_chunks": True})
        return self._opened


_STOP = object()
_LIVE: weakref.WeakSet[Writer] = weakref.WeakSet()
_HOOKED = False


def _stop_all_at_exit() -> None:
    for w in list(_LIVE):
        try:
            w.stop()
        except Exception:  # noqa: BLE001 - exiting: nothing left to report to
            pass


def _hook_exit() -> None:
    """Flush unclosed stores at interpreter exit, before zarr's executors shut down.

    ``threading._register_atexit`` hooks run in reverse order of registration and
    before ``concurrent.futures`` refuses new work; registering after zarr (and so
    asyncio) is imported puts ours first. Plain ``atexit`` would run too late.
    """
    global _HOOKED
    if not _HOOKED:
        import zarr  # noqa: F401

        register = getattr(threading, "_register_atexit", None) or atexit.register
        register(_stop_all_at_exit)
        _HOOKED = True


class Writer:
    """Owns the zarr arrays of every site; runs ``commit(n, sites)`` after writes.

    ``written`` is where each site's arrays end on disk; ``start`` is the committed
    sample count the writer resumes from.
    """

    def __init__(
        self,
        root: Path,
        start: int,
        sites: list[str],
        commit: Callable[[int, list[str]], None],
        max_queue: int,
        commit_interval: float = 0.0,
    ) -> None:
        self.root = root
        self.commit = commit
        self.commit_interval = commit_interval
        self._last_commit = float("-inf")
        self.error: BaseException | None = None
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, int(max_queue)))
        self._arrays: dict[str, dict[str, ArrayFiles]] = {}
        self._encoders: dict[tuple[str, str], Any] = {}  # (site, var) -> chunk encoder or False
        self._files = ChunkFileWriter()
        self._made_dirs: set[Path] = set()
        self._pending: dict[str, list[dict[str, np.ndarray]]] = {}
        self._pending_n: dict[str, int] = {}
        self._written: dict[str, int] = {}
        self._ends: deque[int] = deque()
        self._total = start
        self._committed = start
        self._ready = start  # written whole batches, not yet committed beyond _committed
        self._new_sites = False  # created but not yet in the commit record
        for site in sites:
            self._open_site(site)
            self._written[site] = start
        _hook_exit()
        self._thread = threading.Thread(target=self._run, name="polysdk-store-writer", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # ------------------------------------------------------------------ producer side
    def put(self, item: Batch) -> None:
        """Queue a batch; blocks only while ``max_queue`` batches are waiting."""
        self._q.put(item)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` on the writer thread before the batches queued after it.

        For preparation that would otherwise delay the first batch (the store measures
        its disk while the model computes that batch). An ``OSError`` from ``fn`` is
        ignored: the preparation is then simply not done.
        """
        self._q.put(_Call(fn))

    def flush(self) -> None:
        """Write everything queued and commit it; returns when done (or failed)."""
        if not self._thread.is_alive():
            return
        f = _Flush()
        self._q.put(f)
        f.done.wait()

    def stop(self) -> None:
        """Flush, trim the arrays to what is written, then end the thread."""
        if self._thread.is_alive():
            self.flush()
            self._q.put(_STOP)
            self._thread.join()
            _LIVE.discard(self)
            if self.error is None:
                try:
                    self._trim()
                except Exception as exc:  # noqa: BLE001 - reported as WriterError
                    self.error = exc

    def _trim(self) -> None:
        """Make each array's own ``zarr.json`` say its written length.

        Arrays grow ahead of the data; the commit record already hides the excess,
        trimming makes each array's metadata exact too (for non-consolidated readers).
        """
        for site, arrays in self._arrays.items():
            for arr in arrays.values():
                if arr.length != self._written[site]:
                    arr.resize(self._written[site])

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            try:  # written but uncommitted batches are committed when the queue goes quiet
                waiting = self._ready > self._committed and self.error is None
                item = self._q.get(timeout=self.commit_interval if waiting else None)
            except queue.Empty:
                try:
                    self._maybe_commit(force=True)
                except BaseException as exc:  # re-raised to the caller as WriterError
                    self.error = exc
                continue
            if item is _STOP:
                return
            try:
                if self.error is None:  # after a failure, drain (never block producers)
                    if isinstance(item, _Flush):
                        self._flush_all()
                    elif isinstance(item, _Call):
                        try:
                            item.fn()
                        except OSError:
                            pass
                    else:
                        self._handle(item)
            except BaseException as exc:  # re-raised to the caller as WriterError
                self.error = exc
            finally:
                if isinstance(item, _Flush):
                    item.done.set()

    def _open_site(self, site: str) -> None:
        import zarr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = zarr.open_group(store=str(self.root / site), mode="r+", use_consolidated=False)
            self._arrays[site] = {
                name: ArrayFiles(arr.metadata, self.root / site / name) for name, arr in g.arrays()
            }
        self._pending[site] = []
        self._pending_n[site] = 0

    def _create_site(self, site: str, specs: dict[str, ArraySpec], first: dict[str, np.ndarray]) -> None:
        """Create the site's group and arrays: zarr builds their metadata in memory, the
        writer writes the files (zarr's own file I/O runs on its event-loop thread, which
        cost a 2-core machine's model ~40 ms at the start of every capture)."""
        import zarr
        from zarr.storage import MemoryStore

        documents: dict[str, Any] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = zarr.open_group(store=MemoryStore(documents), mode="w")
            arrays = {}
            for name, s in specs.items():
                compressors, attrs = s.compressors, s.attrs
                if isinstance(compressors, CodecChoice):
                    compressors, note = compressors.choose(first[name])
                    attrs = {**attrs, "codec": note}
                arrays[name] = g.create_array(
                    name,
                    shape=(0, *s.trailing),
                    chunks=(s.chunk_samples, *s.trailing),
                    dtype=str if s.dtype == "string" else s.dtype,
                    compressors=compressors,
                    dimension_names=s.dims,
                    attributes=attrs,
                    # chunk files side by side ("c.4.0.0.0"), not nested folders
                    # ("c/4/0/0/0"): three fewer mkdirs per chunk written (~0.2 ms each)
                    chunk_key_encoding={"name": "default", "separator": "."},
                )
        site_dir = self.root / site
        shutil.rmtree(site_dir, ignore_errors=True)  # an interrupted creation's leftovers
        for name, arr in arrays.items():
            (site_dir / name).mkdir(parents=True)
            arrays[name] = ArrayFiles(arr.metadata, site_dir / name)
            arrays[name].write_metadata()
        atomic_write_bytes(site_dir / ROOT_META, documents[ROOT_META].to_bytes())  # group last
        self._arrays[site] = arrays
        self._pending[site] = []
        self._pending_n[site] = 0
        self._written[site] = self._total
        self._new_sites = True

    def _handle(self, batch: Batch) -> None:
        if batch.create:
            for site, specs in batch.create.items():
                self._create_site(site, specs, batch.data[site])
        for site, data in batch.data.items():
            self._pending[site].append(data)
            self._pending_n[site] += batch.n
        self._total += batch.n
        self._ends.append(self._total)
        for site in batch.data:
            chunk = next(iter(self._arrays[site].values())).chunk
            end = self._written[site] + self._pending_n[site]
            whole = end // chunk * chunk
            if whole > self._written[site]:
                self._write(site, whole - self._written[site])
        self._maybe_commit()

    def _write(self, site: str, k: int) -> None:
        """Write the first ``k`` pending samples of ``site`` and keep the rest pending."""
        pieces = self._pending[site]
        start = self._written[site]
        stop = start + k
        for name, arr in self._arrays[site].items():
            parts = [p[name] for p in pieces]
            if arr.length < stop:  # grow geometrically: few metadata writes
                chunk = arr.chunk
                arr.resize(-(-max(stop, 2 * arr.length, 64 * chunk) // chunk) * chunk)
            if not self._write_whole_chunks(site, name, arr, start, parts, k):
                data = parts[0] if len(parts) == 1 else np.concatenate(parts)
                arr.zarr_array()[start:stop] = data[:k]
        self._pending[site] = _drop_samples(pieces, k)
        self._pending_n[site] -= k
        self._written[site] = stop

    def _write_whole_chunks(
        self, site: str, name: str, arr: ArrayFiles, start: int, parts: list[np.ndarray], k: int
    ) -> bool:
        """Write ``k`` samples from ``parts`` as whole chunks straight to their files.

        Returns False (nothing written) where this does not apply: not chunk-aligned, not
        numeric, or a codec chain other than ``bytes`` (+ ``zstd``). Writes exactly the
        bytes zarr's own pipeline writes for those chains, each file through a temporary
        name and ``os.replace`` like zarr's ``LocalStore``, without zarr's per-call
        overhead (its event loop, buffer copies): on a 2-core machine that overhead
        competed with the model's forward. The batches making up a chunk are copied
        once, straight into the page-aligned buffer the file is written from.
        """
        chunk = arr.chunk
        tail = k % chunk  # only at a flush: the last chunk, padded with the fill value
        if start % chunk or any(p.dtype.kind not in "biuf" for p in parts):
            return False
        if tail and (sum(len(p) for p in parts) != k or arr.metadata.fill_value != 0):
            return False
        encode = self._encoders.get((site, name))
        if encode is None:
            encode = _chunk_encoder(arr.metadata)
            self._encoders[(site, name)] = encode
        if encode is False:
            return False
        parts = [np.ascontiguousarray(p, dtype=p.dtype.newbyteorder("<")) for p in parts]
        if tail:  # zarr stores an edge chunk whole: pad it as zarr would
            parts.append(np.zeros((chunk - tail, *parts[0].shape[1:]), dtype=parts[0].dtype))
        trailing_zeros = (0,) * (parts[0].ndim - 1)
        for i, pieces in enumerate(_split_into_chunks(parts, chunk, -(-k // chunk))):
            key = arr.metadata.encode_chunk_key((start // chunk + i, *trailing_zeros))
            path = arr.directory / key
            if path.parent not in self._made_dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made_dirs.add(path.parent)
            if encode is RAW:
                self._files.write_parts(path, pieces)
            else:
                self._files.write(path, encode(pieces[0] if len(pieces) == 1 else np.concatenate(pieces)))
        return True

    def _maybe_commit(self, force: bool = False) -> None:
        """Commit the whole batches written so far: at once when ``force`` or new sites
        (the first batch), else once ``commit_interval`` has passed since the last."""
        done = min(self._written.values()) if self._written else self._total
        while self._ends and self._ends[0] <= done:
            self._ready = self._ends.popleft()
        if not (self._ready > self._committed or self._new_sites):
            return
        due = time.monotonic() - self._last_commit >= self.commit_interval
        if force or due or self._new_sites:
            self.commit(self._ready, list(self._arrays))
            self._committed = self._ready
            self._new_sites = False
            self._last_commit = time.monotonic()

    def _flush_all(self) -> None:
        for site, n in self._pending_n.items():
            if n:
                self._write(site, n)
        self._maybe_commit(force=True)


class ChunkFileWriter:
    """Write whole files atomically (temporary name + ``os.replace``), bypassing the page cache.

    Chunk files are written with ``O_DIRECT`` from a page-aligned staging buffer: the
    device reads the bytes straight from it, so the kernel neither copies them into its
    page cache nor writes them back later. On the 2-core benchmark machine that page-cache
    copy cost ~3 ms of CPU per MB written (sys time), more than the encoding, and it
    competed with the model's forward; direct writes cost ~0.2 ms per MB. A filesystem or
    platform without ``O_DIRECT`` (or one refusing an aligned write) falls back to
    ordinary buffered writes for the rest of the writer's life. Readers see the same
    bytes either way: the kernel keeps direct and cached I/O coherent.
    """

    ALIGN = 4096

    def __init__(self, direct: bool | None = None) -> None:
        if direct is None:
            direct = os.environ.get("POLYSDK_DIRECT_IO", "1") != "0"
        self.direct = bool(direct) and hasattr(os, "O_DIRECT")
        self._buffer: mmap.mmap | None = None

    def _staging(self, size: int) -> np.ndarray:
        if self._buffer is None or len(self._buffer) < size:
            if self._buffer is not None:
                self._buffer.close()
            self._buffer = mmap.mmap(-1, max(size, 1 << 20))  # page-aligned, zero-filled
        return np.frombuffer(self._buffer, dtype=np.uint8)

    def write(self, path: Path, payload: Any) -> None:
        """Write ``payload`` (bytes-like) as the whole file ``path``."""
        data = memoryview(payload).cast("B")
        self.write_parts(path, [data])

    def write_parts(self, path: Path, parts: list[Any]) -> None:
        """Write the concatenation of ``parts`` (bytes-like, C-contiguous) as one file."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        views = [memoryview(p).cast("B") for p in parts if memoryview(p).nbytes]
        if not (self.direct and self._write_direct(tmp, views)):
            with open(tmp, "wb") as fh:
                for view in views:
                    fh.write(view)
        os.replace(tmp, path)

    def _write_direct(self, tmp: Path, views: list[memoryview]) -> bool:
        n = sum(len(v) for v in views)
        padded = -(-n // self.ALIGN) * self.ALIGN
        staging = self._staging(padded)
        # numpy copies without the GIL (a memoryview slice assignment holds it, stalling
        # the model's Python thread for the whole copy)
        at = 0
        for view in views:
            np.copyto(staging[at : at + len(view)], np.frombuffer(view, dtype=np.uint8))
            at += len(view)
        staging[n:padded] = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o666)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            self.direct = False
            return False
        try:
            done = 0
            while done < padded:
                done += os.write(fd, memoryview(staging[done:padded]))
            if padded != n:
                os.ftruncate(fd, n)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            self.direct = False  # e.g. a device with larger sectors: buffered from now on
            return False
        os.close(fd)
        return True


_DISK_SPEED: dict[int, float] = {}  # st_dev -> MB/s, measured once per process


def measure_write_speed(directory: Path, mb: int = 16) -> float:
    """MB/s at which ``directory``'s filesystem takes chunk files, measured once per process.

    Writes ``mb`` MiB as 8 MiB files the way the writer does (``ChunkFileWriter``:
    ``O_DIRECT`` where allowed), each followed by ``fsync`` so that a page cache in
    front of a slow disk is not mistaken for the disk, then deletes them. The first
    file warms up (the staging buffer) and is not timed. Took 20-75 ms on this
    project's VM disk (more while the model keeps both cores busy).
    """
    device = os.stat(directory).st_dev
    if device not in _DISK_SPEED:
        files = ChunkFileWriter()
        payload = np.arange(8 << 20, dtype=np.uint8)  # not all zeros: no disk may skip it
        target = Path(directory) / f".polysdk-disk-speed.{os.getpid()}"
        n_files = max(2, mb // 8)
        seconds = 0.0
        try:
            for i in range(n_files):
                started = time.perf_counter()
                files.write(target, payload)
                fd = os.open(target, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if i:
                    seconds += time.perf_counter() - started
        finally:
            target.unlink(missing_ok=True)
        _DISK_SPEED[device] = (n_files - 1) * 8 / max(seconds, 1e-9)
    return _DISK_SPEED[device]


#: the encoder of a ``bytes``-only chain: the chunk's own little-endian bytes, no copy
RAW = object()


def _split_into_chunks(parts: list[np.ndarray], chunk: int, n_chunks: int) -> list[list[np.ndarray]]:
    """The first ``n_chunks * chunk`` samples of ``parts``, as each chunk's list of slices."""
    chunks: list[list[np.ndarray]] = []
    part, offset = 0, 0
    for _ in range(n_chunks):
        need, pieces = chunk, []
        while need:
            take = min(need, len(parts[part]) - offset)
            pieces.append(parts[part][offset : offset + take])
            need -= take
            offset += take
            if offset == len(parts[part]):
                part, offset = part + 1, 0
        chunks.append(pieces)
    return chunks


def _drop_samples(pieces: list[dict[str, np.ndarray]], k: int) -> list[dict[str, np.ndarray]]:
    """``pieces`` (per-batch dicts of arrays along ``sample``) without their first ``k`` samples."""
    kept = []
    for piece in pieces:
        n = len(next(iter(piece.values())))
        if k >= n:
            k -= n
            continue
        kept.append({name: a[k:] for name, a in piece.items()} if k else piece)
        k = 0
    return kept


def _chunk_encoder(metadata: Any) -> Any:
    """``chunk -> bytes`` for the codec chains we can write directly (``RAW`` for no
    codec), else False."""
    from zarr.codecs import BytesCodec, ZstdCodec

    codecs = tuple(metadata.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec) or str(getattr(codecs[0].endian, "value", "little")) != "little":
        return False
    if len(codecs) == 1:
        return RAW
    if len(codecs) == 2 and isinstance(codecs[1], ZstdCodec):
        from numcodecs import Zstd

        zstd = Zstd(level=codecs[1].level, checksum=codecs[1].checksum)
        return lambda chunk: zstd.encode(chunk)
    return False
