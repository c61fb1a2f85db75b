"""Writer subprocess for the store fault test (killed with SIGKILL at random moments).

    python tests/store_fault_worker.py STORE N_BATCHES [results]

Appends deterministic batches to an existing store (mode="a"), resuming after the
committed batches; with ``results`` it also rewrites the result "progress/x" at start
and every 25 batches. Every 10th batch is followed by a flush. Values derive from the global sample index so a reader can
check them: see ``expected``. Neither torch nor (without ``results``) xarray is
imported, for a fast start: the ``polysdk`` package ``__init__`` is bypassed.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np

CHUNK = 8


def batch_size(i: int) -> int:
    return 1 + (i * 7) % 5


def batch_ends(n_batches: int) -> np.ndarray:
    return np.cumsum([batch_size(i) for i in range(n_batches)])


def expected(start: int, stop: int) -> dict[str, np.ndarray]:
    """Site arrays and coords of global samples [start, stop)."""
    g = np.arange(start, stop)
    return {
        "a": (g[:, None] * 10 + np.arange(3)).astype("f4"),
        "b.c": (g[:, None, None] * 4 + np.arange(2)[:, None] * 2 + np.arange(2)).astype("i4"),
        "name": np.array([f"s{k}" for k in g]),
    }


DIMS = {"a": ("sample", "unit"), "b.c": ("sample", "position", "unit")}


def main(path: str, n_batches: int, results: bool = True) -> int:
    pkg = types.ModuleType("polysdk")  # skip polysdk/__init__ (it may import torch)
    pkg.__path__ = [str(Path(__file__).resolve().parents[1] / "polysdk")]
    sys.modules["polysdk"] = pkg
    from polysdk.store import ActivationStore

    # the test alternates commits after every batch and coalesced ones (the default)
    interval = float(os.environ.get("FAULT_COMMIT_INTERVAL", "0.25"))
    store = ActivationStore(path, mode="a", chunk_samples=CHUNK, max_queue=4, commit_interval=interval)
    ends = batch_ends(n_batches)
    n = store.n_samples
    k = 0 if n == 0 else int(np.searchsorted(ends, n)) + 1
    if n and ends[k - 1] != n:
        print(f"committed count {n} is not a batch boundary", flush=True)
        return 3
    if results:  # rewrite the result once before "ready" (the first to_zarr is slow)
        import xarray as xr

        progress = xr.Dataset({"v": ("u", np.full(50, k - 1))})
        store.write_result("progress/x", progress, attrs={"i": k - 1})
    print("ready", k, flush=True)
    for i in range(k, n_batches):
        start = 0 if i == 0 else int(ends[i - 1])
        e = expected(start, int(ends[i]))
        store.append({"a": e["a"], "b.c": e["b.c"]}, dims=DIMS,
                     coords={"name": e["name"], "batch": np.full(batch_size(i), i)})
        print(i, flush=True)  # lets the test pick the moment to kill
        if i % 10 == 9:  # a flush writes each site's partial last chunk (padded); the
            store.flush()  # next batches rewrite that chunk: kills land there too
        if results and i % 25 == 24:
            progress = xr.Dataset({"v": ("u", np.full(50, i))})
            store.write_result("progress/x", progress, attrs={"i": i})
    store.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["results"]))
