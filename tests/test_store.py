"""Unit tests of polysdk.store.ActivationStore (layer 2).

Over 400 lines: one test per behaviour of the public store API, kept together. The
writer's jobs are tested in test_store_writer.py, properties in test_store_property.py,
crashes in test_store_fault.py.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

from polysdk.errors import ConfigError, StoreError, StoreSchemaError, WriterError
from polysdk.store import ActivationStore

SITES = {"features.6": ("sample", "unit"), "blocks.0.mlp.hook_post": ("sample", "position", "unit")}


def _open_zarr(path, group):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(path, group=group)


def _batch(i: int, n: int = 3):
    """Deterministic batch i: values encode (batch, sample, unit) so they can be checked."""
    a = (i * 100 + np.arange(n)[:, None] * 10 + np.arange(4)[None, :]).astype("f4")
    b = np.broadcast_to(a[:, None, :2], (n, 5, 2)).copy()
    coords = {
        "label": np.full(n, i, dtype=np.int64),
        "name": np.array([f"b{i}s{j}" for j in range(n)]),
        "tokens": np.array([[f"t{i}{j}{p}" for p in range(5)] for j in range(n)]),
    }
    return {"features.6": a, "blocks.0.mlp.hook_post": b}, coords


@pytest.fixture()
def path(tmp_path):
    return tmp_path / "acts.zarr"


def test_roundtrip_plain_xarray(path):
    with ActivationStore(path, mode="w", chunk_samples=4, attrs={"model": "toy"}) as store:
        for i in range(5):
            arrays, coords = _batch(i)
            store.append(arrays, dims=SITES, coords=coords)
        store.flush()
        assert store.n_samples == 15
        assert store.sites == list(SITES)
    ds = _open_zarr(path, "features.6")
    want = np.concatenate([_batch(i)[0]["features.6"] for i in range(5)])
    np.testing.assert_array_equal(ds["activation"].values, want)
    assert ds["activation"].dims == ("sample", "unit")
    np.testing.assert_array_equal(ds["sample"].values, np.arange(15))
    np.testing.assert_array_equal(ds["label"].values, np.repeat(np.arange(5), 3))
    assert list(ds["name"].values[:4]) == ["b0s0", "b0s1", "b0s2", "b1s0"]
    assert ds["tokens"].dims == ("sample", "position")
    assert str(ds["tokens"].values[4, 2]) == "t112"
    # dask chunks along sample equal the zarr chunks
    assert ds["activation"].chunks[0] == (4, 4, 4, 3)
    b = _open_zarr(path, "blocks.0.mlp.hook_post")["activation"]
    assert b.dims == ("sample", "position", "unit") and b.shape == (15, 5, 2)
    tree = xr.open_datatree(path, engine="zarr")
    assert {"features.6", "blocks.0.mlp.hook_post"} <= set(tree.children)
    assert tree.attrs["model"] == "toy" and tree.attrs["n_samples"] == 15
    root = json.loads((path / "zarr.json").read_text())
    assert root["consolidated_metadata"]["metadata"]["features.6/activation"]["shape"] == [15, 4]


def test_store_api_views_and_attrs(path):
    with ActivationStore(path, mode="w", chunk_samples=2, attrs={"model": "toy"}) as store:
        arrays, coords = _batch(0)
        store.append(arrays, dims=SITES, coords=coords)
        da = store["features.6"]  # flushes pending batches first
        assert isinstance(da, xr.DataArray) and da.name == "activation"
        assert da.chunks is not None  # lazy, dask-backed
        np.testing.assert_array_equal(da.values, arrays["features.6"])
        assert "label" in da.coords
        assert isinstance(store.open("features.6"), xr.Dataset)
        assert isinstance(store.open(), xr.DataTree)
        a = store.attrs
        assert a["model"] == "toy" and a["polysdk"]["versions"]["zarr"]
        assert a["polysdk"]["chunk_samples"] == 2 and "created" in a["polysdk"]
    r = ActivationStore(path)  # default mode is read-only
    assert r.n_samples == 3 and "features.6" in r
    with pytest.raises(StoreError, match="read-only"):
        r.append(arrays, dims=SITES, coords=coords)
    with pytest.raises(StoreError, match="features.6"):
        r.open("features.7")


def test_torch_tensors_and_bfloat16(path):
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4).requires_grad_()
    h = torch.tensor([[1.5, -2.25]] * 3, dtype=torch.bfloat16)
    f16 = torch.full((3, 2), 0.5, dtype=torch.float16)
    with ActivationStore(path, mode="w") as store:
        store.append({"a": x * 1, "b": h, "c": f16}, coords={"label": torch.tensor([1, 2, 3])})
    r = ActivationStore(path)
    np.testing.assert_array_equal(r["a"].values, np.arange(12).reshape(3, 4))
    assert r["b"].dtype == np.float32 and r["b"].attrs["source_dtype"] == "bfloat16"
    np.testing.assert_array_equal(r["b"].values, [[1.5, -2.25]] * 3)
    assert r["c"].dtype == np.float16
    np.testing.assert_array_equal(r["a"]["label"].values, [1, 2, 3])


def test_input_copied_at_append(path):
    buf = np.zeros((2, 3), "f4")
    with ActivationStore(path, mode="w", chunk_samples=8) as store:
        store.append({"s": buf})
        buf[:] = 7  # caller reuses its buffer
        store.append({"s": buf})
    np.testing.assert_array_equal(ActivationStore(path)["s"].values, [[0] * 3] * 2 + [[7] * 3] * 2)


def test_modes(path):
    with pytest.raises(StoreError, match="acts.zarr"):
        ActivationStore(path, mode="r")
    ActivationStore(path, mode="w-").close()
    with pytest.raises(StoreError, match="already exists"):
        ActivationStore(path, mode="w-")
    with ActivationStore(path, mode="a") as s:
        s.append({"s": np.ones((2, 2))})
    with ActivationStore(path, mode="w") as s:  # "w" replaces
        assert s.n_samples == 0
    other = path.parent / "notastore"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(StoreError, match="not a Zarr store"):
        ActivationStore(other, mode="w")
    assert (other / "precious.txt").exists()


def test_append_resumes(path):
    with ActivationStore(path, mode="w", chunk_samples=4) as s:
        s.append({"s": np.arange(6.0).reshape(3, 2)}, coords={"y": np.arange(3)})
    with ActivationStore(path, mode="a") as s:
        assert s.n_samples == 3
        s.append({"s": np.arange(6.0, 10.0).reshape(2, 2)}, coords={"y": np.arange(3, 5)})
    ds = _open_zarr(path, "s")
    np.testing.assert_array_equal(ds["activation"].values, np.arange(10.0).reshape(5, 2))
    np.testing.assert_array_equal(ds["y"].values, np.arange(5))
    np.testing.assert_array_equal(ds["sample"].values, np.arange(5))


Y2 = {"y": np.arange(2)}


@pytest.mark.parametrize(
    "arrays, dims, coords, match",
    [
        ({"s": np.ones((2, 5), "f4")}, None, Y2, r"'s'.*expected \(4,\), got \(5,\)"),
        ({"s": np.ones((2, 4), "f8")}, None, Y2, "dtype expected float32, got float64"),
        ({"s": np.ones((2, 4), "f4")}, {"s": ("sample", "channel")}, Y2, "dims expected"),
        ({"s": np.ones((2, 4), "f4"), "t": np.ones((2, 4), "f4")}, None, Y2, "sites differ"),
        ({"s": np.ones((2, 4), "f4")}, None, None, "coordinates differ"),
        ({"s": np.ones((2, 4), "f4")}, None, {"y": np.array(["a", "b"])}, "coordinate 'y': dtype"),
        ({"s": np.ones((2, 4), "f4")}, None, {"y": np.arange(3)}, "3"),
        ({"s": np.ones((2, 4), "f4")}, {"s": ("unit", "sample")}, Y2, "first being 'sample'"),
    ],
)
def test_schema_errors(path, arrays, dims, coords, match):
    with ActivationStore(path, mode="w") as store:
        store.append({"s": np.ones((3, 4), "f4")}, coords={"y": np.arange(3)})
        with pytest.raises(StoreSchemaError, match=match):
            store.append(arrays, dims=dims, coords=coords)
        store.flush()
        assert store.n_samples == 3
    assert ActivationStore(path).n_samples == 3  # the bad batch left no trace


def test_coord_cast_same_kind(path):
    with ActivationStore(path, mode="w") as s:
        s.append({"s": np.ones((2, 1))}, coords={"y": np.arange(2, dtype=np.int64)})
        s.append({"s": np.ones((2, 1))}, coords={"y": np.arange(2, dtype=np.int32)})
    assert ActivationStore(path)["s"]["y"].dtype == np.int64


def test_writer_error_propagates(path, monkeypatch):
    store = ActivationStore(path, mode="w", chunk_samples=2)
    store.append({"s": np.ones((2, 2))})
    store.flush()
    boom = RuntimeError("disk on fire")

    def fail(*a, **k):
        raise boom

    monkeypatch.setattr(store._writer, "_write", fail)
    store.append({"s": np.ones((2, 2))})  # queued fine; fails in the thread
    with pytest.raises(WriterError, match="disk on fire") as info:
        store.flush()
    assert info.value.__cause__ is boom
    with pytest.raises(WriterError):
        store.append({"s": np.ones((2, 2))})
    with pytest.raises(WriterError):
        store.close()
    assert ActivationStore(path).n_samples == 2  # only the good batch committed


def test_bounded_queue_blocks_producer(path, monkeypatch):
    import threading
    import time

    store = ActivationStore(path, mode="w", chunk_samples=1, max_queue=2)
    gate = threading.Event()
    real = store._writer._write

    def slow(*a, **k):
        gate.wait()
        return real(*a, **k)

    monkeypatch.setattr(store._writer, "_write", slow)
    done = []

    def produce():
        for i in range(6):
            store.append({"s": np.full((1, 1), i)})
            done.append(i)

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(0.3)
    # 1 batch held by the writer + 2 queued; the producer waits on the 4th put
    assert len(done) == 3
    gate.set()
    t.join(5)
    store.close()
    np.testing.assert_array_equal(ActivationStore(path)["s"].values.ravel(), np.arange(6))


def test_results_roundtrip_and_replace(path):
    with ActivationStore(path, mode="w") as store:
        store.append({"features.6": np.ones((2, 3), "f4")})
        assert store.list_results() == []
        ds = xr.Dataset({"score": ("unit", np.array([0.1, 0.5, 0.9]))}, attrs={"a": 1})
        store.write_result("hdbscan/features.6", ds, attrs={"min_cluster_size": 5})
        store.write_result("toy", xr.Dataset({"loss": ("step", np.arange(4.0))}))
        got = store.read_result("hdbscan/features.6")
        np.testing.assert_array_equal(got["score"].values, [0.1, 0.5, 0.9])
        assert got.attrs == {"a": 1, "min_cluster_size": 5}
        store.write_result("hdbscan/features.6", ds * 2)
        again = store.read_result("hdbscan/features.6")
        np.testing.assert_array_equal(again["score"].values, [0.2, 1.0, 1.8])
        assert store.list_results() == ["hdbscan/features.6", "toy"]
        with pytest.raises(StoreError, match="nests"):
            store.write_result("hdbscan", ds)
        with pytest.raises(StoreError, match="toyy"):
            store.read_result("toyy")
        with pytest.raises(StoreError, match="invalid result name"):
            store.write_result("../x", ds)
    plain = _open_zarr(path, "results/hdbscan/features.6")
    np.testing.assert_array_equal(plain["score"].values, [0.2, 1.0, 1.8])
    assert ActivationStore(path).list_results() == ["hdbscan/features.6", "toy"]
    assert not any((path / ".staging").iterdir())


def test_result_staged_is_invisible(path):
    """A result being written (still in staging) is not part of the commit record."""
    with ActivationStore(path, mode="w") as store:
        store.append({"s": np.ones((2, 3), "f4")})
    stage = path / ".staging" / "x"
    xr.Dataset({"v": ("u", np.ones(2))}).to_zarr(stage, zarr_format=3, consolidated=False)
    tree = xr.open_datatree(path, engine="zarr")
    assert set(tree.children) == {"s"}
    with ActivationStore(path, mode="a") as store:  # resume cleans staging
        assert store.list_results() == []
    assert not stage.exists()


def test_docstring_example():
    import doctest

    import polysdk.store._store as mod

    res = doctest.testmod(mod, verbose=False)
    assert res.attempted >= 3 and res.failed == 0


def test_attrs_json_and_persisted_edits(path):
    with ActivationStore(path, mode="w", attrs={"lr": np.float32(0.5), "sizes": np.arange(2)}) as s:
        s.attrs["note"] = "edited"
        s.append({"s": np.ones((1, 1))})
    a = ActivationStore(path).attrs
    assert a["lr"] == 0.5 and a["sizes"] == [0, 1] and a["note"] == "edited"
    with pytest.raises(StoreError, match="JSON"):
        ActivationStore(path.parent / "b.zarr", mode="w", attrs={"f": object()})
    with pytest.raises(ConfigError, match="storage_options"):  # URLs: test_store_s3.py
        ActivationStore(path.parent / "c.zarr", mode="w", storage_options={"anon": True})


def test_unclosed_store_commits_at_exit(path):
    """A script that forgets close() still commits its batches at interpreter exit."""
    import subprocess
    import sys
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "polysdk"
    code = (
        "import sys, types, numpy as np\n"
        f"p = types.ModuleType('polysdk'); p.__path__ = [{str(pkg)!r}]\n"
        "sys.modules['polysdk'] = p\n"
        "from polysdk.store import ActivationStore\n"
        f"s = ActivationStore({str(path)!r}, mode='w', chunk_samples=64)\n"
        "for i in range(5): s.append({'s': np.full((3, 2), i, 'f4')})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    got = ActivationStore(path)["s"].values
    np.testing.assert_array_equal(got[:, 0], np.repeat(np.arange(5), 3))


@pytest.mark.parametrize(
    "codec, name",
    [("none", None), ("zstd:5", "zstd"), ("blosc-lz4", "blosc"), ("gzip:1", "gzip"), (None, None)],
)
def test_codec_argument(path, codec, name):
    x = np.maximum(np.random.default_rng(0).standard_normal((64, 8)), 0).astype("f4")
    with ActivationStore(path, mode="w", codec=codec, chunk_samples=32) as s:
        s.append({"s": x})
    meta = json.loads((path / "s" / "activation" / "zarr.json").read_text())
    names = [c["name"] for c in meta["codecs"]][1:]  # after the "bytes" serializer
    assert names == ([] if name is None else [name])
    np.testing.assert_array_equal(ActivationStore(path)["s"].values, x)


def test_default_codec_and_bad_codec(path, monkeypatch):
    from polysdk.store import DEFAULT_CODEC

    monkeypatch.setattr(ActivationStore, "_disk_speed", lambda self: 100.0)  # a slow disk
    with ActivationStore(path, mode="w") as s:
        s.append({"s": np.ones((64, 64), "f4")})
        assert s.attrs["polysdk"]["codec"] == DEFAULT_CODEC == "auto"
    meta = json.loads((path / "s" / "activation" / "zarr.json").read_text())
    assert meta["codecs"][-1]["name"] == "zstd"  # constant data: compressible
    with pytest.raises(ConfigError, match="unknown codec 'lzma'"):
        ActivationStore(path.parent / "x.zarr", mode="w", codec="lzma")


def test_auto_chunk_samples(path):
    from polysdk.store._layout import MAX_AUTO_CHUNK_SAMPLES, TARGET_CHUNK_BYTES

    with ActivationStore(path, mode="w") as s:  # chunk_samples=None: ~8 MiB per chunk
        s.append({"big": np.zeros((2, 64, 32, 32), "f4"), "small": np.zeros((2, 3), "f4")})
    big = _open_zarr(path, "big")["activation"].encoding["chunks"][0]
    small = _open_zarr(path, "small")["activation"].encoding["chunks"][0]
    assert big == TARGET_CHUNK_BYTES // (64 * 32 * 32 * 4)
    assert small == MAX_AUTO_CHUNK_SAMPLES


def test_live_reader_sees_whole_batches(path):
    """A plain-xarray reader opening the store while it is written sees whole batches."""
    sizes = [3, 1, 4, 1, 5, 9, 2, 6] * 3
    ends = np.cumsum(sizes)
    with ActivationStore(path, mode="w", chunk_samples=4, max_queue=2, commit_interval=0) as s:
        seen = set()
        for i, n in enumerate(sizes):
            start = ends[i] - n
            s.append({"s": np.arange(start, ends[i], dtype="f4")[:, None] * [1, -1]})
            if (path / "s").exists():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        ds = xr.open_zarr(path, group="s", chunks=None)
                    except KeyError:  # site not committed yet
                        continue
                k = ds.sizes["sample"]
                assert k == 0 or k in ends
                np.testing.assert_array_equal(ds["activation"].values[:, 0], np.arange(k))
                seen.add(k)
    assert len(seen) > 3


def test_memory_stays_bounded(path):
    """Peak traced memory while writing ~50 MB stays near chunk + queued batches."""
    import tracemalloc

    batch = np.ones((256, 256), "f4")  # 256 KiB
    tracemalloc.start()
    try:
        with ActivationStore(path, mode="w", chunk_samples=512, max_queue=2, codec="none") as s:
            for _ in range(200):
                s.append({"s": batch})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    total = 200 * batch.nbytes
    assert peak < 8 * 2**20 < total / 5, (peak, total)
    assert ActivationStore(path).n_samples == 200 * 256


def test_lazy_read_is_chunked(path):
    """Reducing a site reads it chunk by chunk: peak memory is far below its size."""
    import tracemalloc

    # 16 MiB in 64 chunks of 256 KiB: dask and zarr hold a few chunks at a time plus
    # ~1 MiB of their own buffers, far below the whole
    x = np.arange(8192 * 512, dtype="f4").reshape(8192, 512)
    with ActivationStore(path, mode="w", chunk_samples=128, codec="none") as s:
        s.append({"s": x})
    da = ActivationStore(path)["s"]
    assert da.chunks[0] == (128,) * 64
    import dask

    with dask.config.set(scheduler="synchronous"):
        float(da[:256].mean().compute())  # warm-up: lazy imports and caches are not the data
    tracemalloc.start()
    try:
        with dask.config.set(scheduler="synchronous"):
            m = float(da.mean().compute())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert m == pytest.approx(float(x.astype("f8").mean()), rel=1e-6)
    assert peak < x.nbytes / 4, peak


def test_interrupted_creation_reopens_empty(path):
    path.mkdir()
    (path / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": {"polysdk": {"format": 1}}}))
    with ActivationStore(path, mode="a") as s:
        assert s.n_samples == 0
        s.append({"s": np.ones((2, 1))})
    assert ActivationStore(path).n_samples == 2
    other = path.parent / "plain.zarr"
    other.mkdir()
    (other / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    with pytest.raises(StoreError, match="not an activation store"):
        ActivationStore(other, mode="a")


def test_write_result_dataarray_and_readonly(path):
    with ActivationStore(path, mode="w") as s:
        s.append({"s": np.ones((2, 3), "f4")})
        s.write_result("m", s["s"].mean("sample").rename("mean_act"))
        np.testing.assert_array_equal(s.read_result("m")["mean_act"].values, [1, 1, 1])
    with pytest.raises(StoreError, match="read-only"):
        ActivationStore(path).write_result("x", xr.Dataset())


def test_store_import_needs_no_torch_or_xarray():
    """Layer 2 imports torch never and zarr/xarray lazily (fast writer subprocesses)."""
    import subprocess
    import sys
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "polysdk"
    code = (
        "import sys, types\n"
        f"p = types.ModuleType('polysdk'); p.__path__ = [{str(pkg)!r}]\n"
        "sys.modules['polysdk'] = p\n"
        "import polysdk.store\n"
        "print(sorted(m for m in ('torch', 'xarray', 'zarr') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.gpu
def test_cuda_tensors(path):
    x = torch.randn(5, 3, device="cuda")
    h = torch.randn(5, 2, device="cuda", dtype=torch.bfloat16)
    with ActivationStore(path, mode="w") as s:
        s.append({"a": x, "b": h}, coords={"label": torch.arange(5, device="cuda")})
    r = ActivationStore(path)
    np.testing.assert_array_equal(r["a"].values, x.cpu().numpy())
    np.testing.assert_array_equal(r["b"].values, h.float().cpu().numpy())
    np.testing.assert_array_equal(r["a"]["label"].values, np.arange(5))


def test_reader_follows_writer(path):
    with ActivationStore(path, mode="w", chunk_samples=2) as w:
        r = ActivationStore(path)  # opened before any data
        assert r.n_samples == 0 and r.sites == []
        w.append({"s": np.ones((3, 2))})
        w.flush()
        assert r.n_samples == 3 and r.sites == ["s"]
        assert r["s"].shape == (3, 2)


@pytest.mark.parametrize("codec", ["none", "zstd:1", "blosc-lz4"])
def test_whole_chunks_hold_the_bytes_zarr_itself_writes(tmp_path, codec):
    """The writer's direct chunk path writes what zarr's own pipeline writes, the padded
    last chunk (5 of 16 samples, written at the flush) included."""
    import zarr

    x = np.random.default_rng(0).standard_normal((69, 3, 5)).astype("f4")
    ours = tmp_path / "ours.zarr"
    with ActivationStore(ours, mode="w", chunk_samples=16, codec=codec) as s:
        s.append({"s": x}, dims={"s": ("sample", "position", "unit")})
    reference = zarr.open_group(tmp_path / "ref.zarr", mode="w").create_array(
        "a", shape=x.shape, chunks=(16, 3, 5), dtype="f4",
        compressors=zarr.open_array(ours / "s" / "activation", mode="r").compressors,
        chunk_key_encoding={"name": "default", "separator": "."},
    )
    reference[:] = x
    assert sorted(p.name for p in (ours / "s" / "activation").iterdir()) == [
        *(f"c.{i}.0.0" for i in range(5)), "zarr.json"]  # files side by side, no folders
    for i in range(5):
        mine = (ours / "s" / "activation" / f"c.{i}.0.0").read_bytes()
        theirs = (tmp_path / "ref.zarr" / "a" / f"c.{i}.0.0").read_bytes()
        assert mine == theirs
    # the array's own zarr.json (written by the writer, grown ahead, then trimmed) is
    # the document zarr writes for that array
    mine = json.loads((ours / "s" / "activation" / "zarr.json").read_text())
    theirs = json.loads((tmp_path / "ref.zarr" / "a" / "zarr.json").read_text())
    for key in ("attributes", "dimension_names"):  # ours names dims and notes the codec
        mine.pop(key, None)
        theirs.pop(key, None)
    assert mine == theirs
    np.testing.assert_array_equal(xr.open_zarr(ours, group="s")["activation"].values, x)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 17])
@pytest.mark.parametrize("direct", [True, False])
def test_chunk_file_writer_exact_bytes(tmp_path, size, direct):
    """Direct (O_DIRECT, padded then truncated) and buffered writes leave the same file."""
    from polysdk.store._chunks import ChunkFileWriter

    payload = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    writer = ChunkFileWriter(direct=direct)
    target = tmp_path / "c" / "0"
    target.parent.mkdir()
    writer.write(target, payload)
    writer.write(tmp_path / "c" / "1", payload[: size // 2])  # a smaller file reuses the buffer
    assert target.read_bytes() == payload.tobytes()
    assert (tmp_path / "c" / "1").read_bytes() == payload[: size // 2].tobytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["0", "1"]  # no temp file left


def test_chunk_file_writer_falls_back_when_direct_io_is_refused(tmp_path, monkeypatch):
    """A filesystem refusing O_DIRECT (EINVAL) gets buffered writes, same bytes, no error."""
    import errno
    import os

    from polysdk.store import _chunks

    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(_chunks.os, "open", refusing_open)
    writer = _chunks.ChunkFileWriter(direct=True)
    writer.write(tmp_path / "a", b"x" * 5000)
    assert not writer.direct
    assert (tmp_path / "a").read_bytes() == b"x" * 5000
    x = np.arange(40, dtype="f4").reshape(20, 2)
    with ActivationStore(tmp_path / "s.zarr", mode="w", chunk_samples=4) as store:
        store.append({"s": x})
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "s.zarr", group="s")["activation"].values, x)


def test_append_without_copy_hands_the_array_over(path):
    """copy=False skips the defensive copy: the writer sees the caller's memory."""
    import threading

    from polysdk.store import _writer

    release = threading.Event()
    real_handle = _writer.Writer._handle

    def slow_handle(self, batch):
        release.wait(10)
        real_handle(self, batch)

    owned = torch.zeros(2, 3)
    copied = torch.zeros(2, 3)
    try:
        _writer.Writer._handle = slow_handle
        with ActivationStore(path, mode="w", chunk_samples=8) as store:
            store.append({"s": owned}, copy=False)
            store.append({"s": copied})
            owned += 5  # breaks the promise on purpose: the change reaches the disk
            copied += 5  # the default copy protects the caller
            release.set()
    finally:
        _writer.Writer._handle = real_handle
    values = ActivationStore(path)["s"].values
    np.testing.assert_array_equal(values[:2], np.full((2, 3), 5.0))
    np.testing.assert_array_equal(values[2:], np.zeros((2, 3)))


