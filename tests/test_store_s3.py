"""Stores on object storage, against a real S3-compatible server on 127.0.0.1.

moto in server mode (``moto[server]``, a dev extra) answers the S3 HTTP API from a
thread of the test process; s3fs talks to it as to AWS. Covered: a round trip equal
to a local store, plain xarray reading the bucket, results, the repair of
``mode="a"``, the one-writer check, a SIGKILLed writer and its resume, and a detector
fitted on a ``dask.distributed`` cluster whose worker processes read the bucket.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import s3fs  # noqa: F401  (dev extras: a missing install must fail, not skip)
import moto.server as moto_server

from polysdk.errors import StoreError, WriterError  # noqa: E402
from polysdk.store import ActivationStore  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import store_fault_worker as worker  # noqa: E402

_FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def endpoint():
    """A moto S3 server on a free port of 127.0.0.1, with fake credentials in the env
    (inherited by the writer subprocesses and the dask workers)."""
    saved = {k: os.environ.get(k) for k in [*_FAKE_AWS, "AWS_PROFILE"]}
    os.environ.update(_FAKE_AWS)
    os.environ.pop("AWS_PROFILE", None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def s3(endpoint):
    """(url of a store in a fresh bucket, storage_options, s3fs filesystem)."""
    import s3fs

    opts = {"endpoint_url": endpoint}
    fs = s3fs.S3FileSystem(**opts, use_listings_cache=False, skip_instance_cache=True)
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return f"s3://{bucket}/run.zarr", opts, fs


def _batch(i: int, n: int = 5):
    a = (i * 100 + np.arange(n)[:, None] * 10 + np.arange(6)).astype("f4")
    a[:, ::2] = 0  # sparse: codec "auto" compresses it
    b = (np.arange(n * 3 * 2).reshape(n, 3, 2) + i).astype("i4")
    coords = {"label": np.arange(n) % 3 + i, "name": np.array([f"b{i}s{j}" for j in range(n)])}
    return {"fc": a, "seq": b}, coords


DIMS = {"fc": ("sample", "unit"), "seq": ("sample", "position", "unit")}


def _fill(store: ActivationStore, batches=range(7)) -> None:
    for i in batches:
        arrays, coords = _batch(i)
        store.append(arrays, dims=DIMS, coords=coords)


def test_round_trip_equals_a_local_store(s3, tmp_path):
    url, opts, _ = s3
    kw = {"chunk_samples": 8, "attrs": {"model": "toy"}}
    with ActivationStore(tmp_path / "local.zarr", mode="w", **kw) as local:
        _fill(local)
    with ActivationStore(url, mode="w", storage_options=opts, **kw) as remote:
        _fill(remote)
        assert str(remote.path) == url
    local, remote = ActivationStore(tmp_path / "local.zarr"), ActivationStore(url, storage_options=opts)
    assert remote.n_samples == local.n_samples == 35
    assert remote.sites == local.sites == ["fc", "seq"]
    assert remote.batches == local.batches
    assert remote.attrs["model"] == "toy"
    for site in DIMS:
        xr.testing.assert_equal(remote[site], local[site])  # values, dims, coords
        assert remote[site].dtype == local[site].dtype
        assert remote[site].chunks == local[site].chunks
    tree = remote.open()
    assert set(tree.children) == {"fc", "seq"}
    np.testing.assert_array_equal(tree["seq"]["activation"].values, local["seq"].values)
    # no disk to time on object storage: "auto" compresses where zstd saves 1/8
    assert remote["fc"].attrs["codec"].startswith("auto: zstd:1")


def test_plain_xarray_reads_the_bucket(s3):
    url, opts, _ = s3
    with ActivationStore(url, mode="w", chunk_samples=4, storage_options=opts) as store:
        _fill(store, range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(url, group="fc", storage_options=opts)
        tree = xr.open_datatree(url, engine="zarr", storage_options=opts)
    want = np.concatenate([_batch(i)[0]["fc"] for i in range(3)])
    np.testing.assert_array_equal(ds["activation"].values, want)
    np.testing.assert_array_equal(ds["sample"].values, np.arange(15))
    assert list(ds["name"].values[:2]) == ["b0s0", "b0s1"]
    assert tree.attrs["n_samples"] == 15 and tree["seq"].sizes["sample"] == 15


def test_results_on_object_storage(s3):
    url, opts, _ = s3
    with ActivationStore(url, mode="w", storage_options=opts) as store:
        _fill(store, range(2))
        store.write_result("scores/fc", xr.Dataset({"s": ("unit", np.arange(6.0))}), attrs={"k": 1})
        store.write_result("scores/fc", xr.Dataset({"s": ("unit", np.arange(6.0) * 2)}))  # replace
        store.write_result("other", xr.Dataset({"t": ("u", np.arange(2))}))
        with pytest.raises(StoreError, match="nests"):
            store.write_result("scores", xr.Dataset({"t": ("u", np.arange(2))}))
    store = ActivationStore(url, storage_options=opts)
    assert store.list_results() == ["other", "scores/fc"]
    got = store.read_result("scores/fc")
    np.testing.assert_array_equal(got["s"].values, np.arange(6.0) * 2)
    assert "k" not in got.attrs  # replaced whole
    assert set(store.open()["results"].children) == {"other", "scores"}


def test_resume_drops_what_the_record_does_not_hold(s3):
    """A killed run's leftovers: rows past the record, a site that never committed, a
    half-written result. Readers never see them; mode="a" deletes them."""
    import zarr

    url, opts, fs = s3
    with ActivationStore(url, mode="w", chunk_samples=2, storage_options=opts) as s:
        s.append({"s": np.arange(8.0).reshape(4, 2)})
        s.write_result("kept/r", xr.Dataset({"v": ("u", [5, 6, 7])}))
    key = url[len("s3://"):]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = zarr.open_group(zarr.storage.FsspecStore.from_url(f"{url}/s", storage_options=opts),
                            mode="r+", use_consolidated=False)
        g["activation"].resize((8, 2))
        g["activation"][4:8] = -1
        g["sample"].resize((8,))
        g["sample"][4:8] = 99
        xr.Dataset({"v": ("u", [1, 2])}).to_zarr(
            zarr.storage.FsspecStore.from_url(f"{url}/results/half", storage_options=opts),
            mode="w", consolidated=False, zarr_format=3)
        zarr.open_group(zarr.storage.FsspecStore.from_url(f"{url}/ghost", storage_options=opts),
                        mode="w").create_array("activation", shape=(2,), dtype="f4")
        assert xr.open_zarr(url, group="s", storage_options=opts).sizes["sample"] == 4
    assert fs.exists(f"{key}/s/activation/c.3.0")
    with ActivationStore(url, mode="a", storage_options=opts) as s:
        assert s.n_samples == 4 and s.list_results() == ["kept/r"]
        s.append({"s": np.arange(8.0, 10.0).reshape(1, 2)})
    assert not fs.exists(f"{key}/results/half") and not fs.exists(f"{key}/ghost")
    assert not fs.exists(f"{key}/s/activation/c.3.0")  # trimmed, not just hidden
    got = ActivationStore(url, storage_options=opts)["s"]
    np.testing.assert_array_equal(got.values, np.arange(10.0).reshape(5, 2))
    kept = ActivationStore(url, storage_options=opts).read_result("kept/r")
    np.testing.assert_array_equal(kept["v"].values, [5, 6, 7])  # committed: untouched
    np.testing.assert_array_equal(got["sample"].values, np.arange(5))


def test_modes_and_a_second_writer(s3):
    url, opts, fs = s3
    with pytest.raises(StoreError, match="no activation store"):
        ActivationStore(url, storage_options=opts)
    with ActivationStore(url, mode="a", storage_options=opts) as s:  # "a" creates
        _fill(s, range(1))
    with pytest.raises(StoreError, match="already exists"):
        ActivationStore(url, mode="w-", storage_options=opts)
    bucket = url.split("/")[2]
    fs.pipe(f"{bucket}/notastore/precious.txt", b"x")
    with pytest.raises(StoreError, match="not a Zarr store"):
        ActivationStore(f"s3://{bucket}/notastore", mode="w", storage_options=opts)
    assert fs.exists(f"{bucket}/notastore/precious.txt")
    with pytest.raises(StoreError, match="bucket"):
        ActivationStore("s3://no-such-bucket-x1/run.zarr", mode="w", storage_options=opts)
    # one writer per remote store: a commit that finds another's record raises
    first = ActivationStore(url, mode="a", storage_options=opts, commit_interval=0)
    with ActivationStore(url, mode="a", storage_options=opts) as second:
        _fill(second, range(1, 2))
    _fill(first, range(2, 3))
    with pytest.raises(WriterError, match="one writer"):
        first.close()
    assert ActivationStore(url, storage_options=opts).n_samples == 10
    with ActivationStore(url, mode="w", storage_options=opts) as s:  # "w" replaces
        assert s.n_samples == 0


# ----------------------------------------------------------------------------- faults
N_BATCHES = 100


def _check_plain(url: str, opts: dict, fs, ends: np.ndarray) -> int:
    """Plain xarray only, before any repair: whole, correct batches; the count."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = xr.open_datatree(url, engine="zarr", chunks=None, storage_options=opts)
        if not set(tree.children) - {"results"}:
            return 0
        a = xr.open_zarr(url, group="a", chunks=None, storage_options=opts)
        b = xr.open_zarr(url, group="b.c", chunks=None, storage_options=opts)
        n = a.sizes["sample"]
        assert b.sizes["sample"] == n and tree["a"].sizes["sample"] == n
        assert n == 0 or n in ends, f"{n} samples visible: not a whole number of batches"
        k = int(np.searchsorted(ends, n)) + 1 if n else 0
        e = worker.expected(0, n)
        np.testing.assert_array_equal(a["activation"].values, e["a"])
        np.testing.assert_array_equal(b["activation"].values, e["b.c"])
        np.testing.assert_array_equal(a["sample"].values, np.arange(n))
        assert [str(x) for x in a["name"].values] == list(e["name"])
        sizes = [worker.batch_size(i) for i in range(k)]
        np.testing.assert_array_equal(b["batch"].values, np.repeat(np.arange(k), sizes))
        root = json.loads(fs.cat_file(url[len("s3://"):] + "/zarr.json"))
        assert root["attributes"]["n_samples"] == n
        res = tree.children.get("results")
        if res is not None and "x" in getattr(res.children.get("progress"), "children", {}):
            r = xr.open_zarr(url, group="results/progress/x", chunks=None, storage_options=opts)
            v = r["v"].values  # whole or absent, never half
            assert v.shape == (50,) and (v == r.attrs["i"]).all()
    return n


