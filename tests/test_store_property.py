"""Property tests: any batches round-trip exactly through append -> plain xarray."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polysdk.store import ActivationStore

DTYPES = ["float32", "float16", "int32", "int64", "uint8"]
DIM_NAMES = {1: ("unit",), 2: ("position", "unit"), 3: ("unit", "y", "x")}


def _values(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype.startswith("float"):
        x = rng.standard_normal(shape) * 100
        x[rng.random(shape) < 0.5] = 0.0  # ReLU-like sparsity (zeros are the fill value)
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def _first_unit(x: np.ndarray) -> np.ndarray:
    """(sample, 1) float32: each sample's first element (a second, narrower site)."""
    return x.reshape(len(x), -1)[:, :1].astype("float32") if x.size else np.zeros((0, 1), "f4")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.integers(0, 7), min_size=1, max_size=6),
    chunk=st.integers(1, 9),
    dtype=st.sampled_from(DTYPES),
    trailing=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
    max_queue=st.integers(1, 3),
    flush_every=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_roundtrip_any_batches(batches, chunk, dtype, trailing, max_queue, flush_every, seed):
    rng = np.random.default_rng(seed)
    dims = ("sample", *DIM_NAMES[len(trailing)])
    parts = [_values(rng, (n, *trailing), dtype) for n in batches]
    labels = [rng.integers(-5, 5, n) for n in batches]
    names = [np.array([f"x{rng.integers(0, 10**i)}" for i in range(n)], dtype=str) for n in batches]
    tokens = [rng.integers(0, 50, (n, 3)).astype("int32") for n in batches]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.zarr"
        with ActivationStore(path, mode="w", chunk_samples=chunk, max_queue=max_queue) as store:
            for i, (p, lab, nm, tok) in enumerate(zip(parts, labels, names, tokens)):
                store.append(
                    {"site.0": p, "other": _first_unit(p)},
                    dims={"site.0": dims, "other": ("sample", dims[1])},
                    coords={"label": lab, "name": nm, "tokens": (("sample", "tok"), tok)},
                )
                if i % flush_every == 0:
                    store.flush()
                    assert store.n_samples == sum(batches[: i + 1])
        want = np.concatenate(parts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(path, group="site.0")
            tree = xr.open_datatree(path, engine="zarr")
        total = sum(batches)
        assert ds["activation"].dims == dims
        assert ds["activation"].dtype == np.dtype(dtype)
        assert ds["activation"].shape == (total, *trailing)
        np.testing.assert_array_equal(ds["activation"].values, want)
        np.testing.assert_array_equal(ds["label"].values, np.concatenate(labels))
        np.testing.assert_array_equal(ds["tokens"].values, np.concatenate(tokens))
        assert [str(v) for v in ds["name"].values] == [str(v) for v in np.concatenate(names)]
        np.testing.assert_array_equal(ds["sample"].values, np.arange(total))
        np.testing.assert_array_equal(tree["other"]["activation"].values, _first_unit(want))
        if total:
            assert max(ds["activation"].chunks[0]) <= chunk


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.integers(1, 6), min_size=2, max_size=8),
    chunk=st.integers(1, 7),
    fail_at=st.integers(0, 60),
    seed=st.integers(0, 2**16),
)
def test_failure_at_any_write_keeps_whole_batches(batches, chunk, fail_at, seed):
    """Make the ``fail_at``-th disk operation of the writer fail (array write, resize or
    commit record); plain xarray must then see a prefix of whole batches, and resuming
    with mode="a" must complete the data exactly."""
    import pytest

    import zarr

    from polysdk.errors import WriterError
    from polysdk.store import _layout

    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal((n, 3)).astype("f4") for n in batches]
    ends = np.cumsum(batches)
    calls = {"n": 0}

    def failing(fn):
        def wrapper(*a, **k):
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise OSError("injected failure")
            return fn(*a, **k)

        return wrapper

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.zarr"
        ActivationStore(path, mode="w").close()
        failed = False
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(zarr.Array, "__setitem__", failing(zarr.Array.__setitem__))
            mp.setattr(zarr.Array, "resize", failing(zarr.Array.resize))
            mp.setattr(_layout, "atomic_write_json", failing(_layout.atomic_write_json))
            store = None
            try:
                store = ActivationStore(path, mode="a", chunk_samples=chunk)
                for i, p in enumerate(parts):
                    store.append({"s": p}, coords={"batch": np.full(len(p), i)})
                store.close()
            except OSError as err:  # WriterError, or the failure hit the open itself
                failed = True
                cause = err.__cause__ if isinstance(err, WriterError) else err
                assert "injected failure" in str(cause)
                if store is not None:
                    try:  # raises if the failure surfaced at an append, not at close
                        store.close()
                    except WriterError:
                        pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = xr.open_datatree(path, engine="zarr", chunks=None)
            n = tree["s"].sizes["sample"] if "s" in tree.children else 0
            assert n == 0 or n in ends
            if n:
                ds = xr.open_zarr(path, group="s", chunks=None)
                np.testing.assert_array_equal(ds["activation"].values, np.concatenate(parts)[:n])
        if not failed:
            assert n == ends[-1]
        k = int(np.searchsorted(ends, n, side="right")) if n else 0
        with ActivationStore(path, mode="a") as store:
            assert store.n_samples == n
            for i in range(k, len(parts)):
                store.append({"s": parts[i]}, coords={"batch": np.full(len(parts[i]), i)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(path, group="s", chunks=None)
        np.testing.assert_array_equal(ds["activation"].values, np.concatenate(parts))
        np.testing.assert_array_equal(ds["batch"].values, np.repeat(np.arange(len(parts)), batches))
        np.testing.assert_array_equal(ds["sample"].values, np.arange(ends[-1]))


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    chunk=st.integers(1, 7),
    data=st.data(),
)
def test_batches_split_into_chunks_and_the_rest_kept(lengths, chunk, data):
    """The writer's chunk assembly: each chunk's slices join to exactly the next
    ``chunk`` samples, and what stays pending is everything after them."""
    from polysdk.store._chunks import split_into_chunks
    from polysdk.store._writer import _drop_samples

    total = sum(lengths)
    n_chunks = data.draw(st.integers(0, total // chunk))
    ends = np.cumsum([0, *lengths])
    parts = [np.arange(a, b).reshape(-1, 1) * 10 for a, b in zip(ends[:-1], ends[1:])]
    joined = np.concatenate(parts)
    chunks = split_into_chunks(parts, chunk, n_chunks)
    assert len(chunks) == n_chunks
    for i, pieces in enumerate(chunks):
        np.testing.assert_array_equal(np.concatenate(pieces), joined[i * chunk : (i + 1) * chunk])
    kept = _drop_samples([{"a": p, "b": -p} for p in parts], n_chunks * chunk)
    rest = [piece["a"] for piece in kept]
    expected = joined[n_chunks * chunk :]
    np.testing.assert_array_equal(np.concatenate(rest) if rest else np.zeros((0, 1), int), expected)
    assert all(np.array_equal(piece["b"], -piece["a"]) for piece in kept)