def test_auto_codec_compresses_only_sites_it_shrinks(path, monkeypatch):
    """codec='auto' on a slow disk: zstd for sparse (post-ReLU) sites, raw for dense
    ones, per site."""
    from numcodecs import Zstd

    monkeypatch.setattr(ActivationStore, "_disk_speed", lambda self: 1.0)  # 1 MB/s

    rng = np.random.default_rng(0)
    dense = rng.standard_normal((64, 256)).astype("f4")          # incompressible floats
    sparse = np.maximum(rng.standard_normal((64, 256)) - 1.0, 0).astype("f4")  # 84 % zeros
    raw = dense.tobytes()
    assert len(Zstd(level=1).encode(raw)) > 0.875 * len(raw)  # the premise: < 1/8 saving
    with ActivationStore(path, mode="w", chunk_samples=32) as s:
        s.append({"dense": dense, "sparse": sparse}, coords={"label": np.arange(64)})
    codecs = {
        site: [c["name"] for c in json.loads((path / site / name / "zarr.json").read_text())["codecs"]]
        for site in ("dense", "sparse") for name in ("activation",)
    }
    assert codecs == {"dense": ["bytes"], "sparse": ["bytes", "zstd"]}
    label = json.loads((path / "dense" / "label" / "zarr.json").read_text())
    assert [c["name"] for c in label["codecs"]] == ["bytes", "zstd"]  # coords: always zstd
    r = ActivationStore(path)
    assert r["dense"].attrs["codec"].startswith("auto: none")
    assert r["sparse"].attrs["codec"].startswith("auto: zstd:1")
    np.testing.assert_array_equal(r["dense"].values, dense)
    np.testing.assert_array_equal(r["sparse"].values, sparse)
    with ActivationStore(path, mode="a") as s:  # resuming keeps each site's choice
        s.append({"dense": sparse, "sparse": dense}, coords={"label": np.arange(64)})
    np.testing.assert_array_equal(ActivationStore(path)["sparse"].values[64:], dense)


