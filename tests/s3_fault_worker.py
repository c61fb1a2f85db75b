"""Writer subprocess for the S3 fault test: ``store_fault_worker`` against an S3 URL.

    python tests/s3_fault_worker.py URL N_BATCHES ENDPOINT [results]

The same deterministic batches, flushes and result rewrites as
``store_fault_worker.py`` (values derive from the global sample index: see its
``expected``), appended to the store at ``URL`` (mode="a": resuming after the
committed batches) on the S3-compatible server at ``ENDPOINT``. The test kills it
with SIGKILL at random moments.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import store_fault_worker as local  # noqa: E402


def main(url: str, n_batches: int, endpoint: str, results: bool) -> int:
    pkg = types.ModuleType("polysdk")  # skip polysdk/__init__ (it may import torch)
    pkg.__path__ = [str(HERE.parent / "polysdk")]
    sys.modules["polysdk"] = pkg
    from polysdk.store import ActivationStore

    interval = float(os.environ.get("FAULT_COMMIT_INTERVAL", "0.25"))
    store = ActivationStore(url, mode="a", chunk_samples=local.CHUNK, max_queue=4,
                            commit_interval=interval, storage_options={"endpoint_url": endpoint})
    ends = local.batch_ends(n_batches)
    n = store.n_samples
    k = 0 if n == 0 else int(np.searchsorted(ends, n)) + 1
    if n and ends[k - 1] != n:
        print(f"committed count {n} is not a batch boundary", flush=True)
        return 3
    if results:
        import xarray as xr

        store.write_result("progress/x", xr.Dataset({"v": ("u", np.full(50, k - 1))}),
                           attrs={"i": k - 1})
    print("ready", k, flush=True)
    for i in range(k, n_batches):
        start = 0 if i == 0 else int(ends[i - 1])
        e = local.expected(start, int(ends[i]))
        store.append({"a": e["a"], "b.c": e["b.c"]}, dims=local.DIMS,
                     coords={"name": e["name"], "batch": np.full(local.batch_size(i), i)})
        print(i, flush=True)
        if i % 10 == 9:
            store.flush()
        if results and i % 25 == 24:
            import xarray as xr

            store.write_result("progress/x", xr.Dataset({"v": ("u", np.full(50, i))}),
                               attrs={"i": i})
    store.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:] == ["results"]))