@pytest.mark.slow
def test_sigkill_mid_write_then_resume(s3, endpoint):
    url, opts, fs = s3
    ActivationStore(url, mode="w", storage_options=opts).close()
    ends = worker.batch_ends(N_BATCHES)
    rng = np.random.default_rng(99)
    cmd = [sys.executable, str(HERE / "s3_fault_worker.py"), url, str(N_BATCHES), endpoint]
    seen = []
    for trial in range(5):
        extra = ["results"] if trial % 2 == 1 else []
        env = {**os.environ, "FAULT_COMMIT_INTERVAL": "0" if trial % 2 else "0.25"}
        proc = subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, text=True, env=env)
        try:
            ready = proc.stdout.readline()
            assert ready.startswith("ready"), ready
            target = int(ready.split()[1]) + int(rng.integers(3, 12))
            for line in proc.stdout:
                if int(line) >= target:
                    break
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            proc.kill()  # SIGKILL, in the middle of PUTs
            proc.wait()
            proc.stdout.close()
        seen.append(_check_plain(url, opts, fs, ends))
    assert 0 < seen[-1] < ends[-1], seen
    assert len(set(seen)) >= 3, seen
    assert seen == sorted(seen)  # nothing committed was ever lost
    out = subprocess.run(cmd + ["results"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "done" in out.stdout, out.stdout + out.stderr
    assert _check_plain(url, opts, fs, ends) == ends[-1]
    store = ActivationStore(url, storage_options=opts)
    assert store.n_samples == ends[-1]
    np.testing.assert_array_equal(store["a"]["sample"].values, np.arange(ends[-1]))  # each once
    assert store.list_results() == ["progress/x"]


# ----------------------------------------------------------------------------- dask
@pytest.mark.slow
def test_detector_on_a_local_cluster_reads_the_bucket(s3, tmp_path):
    """Worker processes (not threads): each unpickles the store's zarr arrays and reads
    the chunks from the server itself."""
    import dask.distributed as distributed

    from polysdk.data import make_planted_classes
    from polysdk.detect import ClassSelectivity

    url, opts, _ = s3
    planted = make_planted_classes(n_samples=400, n_classes=4, units_per_class=2, n_poly=3,
                                   balanced=True, seed=3)
    acts = planted.activations
    with ActivationStore(url, mode="w", chunk_samples=64, storage_options=opts) as store:
        for s in range(0, 400, 100):
            store.append({"act": acts.values[s:s + 100]}, dims={"act": ("sample", "unit")},
                         coords={"label": acts["label"].values[s:s + 100]})
    site = ActivationStore(url, storage_options=opts)["act"]
    assert site.chunks[0][0] == 64
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        det = ClassSelectivity().fit(site, client=client)
    mem = ClassSelectivity().fit(acts).result_
    for name in ("firing_rate", "score", "polysemantic"):
        np.testing.assert_allclose(np.asarray(det.result_[name].values, float),
                                   np.asarray(mem[name].values, float))
    with ActivationStore(url, mode="a", storage_options=opts) as store:
        name = det.save(store)
    got = ActivationStore(url, storage_options=opts).read_result(name)
    np.testing.assert_array_equal(got["polysemantic"].values, mem["polysemantic"].values)