def test_auto_codec_stores_raw_where_the_disk_outruns_zstd(path, monkeypatch):
    """On a disk faster than zstd's speed x saving, raw is faster: auto stores even a
    sparse site raw and says why, with the measured numbers."""
    monkeypatch.setattr(ActivationStore, "_disk_speed", lambda self: 1e9)  # 1 PB/s
    sparse = np.maximum(np.random.default_rng(0).standard_normal((64, 256)) - 1.0, 0).astype("f4")
    with ActivationStore(path, mode="w", chunk_samples=32) as s:
        s.append({"sparse": sparse})
    meta = json.loads((path / "sparse" / "activation" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes"]
    note = ActivationStore(path)["sparse"].attrs["codec"]
    assert note.startswith("auto: none (zstd would save") and "1000000000 MB/s" in note
    np.testing.assert_array_equal(ActivationStore(path)["sparse"].values, sparse)


def test_auto_codec_compresses_when_the_disk_cannot_be_measured(path, monkeypatch):
    """A failed disk measurement (a full disk, say) is not an error: the saving decides."""

    def full_disk(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ActivationStore, "_disk_speed", full_disk)
    sparse = np.maximum(np.random.default_rng(0).standard_normal((64, 256)) - 1.0, 0).astype("f4")
    with ActivationStore(path, mode="w", chunk_samples=32) as s:
        s.append({"sparse": sparse})
    note = ActivationStore(path)["sparse"].attrs["codec"]
    assert note.startswith("auto: zstd:1") and "could not be measured" in note
    np.testing.assert_array_equal(ActivationStore(path)["sparse"].values, sparse)


def test_disk_speed_is_measured_once_per_filesystem_and_leaves_no_file(tmp_path, monkeypatch):
    from polysdk.store import _chunks

    monkeypatch.setattr(_chunks, "_DISK_SPEED", {})
    writes = []
    real = _chunks.ChunkFileWriter.write

    def counting(self, path, payload):
        writes.append(len(memoryview(payload).cast("B")))
        real(self, path, payload)

    monkeypatch.setattr(_chunks.ChunkFileWriter, "write", counting)
    speed = _chunks.measure_write_speed(tmp_path)  # 16 MiB: a warm-up file and a timed one
    assert speed > 0 and writes == [8 << 20, 8 << 20]
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "sub").mkdir()
    assert _chunks.measure_write_speed(tmp_path / "sub") == speed  # same filesystem: cached
    assert len(writes) == 2


def test_auto_codec_times_zstd_with_few_calls_on_a_tiny_first_batch(monkeypatch):
    """The speed is timed on ~1 MiB, but a tiny batch is not encoded a million times."""
    import numcodecs

    from polysdk.store import _layout

    calls = []

    class CountingZstd(numcodecs.Zstd):
        def encode(self, buf):
            calls.append(len(memoryview(buf).cast("B")))
            return super().encode(buf)

    monkeypatch.setattr(numcodecs, "Zstd", CountingZstd)
    compressors, note = _layout.choose_compressors("auto", np.zeros((1, 64), "f4"), lambda: 1.0)
    assert note.startswith("auto: zstd:1") and compressors is not None
    assert calls == [256] * 65  # the saving, then 64 timed calls


def test_disk_is_measured_on_the_writer_thread_before_the_first_batch(path, monkeypatch):
    """codec='auto' measures the disk as soon as the store opens, on the writer thread
    (while the model computes its first batch); other codecs never measure it."""
    import threading

    calls: list[str] = []

    def speed(self):
        calls.append(threading.current_thread().name)
        return 1e9

    monkeypatch.setattr(ActivationStore, "_disk_speed", speed)
    with ActivationStore(path, mode="w") as store:
        store.flush()  # nothing appended yet
        assert calls == ["polysdk-store-writer"]
        store.append({"s": np.zeros((4, 2), "f4")})
    assert calls == ["polysdk-store-writer"] * 2  # the site's choice asks again (cached)
    calls.clear()
    with ActivationStore(path, mode="a") as store:  # its sites' codecs are already chosen
        store.append({"s": np.zeros((4, 2), "f4")})
    with ActivationStore(path.parent / "raw.zarr", mode="w", codec="none") as store:
        store.append({"s": np.zeros((4, 2), "f4")})
    assert calls == []


def test_a_failed_early_disk_measurement_is_not_an_error(path, monkeypatch):
    def full_disk(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ActivationStore, "_disk_speed", full_disk)
    with ActivationStore(path, mode="w", chunk_samples=2) as store:
        store.flush()
        store.append({"s": np.ones((4, 2), "f4")})
    assert ActivationStore(path).n_samples == 4


def test_an_interrupted_site_creation_is_replaced(path):
    """Leftovers of a site group whose creation was cut (no group zarr.json) do not
    stop the next run from creating it."""
    ActivationStore(path, mode="w").close()
    junk = path / "s" / "activation" / "c.7.0"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"half")
    x = np.arange(12, dtype="f4").reshape(6, 2)
    with ActivationStore(path, mode="a", chunk_samples=4) as store:
        store.append({"s": x})
    assert not junk.exists()
    np.testing.assert_array_equal(ActivationStore(path)["s"].values, x)


