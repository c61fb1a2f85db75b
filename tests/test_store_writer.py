"""The store's writer by job: zarr's own write path as the fallback of the direct one,
the commit object, parameter errors, the exit hook and the measurement seam."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from polysdk.errors import ConfigError
from polysdk.store import ActivationStore
from polysdk.store import _zarr_internals as Z

PKG = Path(__file__).resolve().parents[1] / "polysdk"


@pytest.fixture()
def fresh_check(monkeypatch):
    """Forget the process's self-check verdict (restored after the test)."""
    monkeypatch.setattr(Z, "_CHECKED", None)


def _write(path: Path, codec: str) -> np.ndarray:
    """Batches across chunk edges, a flush mid-chunk, string coords, a resume."""
    x = np.random.default_rng(0).standard_normal((47, 3, 2)).astype("f4")
    x[x < 0] = 0
    dims = {"s": ("sample", "position", "unit")}

    def put(store, a, b):
        store.append({"s": x[a:b]}, dims=dims,
                     coords={"name": np.array([f"n{i}" for i in range(a, b)]), "y": np.arange(a, b)})

    with ActivationStore(path, mode="w", chunk_samples=8, codec=codec) as store:
        for a, b in [(0, 3), (3, 13), (13, 14), (14, 30)]:
            put(store, a, b)
        store.flush()  # the partial chunk 24..30 is written padded, then rewritten
        put(store, 30, 35)
    with ActivationStore(path, mode="a") as store:
        put(store, 35, 47)
    return x


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.parent != path}


@pytest.mark.parametrize("codec", ["none", "zstd:1", "blosc-lz4"])
def test_zarrs_own_write_path_leaves_the_same_files(tmp_path, monkeypatch, fresh_check, codec):
    """POLYSDK_ZARR_DIRECT=0 forces the fallback: every array written through zarr's
    public API. Every file of every site (chunks and each array's zarr.json) holds the
    bytes the direct path writes, and the commit records agree."""
    assert Z.direct_path()[0]  # the installed zarr is in the tested range
    x = _write(tmp_path / "direct.zarr", codec)
    monkeypatch.setenv(Z.ENV, "0")
    assert Z.direct_path() == (False, f"{Z.ENV}=0: zarr's own write path")
    _write(tmp_path / "zarr.zarr", codec)
    direct, fallback = _files(tmp_path / "direct.zarr"), _files(tmp_path / "zarr.zarr")
    assert sorted(direct) == sorted(fallback) and "s/activation/c.5.0.0" in direct
    assert [k for k in direct if direct[k] != fallback[k]] == []
    records = [json.loads((tmp_path / p / "zarr.json").read_text()) for p in ("direct.zarr", "zarr.zarr")]
    assert records[0]["consolidated_metadata"] == records[1]["consolidated_metadata"]
    got = ActivationStore(tmp_path / "zarr.zarr")["s"]
    np.testing.assert_array_equal(got.values, x)
    assert [str(v) for v in got["name"].values] == [f"n{i}" for i in range(47)]


def test_a_zarr_outside_the_tested_range_takes_zarrs_own_path(tmp_path, monkeypatch, fresh_check):
    monkeypatch.setattr(Z, "TESTED", ((9, 0), (9, 1)))
    direct, why = Z.direct_path()
    assert not direct and "outside the tested range 9.0 <= v < 9.1" in why
    calls = []
    real = Z.ZarrArray.write
    monkeypatch.setattr(Z.ZarrArray, "write", lambda self, *a: calls.append(type(self)) or real(self, *a))
    x = np.arange(40, dtype="f4").reshape(20, 2)
    with ActivationStore(tmp_path / "s.zarr", mode="w", chunk_samples=8) as store:
        store.append({"s": x})
    assert set(calls) == {Z.ZarrArray}  # never a DirectArray
    np.testing.assert_array_equal(ActivationStore(tmp_path / "s.zarr")["s"].values, x)


