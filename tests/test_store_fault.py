"""Crash safety of the activation store: SIGKILL a writer subprocess at random moments.

After each kill (1) plain xarray, before any repair, must see only whole, correct
batches, and (2) reopening with mode="a" must resume so that the final store holds
every sample exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from polysdk.store import ActivationStore

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import store_fault_worker as worker  # noqa: E402

N_BATCHES = 400


def _check_plain(path: Path, ends: np.ndarray) -> int:
    """Read with plain xarray only; assert whole, correct batches; return the count."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = xr.open_datatree(path, engine="zarr", chunks=None)
        sites = set(tree.children) - {"results"}
        if not sites:
            return 0
        assert sites == {"a", "b.c"}
        a = xr.open_zarr(path, group="a", chunks=None)
        b = xr.open_zarr(path, group="b.c", chunks=None)
        n = a.sizes["sample"]
        assert b.sizes["sample"] == n and tree["a"].sizes["sample"] == n
        assert n == 0 or n in ends, f"{n} samples visible: not a whole number of batches"
        k = int(np.searchsorted(ends, n)) + 1 if n else 0
        e = worker.expected(0, n)
        np.testing.assert_array_equal(a["activation"].values, e["a"])
        np.testing.assert_array_equal(b["activation"].values, e["b.c"])
        np.testing.assert_array_equal(tree["b.c"]["activation"].values, e["b.c"])
        np.testing.assert_array_equal(a["sample"].values, np.arange(n))
        assert [str(x) for x in a["name"].values] == list(e["name"])
        sizes = [worker.batch_size(i) for i in range(k)]
        np.testing.assert_array_equal(b["batch"].values, np.repeat(np.arange(k), sizes))
        assert json.loads((path / "zarr.json").read_text())["attributes"]["n_samples"] == n
        res = tree.children.get("results")
        if res is not None and "x" in getattr(res.children.get("progress"), "children", {}):
            # a result is whole or absent (killed while replacing it), never half
            r = xr.open_zarr(path, group="results/progress/x", chunks=None)
            v = r["v"].values
            assert v.shape == (50,) and (v == r.attrs["i"]).all()
    return n


@pytest.mark.parametrize("trials, direct", [(10, "1"), (6, "0")], ids=["direct", "zarr-path"])
def test_sigkill_then_plain_read_and_resume(tmp_path, trials, direct):
    """``direct="0"``: the same with every array written through zarr's own API (the
    fallback of ``_zarr_internals``), whose commit protocol must hold as well."""
    path = tmp_path / "fault.zarr"
    ActivationStore(path, mode="w").close()
    ends = worker.batch_ends(N_BATCHES)
    rng = np.random.default_rng(1234)
    cmd = [sys.executable, str(HERE / "store_fault_worker.py"), str(path), str(N_BATCHES)]
    seen = []
    for trial in range(trials):  # every third run also rewrites a result
        extra = ["results"] if trial % 3 == 1 else []
        interval = "0" if trial % 2 else "0.25"  # commit every batch, or coalesced
        env = {**os.environ, "FAULT_COMMIT_INTERVAL": interval, "POLYSDK_ZARR_DIRECT": direct}
        proc = subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, text=True, env=env)
        try:
            ready = proc.stdout.readline()
            assert ready.startswith("ready"), ready
            # kill after a random number of queued batches, plus a random delay, so the
            # writer thread is caught at a random point (chunk write, resize, commit)
            target = int(ready.split()[1]) + int(rng.integers(0, 30))
            for line in proc.stdout:
                if int(line) >= target:
                    break
            time.sleep(rng.uniform(0.0, 0.03))
        finally:
            proc.kill()  # SIGKILL: no cleanup runs
            proc.wait()
            proc.stdout.close()
        seen.append(_check_plain(path, ends))
    # the kills landed while writing: progress grew, but the run did not finish
    assert 0 < seen[-1] < ends[-1], seen
    assert len(set(seen)) >= 4, seen
    assert seen == sorted(seen)  # nothing committed was ever lost
    env = {**os.environ, "POLYSDK_ZARR_DIRECT": direct}
    out = subprocess.run(cmd + ["results"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "done" in out.stdout, out.stdout + out.stderr
    assert _check_plain(path, ends) == ends[-1]
    store = ActivationStore(path)
    assert store.n_samples == ends[-1]
    # nothing twice: sample ids are exactly 0..N-1
    np.testing.assert_array_equal(store["a"]["sample"].values, np.arange(ends[-1]))
    assert store.list_results() == ["progress/x"]
    # after a clean close each array's own metadata is exact too (no consolidated needed)
    meta = json.loads((path / "b.c" / "activation" / "zarr.json").read_text())
    assert meta["shape"][0] == ends[-1]


def test_uncommitted_tail_is_truncated_on_resume(tmp_path):
    """Chunks written past the commit record are dropped by mode='a', not shown."""
    path = tmp_path / "t.zarr"
    with ActivationStore(path, mode="w", chunk_samples=2) as s:
        s.append({"s": np.arange(8.0).reshape(4, 2)})
    # simulate a killed run: arrays grown and chunks written, no new commit record
    import zarr

    g = zarr.open_group(str(path / "s"), mode="r+", use_consolidated=False)
    g["activation"].resize((8, 2))
    g["activation"][4:8] = -1
    g["sample"].resize((8,))
    g["sample"][4:8] = 99
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert xr.open_zarr(path, group="s").sizes["sample"] == 4  # before repair
    with ActivationStore(path, mode="a") as s:
        assert s.n_samples == 4
        s.append({"s": np.arange(8.0, 10.0).reshape(1, 2)})
    got = ActivationStore(path)["s"]
    np.testing.assert_array_equal(got.values, np.arange(10.0).reshape(5, 2))
    np.testing.assert_array_equal(got["sample"].values, np.arange(5))