def test_commits_are_coalesced_and_made_when_the_writer_goes_quiet(path, monkeypatch):
    """A fast producer does not rewrite the commit record per batch; what is written is
    committed within ``commit_interval`` of the queue going quiet, and at ``flush``."""
    import time

    from polysdk.store import _layout

    records: list[int] = []
    real = _layout.write_commit_record

    def counting(root, attrs, sites, n, *args, **kwargs):
        records.append(n)
        real(root, attrs, sites, n, *args, **kwargs)

    monkeypatch.setattr(_layout, "write_commit_record", counting)
    with ActivationStore(path, mode="w", chunk_samples=2, commit_interval=60) as store:
        for i in range(50):
            store.append({"s": np.full((2, 3), i, "f4")})
        store.flush()
        assert records[-1] == 100 and len(records) <= 3  # creation, first batch, flush
        assert ActivationStore(path).n_samples == 100
    with ActivationStore(path, mode="a", commit_interval=0.05) as store:
        for i in range(5):
            store.append({"s": np.full((2, 3), 50 + i, "f4")})
        deadline = time.monotonic() + 10
        while ActivationStore(path).n_samples < 110 and time.monotonic() < deadline:
            time.sleep(0.02)  # no flush: the quiet writer commits by itself
        assert ActivationStore(path).n_samples == 110
    np.testing.assert_array_equal(ActivationStore(path)["s"].values[:, 0], np.repeat(np.arange(55), 2))
    with pytest.raises(ConfigError, match="commit_interval must be >= 0"):
        ActivationStore(path, mode="a", commit_interval=-1)