def test_missing_or_changed_internals_take_zarrs_own_path(tmp_path, monkeypatch, fresh_check):
    """An internal that is gone (ImportError) or that no longer writes zarr's bytes
    (the self-check compares one encoded chunk) switches to zarr's own path."""
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "zarr.core.buffer", None)  # import fails
        direct, why = Z.direct_path()
        assert not direct and why.startswith("zarr's internals changed (ModuleNotFoundError")
    monkeypatch.setattr(Z, "_CHECKED", None)
    monkeypatch.setattr(Z, "_chunk_encoder", lambda metadata: (lambda chunk: b"not zarr's bytes"))
    direct, why = Z.direct_path()
    assert not direct and "chunk bytes differ" in why
    x = np.arange(30, dtype="f4").reshape(15, 2)
    with ActivationStore(tmp_path / "s.zarr", mode="w", chunk_samples=4, codec="zstd:1") as store:
        store.append({"s": x})
    np.testing.assert_array_equal(ActivationStore(tmp_path / "s.zarr")["s"].values, x)


def test_the_writer_commits_through_a_commit_object(tmp_path):
    """The writer is handed an object with ``commit(n, sites)``, not the store."""
    from polysdk.store._commit import CommitLog
    from polysdk.store._layout import ArraySpec
    from polysdk.store._writer import Batch, Writer

    class Recorder:
        def __init__(self):
            self.calls = []

        def commit(self, n, sites):
            self.calls.append((n, list(sites)))

    rec = Recorder()
    writer = Writer(tmp_path, 0, [], rec, max_queue=2)
    specs = {"s": {"activation": ArraySpec(("sample", "unit"), (2,), "float32", 4),
                   "sample": ArraySpec(("sample",), (), "int64", 4)}}
    batch = lambda a, b: {"s": {"activation": np.ones((b - a, 2), "f4"), "sample": np.arange(a, b)}}  # noqa: E731
    writer.put(Batch(batch(0, 3), 3, specs))
    writer.put(Batch(batch(3, 9), 6))
    writer.stop()
    assert writer.error is None
    assert rec.calls[-1] == (9, ["s"]) and {tuple(s) for _, s in rec.calls} == {("s",)}
    assert [n for n, _ in rec.calls] == sorted(n for n, _ in rec.calls)
    with ActivationStore(tmp_path / "x.zarr", mode="w") as store:
        assert isinstance(store._writer.committer, CommitLog)
        assert store._writer.committer is store._log


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "x"}, "unknown mode 'x'"),
        ({"mode": "w", "commit_interval": -1}, "commit_interval must be >= 0"),
        ({"mode": "w", "commit_interval": float("nan")}, "commit_interval must be >= 0"),
        ({"mode": "w", "commit_interval": "soon"}, "commit_interval must be >= 0"),
        ({"mode": "w", "chunk_samples": 0}, "chunk_samples must be an int >= 1"),
        ({"mode": "w", "chunk_samples": 2.5}, "chunk_samples must be an int >= 1"),
        ({"mode": "w", "chunk_samples": True}, "chunk_samples must be an int >= 1"),
        ({"mode": "w", "codec": "lzma"}, "unknown codec 'lzma'"),
        ({"mode": "w", "codec": "zstd:99"}, "codec 'zstd:99'"),
    ],
)
def test_parameter_errors_are_config_errors_not_os_errors(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        ActivationStore(tmp_path / "s.zarr", **kwargs)
    assert not isinstance(info.value, OSError) and isinstance(info.value, ValueError)
    assert not (tmp_path / "s.zarr").exists()


def test_reopening_with_another_chunk_samples_says_so(tmp_path):
    path = tmp_path / "s.zarr"
    with ActivationStore(path, mode="w", chunk_samples=8) as store:
        store.append({"s": np.ones((3, 2), "f4")})
    with pytest.raises(ConfigError, match=r"chunk_samples=8 \(site 's'\).*chunk_samples=16"):
        ActivationStore(path, mode="a", chunk_samples=16)
    for same in (8, None):  # the stored value, or none given: fine
        with ActivationStore(path, mode="a", chunk_samples=same) as store:
            store.append({"s": np.ones((3, 2), "f4")})
    assert ActivationStore(path).n_samples == 9
    empty = tmp_path / "empty.zarr"
    ActivationStore(empty, mode="w", chunk_samples=8).close()
    with ActivationStore(empty, mode="a", chunk_samples=4) as store:  # no site fixed yet
        store.append({"s": np.ones((5, 2), "f4")})
    reopened = ActivationStore(empty)
    assert reopened.attrs["polysdk"]["chunk_samples"] == 4
    assert reopened["s"].chunks[0] == (4, 1)


def _exit_script(path: Path, *, public_atexit: bool) -> str:
    return (
        "import sys, types, threading, numpy as np\n"
        f"p = types.ModuleType('polysdk'); p.__path__ = [{str(PKG)!r}]\n"
        "sys.modules['polysdk'] = p\n"
        "import zarr\n"
        + ("threading._register_atexit = None  # as if it did not exist: atexit\n" if public_atexit else "")
        + "from polysdk.store import ActivationStore\n"
        f"s = ActivationStore({str(path)!r}, mode='w', chunk_samples=64)\n"
        "for i in range(5):\n"
        "    s.append({'s': np.full((3, 2), i, 'f4')}, coords={'name': np.array(['a', 'b', 'c'])})\n"
    )


@pytest.mark.parametrize("direct", ["1", "0"])
def test_an_unclosed_store_commits_at_exit_on_either_write_path(tmp_path, direct):
    """Strings (zarr's own write path even on the direct one) and the fallback need
    zarr's thread pool: the exit hook runs before it shuts."""
    import os

    path = tmp_path / "s.zarr"
    env = {**os.environ, Z.ENV: direct}
    subprocess.run([sys.executable, "-c", _exit_script(path, public_atexit=False)],
                   check=True, timeout=60, env=env)
    got = ActivationStore(path)["s"]
    np.testing.assert_array_equal(got.values[:, 0], np.repeat(np.arange(5), 3))
    assert [str(v) for v in got["name"].values] == ["a", "b", "c"] * 5


def test_atexit_alone_would_be_too_late(tmp_path):
    """Why the writer uses ``threading._register_atexit``: from a plain ``atexit``
    handler zarr can no longer write (its thread pool is shut), and the batches of an
    unclosed store are lost. If this starts passing, plain ``atexit`` may do."""
    path = tmp_path / "s.zarr"
    subprocess.run([sys.executable, "-c", _exit_script(path, public_atexit=True)],
                   check=True, timeout=60)
    assert ActivationStore(path).n_samples == 0


def test_writer_work_seam_skips_files_or_batches(tmp_path):
    """``polysdk.store.testing.writer_work``: what ``benchmarks/capture.py --breakdown``
    switches off instead of patching the writer."""
    from polysdk.store.testing import writer_work

    x = np.ones((16, 2), "f4")
    with writer_work(files=False):
        with ActivationStore(tmp_path / "nofiles.zarr", mode="w", chunk_samples=4, codec="none") as store:
            store.append({"s": x})
    names = {p.name for p in (tmp_path / "nofiles.zarr" / "s" / "activation").iterdir()}
    assert names == {"zarr.json"}  # metadata and commits, no chunk file
    assert ActivationStore(tmp_path / "nofiles.zarr").n_rows == 16
    with writer_work(batches=False):
        with ActivationStore(tmp_path / "dropped.zarr", mode="w", chunk_samples=4) as store:
            store.append({"s": x})
    assert not (tmp_path / "dropped.zarr" / "s").exists()
    with ActivationStore(tmp_path / "after.zarr", mode="w", chunk_samples=4) as store:  # seam off again
        store.append({"s": x})
    np.testing.assert_array_equal(ActivationStore(tmp_path / "after.zarr")["s"].values, x)


def test_store_modules_stay_small_and_zarr_internals_stay_in_one():
    """No store module over ~400 lines; only _zarr_internals imports zarr.core."""
    import re

    for module in sorted(PKG.joinpath("store").glob("*.py")):
        text = module.read_text()
        lines = text.count("\n")
        assert lines <= 420 or "Over 400 lines:" in text[:2000], (module.name, lines)
        if module.name != "_zarr_internals.py":
            assert not re.search(r"zarr\.core|\.metadata\b|to_buffer_dict|update_shape", text), module.name
