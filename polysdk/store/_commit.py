"""The commit object: what the writer calls once batches are on disk.

``CommitLog`` holds a store's root attributes and its batch ledger and writes the
commit record (``_layout.write_commit_record``). The writer sees it only through the
``Committer`` protocol -- ``commit(n, sites)`` -- so it never holds the store itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from polysdk.errors import StoreError
from polysdk.store import _layout as L

LEDGER = "polysdk_batches"
#: lock files in a local store's root (hidden: never part of the record)
COMMIT_LOCK = ".polysdk-commit.lock"  # exclusive: re-read + write of the record
WRITERS_LOCK = ".polysdk-writers.lock"  # shared by open writers; exclusive to repair
REPAIR_WAIT_S = 120.0


def open_lock(root: Path, name: str) -> int:
    """A file descriptor of the lock file ``name`` in ``root`` (created if missing)."""
    return os.open(root / name, os.O_RDWR | os.O_CREAT, 0o666)


def writers_lock(root: Path) -> tuple[int, bool]:
    """Join the store's writers: ``(fd holding a shared lock, alone)``.

    ``alone`` is True when no other writer (another process, or another open store
    object) holds the store: only then may ``mode="a"`` repair it, i.e. delete what the
    record does not hold. A lock held by a killed process is released by the kernel.
    """
    fd = open_lock(root, WRITERS_LOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, True
    except BlockingIOError:
        pass
    deadline = time.monotonic() + REPAIR_WAIT_S
    while True:  # waits only while another one repairs (seconds at most)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return fd, False
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise StoreError(
                    f"store {str(root)!r}: another writer has held it exclusively (a repair "
                    f"by mode='a') for over {REPAIR_WAIT_S:.0f} s; is it stuck?"
                ) from None
            time.sleep(0.01)


def share_lock(fd: int) -> None:
    """After the repair: let other writers in (exclusive -> shared)."""
    fcntl.flock(fd, fcntl.LOCK_SH)


class Held:
    """A lock file descriptor, released once (by ``release`` or when collected)."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            release_lock(fd)

    def __del__(self) -> None:
        try:
            self.release()
        except OSError:
            pass


def release_lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class Committer(Protocol):
    """What the writer commits through: make rows ``[0, n)`` of ``sites`` visible."""

    def commit(self, n: int, sites: list[str]) -> None: ...


@dataclasses.dataclass(frozen=True)
class BatchRecord:
    """One committed ``append``: its rows, the samples (texts) they hold, and the
    fingerprint of its inputs (None when the caller gave none)."""

    rows: int
    samples: int
    fingerprint: str | None = None


def write_ledger(batches: list[BatchRecord]) -> dict[str, Any]:
    return {
        "rows": [b.rows for b in batches],
        "samples": [b.samples for b in batches],
        "fingerprints": [b.fingerprint or "" for b in batches],
    }


def read_ledger(doc: Any) -> list[BatchRecord]:
    if not isinstance(doc, Mapping):
        return []
    return [
        BatchRecord(int(r), int(n), f or None)
        for r, n, f in zip(doc.get("rows", []), doc.get("samples", []), doc.get("fingerprints", []))
    ]


