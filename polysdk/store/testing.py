"""Measurement seams of the store's writer, for benchmarks and tests (they lose data).

    from polysdk.store.testing import writer_work
    with writer_work(files=False):        # stores opened in here write no chunk file
        with ActivationStore(path, mode="w") as store:
            ...

``benchmarks/capture.py --breakdown`` uses them to time the writer's parts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from polysdk.store._writer import WORK, Work


@contextmanager
def writer_work(*, batches: bool = True, files: bool = True) -> Iterator[None]:
    """Stores opened inside the block get writers that skip part of their work.

    ``batches=False``: the writer drops every batch on arrival (``append`` and the
    queue still run: the cost of handing batches over); ``files=False``: the writer
    does all of its bookkeeping (chunk assembly, encoding, metadata, commits) but
    writes no chunk file. The commit record then claims rows that are not on disk:
    measurement only, never for a store you keep.
    """
    token = WORK.set(Work(batches=batches, files=files))
    try:
        yield
    finally:
        WORK.reset(token)
