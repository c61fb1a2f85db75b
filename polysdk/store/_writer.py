"""Background writer of an activation store: a thread fed by a bounded queue.

Batches are buffered per site so that whole chunks are written (no read-modify-write
of partial chunks except once per ``flush``). A batch is committed -- made visible by
the commit record, through the ``Committer`` the store hands over -- only once every
site has all of its samples on disk.

What a chunk write is lives elsewhere: arrays and their metadata in
``_zarr_internals`` (the one module using zarr's internals, with a fallback to zarr's
own write path), chunk files and the disk's speed in ``_chunks``.
"""

from __future__ import annotations

import atexit
import contextvars
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polysdk.store import _zarr_internals as Z
from polysdk.store._chunks import ChunkFileWriter
from polysdk.store._commit import Committer
from polysdk.store._layout import ArraySpec


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


@dataclass(frozen=True)
class Work:
    """What writers started now do (``polysdk.store.testing.writer_work`` sets it).

    ``batches=False``: every batch is dropped on arrival; ``files=False``: all of the
    writer's bookkeeping, but no chunk file written. Both lose data: measurement only.
    """

    batches: bool = True
    files: bool = True


WORK: contextvars.ContextVar[Work] = contextvars.ContextVar("polysdk_writer_work", default=Work())

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
    """Flush unclosed stores at interpreter exit, while zarr can still write.

    Why ``threading._register_atexit`` (private) and not ``atexit``: zarr runs its
    file I/O and its codecs (``LocalStore``, ``ZstdCodec``...) through
    ``asyncio.to_thread``, i.e. a ``concurrent.futures`` thread pool, and
    ``concurrent.futures`` refuses new work ("cannot schedule new futures after
    interpreter shutdown") from its own ``threading._register_atexit`` hook on, which
    runs before any ``atexit`` handler. From ``atexit`` a store could not even create
    its first site. Hooks registered this way run in reverse order of registration,
    so registering after zarr (and so asyncio) is imported puts ours first.
    tests/test_store_writer.py checks both: an unclosed store commits at exit, and
    the same flush from ``atexit`` fails. Where the private function is missing,
    ``atexit`` is the best effort left.
    """
    global _HOOKED
    if not _HOOKED:
        import zarr  # noqa: F401

        register = getattr(threading, "_register_atexit", None) or atexit.register
        register(_stop_all_at_exit)
        _HOOKED = True


class Writer:
    """Owns the arrays of every site; calls ``commit.commit(n, sites)`` after writes.

    ``start`` is the committed row count the writer resumes from; ``commit`` is the
    store's commit object (``_commit.CommitLog``), not the store itself.
    """

    def __init__(
        self,
        root: Path,
        start: int,
        sites: list[str],
        commit: Committer,
        max_queue: int,
        commit_interval: float = 0.0,
    ) -> None:
        self.root = root
        self.committer = commit
        self.commit_interval = commit_interval
        self.work = WORK.get()
        self._last_commit = float("-inf")
        self.error: BaseException | None = None
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, int(max_queue)))
        self._arrays: dict[str, dict[str, Z.ZarrArray]] = {}
        self._files = ChunkFileWriter(discard=not self.work.files)
        self._pending: dict[str, list[dict[str, np.ndarray]]] = {}
        self._pending_n: dict[str, int] = {}
        self._written: dict[str, int] = {}
        self._ends: deque[int] = deque()
        self._total = start
        self._committed = start
        self._ready = start  # written whole batches, not yet committed beyond _committed
        self._new_sites = False  # created but not yet in the commit record
        self._wrote: set[str] = set()  # sites this writer wrote rows of
        for site in sites:
            self._arrays[site] = Z.open_site(self.root / site, self._files)
            self._pending[site], self._pending_n[site] = [], 0
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
            if site not in self._wrote:  # another process may be growing them
                continue
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
                    elif self.work.batches:
                        self._handle(item)
            except BaseException as exc:  # re-raised to the caller as WriterError
                self.error = exc
            finally:
                if isinstance(item, _Flush):
                    item.done.set()

    def _handle(self, batch: Batch) -> None:
        if batch.create:
            for site, specs in batch.create.items():
                self._arrays[site] = Z.create_site(self.root / site, specs, batch.data[site], self._files)
                self._pending[site], self._pending_n[site] = [], 0
                self._written[site] = self._total
                self._new_sites = True
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
            if arr.length < stop:  # grow geometrically: few metadata writes
                chunk = arr.chunk
                ahead = max(stop, 2 * arr.length, 64 * chunk) if arr.grow_ahead else stop
                arr.resize(-(-ahead // chunk) * chunk)
            arr.write(start, [p[name] for p in pieces], k)
        self._wrote.add(site)
        self._pending[site] = _drop_samples(pieces, k)
        self._pending_n[site] -= k
        self._written[site] = stop

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
            self.committer.commit(self._ready, list(self._arrays))
            self._committed = self._ready
            self._new_sites = False
            self._last_commit = time.monotonic()

    def _flush_all(self) -> None:
        for site, n in self._pending_n.items():
            if n:
                self._write(site, n)
        self._maybe_commit(force=True)


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