class CommitLog:
    """A store's committed state -- rows, sites, root attrs, batch ledger -- and the
    batches appended but not yet committed; ``commit`` writes the commit record.

    Thread-safe: the writer thread commits while the caller's thread appends.
    """

    def __init__(self, root: Path, attrs: dict[str, Any], n: int = 0, sites: list[str] | None = None,
                 stored_attrs: Mapping[str, Any] | None = None) -> None:
        self.root = root
        self.attrs = attrs
        self.n = int(n)  # committed rows
        self.sites: list[str] = list(sites or [])
        self.batches: list[BatchRecord] = read_ledger(attrs.get(LEDGER))
        self.lock = threading.RLock()
        self._pending: list[BatchRecord] = []  # appended, not yet committed
        self.hidden: set[str] = set()  # results being written in place: left out of records
        # local stores: several processes may commit (results); see ``exclusive``
        self._local = isinstance(root, Path)
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self.appended = False  # this process appends: its rows are the store's
        # the record's attrs as loaded: edits of this process are what differs from them
        self._loaded_attrs = _snapshot(attrs if stored_attrs is None else stored_attrs)
        self.writers: Held | None = None  # this store's share of the writers lock

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store's commit lock (reentrant; an ``flock`` on a local store).

        Every commit takes it, and ``write_result`` around its whole swap, so that a
        commit of one process never writes a record from a view older than another's
        (a result renamed in by another process would otherwise drop out of it).
        """
        with self.lock:
            if not self._local:
                yield
                return
            if self._lock_depth == 0:
                fd = open_lock(self.root, COMMIT_LOCK)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    release_lock(self._lock_fd)
                    self._lock_fd = None

    def _adopt(self) -> None:
        """Start from the record on disk: its attrs, with this process's edits over them,
        and -- in a process that has not appended (another one may) -- its rows, sites
        and ledger."""
        try:
            with open(self.root / L.ROOT_META, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (FileNotFoundError, ValueError):
            return
        cons = doc.get("consolidated_metadata")
        if not isinstance(cons, dict):
            return
        from polysdk.store._schema import Schema

        stored = doc.get("attributes", {})
        mine = {k: v for k, v in self.attrs.items() if k not in _OWNED
                and (k not in self._loaded_attrs or _snapshot(v) != self._loaded_attrs[k])}
        self.attrs.clear()
        self.attrs.update({**stored, **mine})
        if self.appended:
            return
        self.n = int(stored.get("n_samples", 0))
        self.batches = read_ledger(stored.get(LEDGER))
        self.sites = list(Schema.from_metadata(cons.get("metadata", {})).sites)

    def add(self, record: BatchRecord) -> None:
        """Note an appended batch; it enters the ledger once its rows are committed."""
        with self.lock:
            self._pending.append(record)
            self.appended = True

    def commit(self, n: int, sites: list[str], exclude: tuple[str, ...] = ()) -> None:
        """Commit rows ``[0, n)`` of ``sites`` (results in ``exclude`` left out).

        On a local store (under the commit lock) the record found on disk is the
        starting point: its attrs with this process's edits over them, and in a process
        that has appended nothing its rows, not its own older view.
        """
        with self.exclusive():
            if self._local:
                self._adopt()
                if not self.appended:
                    n, sites = self.n, self.sites
            end = sum(b.rows for b in self.batches)
            while self._pending and end + self._pending[0].rows <= n:
                record = self._pending.pop(0)
                self.batches.append(record)
                end += record.rows
            self.n = int(n)
            self.sites = list(sites)
            self.attrs["n_samples"] = int(n)
            self.attrs[LEDGER] = write_ledger(self.batches)
            L.write_commit_record(self.root, self.attrs, sites, n, (*exclude, *sorted(self.hidden)))
            if self._local:
                self._loaded_attrs = _snapshot(self.attrs)

    def recommit(self, exclude: tuple[str, ...] = ()) -> None:
        """Rewrite the record with the same rows (results or attrs changed)."""
        with self.lock:
            self.commit(self.n, self.sites, exclude)

    def reload(self, attrs: Mapping[str, Any]) -> None:
        """Follow a writer in another process: take its committed rows and ledger."""
        with self.lock:
            self.n = int(attrs.get("n_samples", 0))
            self.batches = read_ledger(attrs.get(LEDGER))


_OWNED = ("n_samples", LEDGER)  # set by every commit, never merged


def _snapshot(x: Any) -> Any:
    """A deep, comparable copy of JSON-like attrs (what this process loaded or wrote),
    without the keys every commit sets."""
    if isinstance(x, Mapping):
        return json.loads(L.to_json({k: v for k, v in x.items() if k not in _OWNED}))
    return json.loads(L.to_json({"v": x}))["v"]
