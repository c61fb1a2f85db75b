"""Chunk files on disk: atomic whole-file writes with ``O_DIRECT``, and the disk's speed.

Nothing here knows zarr: ``ChunkFileWriter`` writes bytes it is given as whole files,
``measure_write_speed`` times the filesystem the way the writer writes to it, and
``split_into_chunks`` cuts buffered batches into each chunk's slices.
"""

from __future__ import annotations

import errno
import mmap
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


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

    ``discard=True`` writes nothing at all (a measurement seam: see
    ``polysdk.store.testing.writer_work``).
    """

    ALIGN = 4096

    def __init__(self, direct: bool | None = None, discard: bool = False) -> None:
        if direct is None:
            direct = os.environ.get("POLYSDK_DIRECT_IO", "1") != "0"
        self.direct = bool(direct) and hasattr(os, "O_DIRECT")
        self.discard = discard
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
        if self.discard:
            return
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


def split_into_chunks(parts: list[np.ndarray], chunk: int, n_chunks: int) -> list[list[np.ndarray]]:
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