def test_append_mode_creates_a_missing_store_as_open_and_zarr_do(tmp_path):
    path = tmp_path / "new.zarr"
    with ActivationStore(path, mode="a") as s:
        s.append({"s": np.ones((2, 2))})
    assert ActivationStore(path).n_samples == 2
    other = tmp_path / "not_a_store"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="no activation store"):
        ActivationStore(other, mode="a")


def test_small_coordinates_come_back_in_memory_so_groupby_works(path):
    with ActivationStore(path, mode="w", chunk_samples=4) as s:
        for k in range(3):
            s.append({"s": np.full((4, 2), k, "f4")}, coords={"label": np.array([0, 1, 0, 1])})
    acts = ActivationStore(path)["s"]
    assert isinstance(acts.coords["label"].data, np.ndarray)
    means = acts.groupby("label").mean().values  # raised with lazy labels
    np.testing.assert_allclose(means, [[1.0, 1.0], [1.0, 1.0]])


def test_token_store_rows_are_tokens_with_sample_and_position_coordinates(path):
    lengths = [3, 1, 4]
    with ActivationStore(path, mode="w", chunk_samples=4) as s:
        start = 0
        for k, n in enumerate(lengths):
            s.append(
                {"h": np.full((n, 2), k, "f4")}, dims={"h": ("token", "unit")},
                coords={"sample": (("token",), np.full(n, k)), "position": (("token",), np.arange(n))},
                fingerprint=f"b{k}", n_samples=1,
            )
            start += n
    store = ActivationStore(path)
    assert store.row_dim == "token" and store.n_rows == 8 and store.n_samples == 3
    assert [b.fingerprint for b in store.batches] == ["b0", "b1", "b2"]
    acts = store["h"]
    assert acts.dims == ("token", "unit")
    np.testing.assert_array_equal(acts["sample"].values, [0, 0, 0, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(acts["position"].values, [0, 1, 2, 0, 0, 1, 2, 3])
    with ActivationStore(path, mode="a") as s, pytest.raises(StoreSchemaError, match="first dim"):
        s.append({"h": np.ones((2, 2), "f4")}, dims={"h": ("sample", "unit")})
