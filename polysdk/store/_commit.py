"""The commit object: what the writer calls once batches are on disk.

``CommitLog`` holds a store's root attributes and its batch ledger and writes the
commit record (``_layout.write_commit_record``). The writer sees it only through the
``Committer`` protocol -- ``commit(n, sites)`` -- so it never holds the store itself.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from polysdk.store import _layout as L

LEDGER = "polysdk_batches"


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

    def __init__(self, root: Path, attrs: dict[str, Any], n: int = 0, sites: list[str] | None = None) -> None:
        self.root = root
        self.attrs = attrs
        self.n = int(n)  # committed rows
        self.sites: list[str] = list(sites or [])
        self.batches: list[BatchRecord] = read_ledger(attrs.get(LEDGER))
        self.lock = threading.RLock()
        self._pending: list[BatchRecord] = []  # appended, not yet committed
        self.hidden: set[str] = set()  # results being written in place: left out of records

    def add(self, record: BatchRecord) -> None:
        """Note an appended batch; it enters the ledger once its rows are committed."""
        with self.lock:
            self._pending.append(record)

    def commit(self, n: int, sites: list[str], exclude: tuple[str, ...] = ()) -> None:
        """Commit rows ``[0, n)`` of ``sites`` (results in ``exclude`` left out)."""
        with self.lock:
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

    def recommit(self, exclude: tuple[str, ...] = ()) -> None:
        """Rewrite the record with the same rows (results or attrs changed)."""
        with self.lock:
            self.commit(self.n, self.sites, exclude)

    def reload(self, attrs: Mapping[str, Any]) -> None:
        """Follow a writer in another process: take its committed rows and ledger."""
        with self.lock:
            self.n = int(attrs.get("n_samples", 0))
            self.batches = read_ledger(attrs.get(LEDGER))
