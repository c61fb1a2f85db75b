"""Shared timing and memory helpers of the benchmarks (import as ``from _harness import``).

    from _harness import rss_mb, peak_rss_mb, timed, median_time
    before = rss_mb()
    seconds = timed(lambda: model(x))             # one call, after a gc.collect()
    seconds = median_time(lambda: model(x), 5)    # median of 5 calls
    growth = peak_rss_mb() - before

Benchmarks run as scripts (``python benchmarks/capture.py``), so this folder is on
``sys.path``. Nothing here imports polysdk or torch.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["rss_mb", "peak_rss_mb", "timed", "median_time"]


def rss_mb() -> float:
    """This process's resident memory now, in MiB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any], collect: bool = True) -> float:
    """Seconds one call of ``fn`` takes (``gc.collect()`` first, outside the clock)."""
    if collect:
        gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_time(fn: Callable[[], Any], repeats: int = 5, collect: bool = True) -> float:
    """The median of ``repeats`` :func:`timed` calls."""
    return statistics.median(timed(fn, collect) for _ in range(max(1, repeats)))
