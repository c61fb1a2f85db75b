"""Several processes writing results into one local store while another appends.

Each commit takes the store's commit lock (an ``flock``) and a process that has not
appended commits the rows of the record it finds; ``mode="a"`` repairs only when no
other writer has the store open. So no result is lost, no staged result is deleted
under its writer, and the appender's rows never go back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from polysdk.store import ActivationStore

ROOT = Path(__file__).resolve().parents[1]

_PRELUDE = f"""
import sys, time, types, os
from pathlib import Path
import numpy as np
pkg = types.ModuleType("polysdk")  # skip polysdk/__init__ (torch): a fast start
pkg.__path__ = [{str(ROOT / "polysdk")!r}]
sys.modules["polysdk"] = pkg
from polysdk.store import ActivationStore
path, go = sys.argv[1], Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
"""

RESULTS = textwrap.dedent("""
    import xarray as xr
    who, k = sys.argv[3], int(sys.argv[4])
    store = ActivationStore(path, mode="a")
    store.attrs[f"from_{who}"] = who  # an attr edit of this process survives too
    for j in range(k):
        store.write_result(f"p{who}/r{j}", xr.Dataset({"v": ("u", np.full(20, j))}),
                           attrs={"who": who})
        store.write_result("shared", xr.Dataset({"v": ("u", np.full(20, int(who)))}))
    store.close()
    print("done")
""")

APPEND = textwrap.dedent("""
    n = int(sys.argv[3])
    with ActivationStore(path, mode="a", commit_interval=0) as store:
        start = store.n_samples
        for i in range(n):
            rows = np.arange(start + 3 * i, start + 3 * i + 3)
            store.append({"s": np.repeat(rows[:, None], 4, axis=1).astype("f4")})
            time.sleep(0.01)
    print("done")
""")


def test_results_from_several_processes_while_one_appends(tmp_path):
    path = tmp_path / "shared.zarr"
    with ActivationStore(path, mode="w", chunk_samples=8) as store:
        store.append({"s": np.repeat(np.arange(6)[:, None], 4, axis=1).astype("f4")})
    go = tmp_path / "go"
    n_writers, k, n_batches = 4, 6, 40
    procs = [subprocess.Popen([sys.executable, "-c", _PRELUDE + RESULTS, str(path), str(go),
                               str(w), str(k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for w in range(n_writers)]
    procs.append(subprocess.Popen([sys.executable, "-c", _PRELUDE + APPEND, str(path), str(go),
                                   str(n_batches)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
    time.sleep(1.0)  # let them import, then start them together
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "done" in out, err
    store = ActivationStore(path)
    want = sorted([f"p{w}/r{j}" for w in range(n_writers) for j in range(k)] + ["shared"])
    assert store.list_results() == want  # none lost
    for w in range(n_writers):
        for j in range(k):
            got = store.read_result(f"p{w}/r{j}")
            assert got.attrs["who"] == str(w) and (got["v"].values == j).all()
    assert int(store.read_result("shared")["v"].values[0]) in range(n_writers)
    n = 6 + 3 * n_batches
    assert store.n_samples == n  # the appender's rows, never rolled back by the others
    np.testing.assert_array_equal(store["s"].values[:, 0], np.arange(n))
    np.testing.assert_array_equal(store["s"]["sample"].values, np.arange(n))
    assert {f"from_{w}" for w in range(n_writers)} <= set(store.attrs)
    assert not [p for p in (path / ".staging").iterdir()]  # nothing left behind
    os.sync()
