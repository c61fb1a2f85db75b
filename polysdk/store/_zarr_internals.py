"""The one module that touches zarr's internals: array metadata and chunk encoding.

The writer's fast path writes each array's ``zarr.json`` and its whole chunks itself,
without zarr's per-call overhead (its event loop, buffer copies), which on a 2-core
machine competed with the model's forward. For that it relies on what is not zarr's
public API:

* ``zarr.core.buffer.default_buffer_prototype`` and the metadata object of an array
  (``to_buffer_dict``, ``update_shape``, ``encode_chunk_key``, ``codecs``, ``chunks``,
  ``fill_value``), and the ``Buffer`` documents an in-memory store holds;
* that a ``bytes`` (+ ``zstd``) codec chain stores a chunk as its little-endian bytes
  (zstd-compressed by numcodecs' ``Zstd`` with the codec's level and checksum).

So it is used only with the zarr versions in ``TESTED``, and only once a self-check
at first use -- the imports, the metadata calls and one encoded chunk compared with
zarr's own -- has passed. Tested: zarr 3.1.6 (the project's Python 3.11 venv, whole
test suite: tests/test_store.py compares the files with zarr's own bytes,
tests/test_store_writer.py with the fallback's) and zarr 3.2.1 and 3.3.0 (Python
3.12, which they require: both paths, every file identical, data read back with
zarr). Otherwise, or with ``POLYSDK_ZARR_DIRECT=0``, every array
is created, grown and written through zarr's public API (``open_group``,
``create_array``, ``resize``, ``array[start:stop] = data``): the same data, slower.
``direct_path()`` says which path is taken and why.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from polysdk.store._chunks import ChunkFileWriter, split_into_chunks
from polysdk.store._layout import ROOT_META, ArraySpec, CodecChoice, atomic_write_bytes
from polysdk.store._remote import RemotePath

#: zarr versions the direct path is tested with: ``TESTED[0] <= version < TESTED[1]``
TESTED: tuple[tuple[int, ...], tuple[int, ...]] = ((3, 1, 3), (3, 4))
ENV = "POLYSDK_ZARR_DIRECT"
#: the encoder of a ``bytes``-only chain: the chunk's own little-endian bytes, no copy
RAW = object()
_CHECKED: tuple[bool, str] | None = None  # the self-check's verdict, once per process


def direct_path() -> tuple[bool, str]:
    """(whether the writer writes metadata and chunks itself, the reason)."""
    global _CHECKED
    if os.environ.get(ENV, "1") == "0":
        return False, f"{ENV}=0: zarr's own write path"
    if _CHECKED is None:
        _CHECKED = _check()
    return _CHECKED


def _version(text: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


def _check() -> tuple[bool, str]:
    import zarr

    version = _version(getattr(zarr, "__version__", ""))
    lo, hi = TESTED
    if not lo <= version < hi:
        return False, (f"zarr {zarr.__version__} is outside the tested range "
                       f"{'.'.join(map(str, lo))} <= v < {'.'.join(map(str, hi))}: "
                       "zarr's own write path")
    try:
        _self_check()
    except (ImportError, AttributeError, TypeError, KeyError, ValueError, AssertionError) as err:
        return False, f"zarr's internals changed ({type(err).__name__}: {err}): zarr's own write path"
    return True, f"zarr {zarr.__version__}: direct chunk and metadata writes"


def _self_check() -> None:
    """Exercise every internal the direct path uses on a tiny in-memory array."""
    import json

    import zarr
    from zarr.codecs import ZstdCodec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    x = np.arange(8, dtype="<f4").reshape(4, 2)
    for compressors in (None, (ZstdCodec(level=1),)):
        docs: dict[str, Any] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = zarr.open_group(store=MemoryStore(docs), mode="w")
            a = g.create_array("a", shape=(4, 2), chunks=(4, 2), dtype="f4", compressors=compressors,
                               chunk_key_encoding={"name": "default", "separator": "."})
            a[:] = x
        meta = a.metadata.update_shape((8, 2))
        doc = json.loads(meta.to_buffer_dict(default_buffer_prototype())[ROOT_META].to_bytes())
        assert doc["shape"] == [8, 2], doc
        key = meta.encode_chunk_key((0, 0))
        assert key == "c.0.0" and int(meta.chunks[0]) == 4 and meta.fill_value == 0, key
        assert docs[ROOT_META].to_bytes()  # the group's own document
        encode = _chunk_encoder(meta)
        ours = x.tobytes() if encode is RAW else bytes(encode(x))
        assert encode is not False and ours == docs[f"a/{key}"].to_bytes(), "chunk bytes differ"


def _resolve(spec: ArraySpec, first: np.ndarray | None) -> tuple[Any, dict[str, Any]]:
    compressors, attrs = spec.compressors, spec.attrs
    if isinstance(compressors, CodecChoice):
        compressors, note = compressors.choose(first)
        attrs = {**attrs, "codec": note}
    return compressors, attrs


def _create_arrays(group: Any, specs: dict[str, ArraySpec], first: dict[str, np.ndarray]) -> dict[str, Any]:
    arrays = {}
    for name, s in specs.items():
        compressors, attrs = _resolve(s, first.get(name))
        arrays[name] = group.create_array(
            name,
            shape=(0, *s.trailing),
            chunks=(s.chunk_samples, *s.trailing),
            dtype=str if s.dtype == "string" else s.dtype,
            compressors=compressors,
            dimension_names=s.dims,
            attributes=attrs,
            # chunk files side by side ("c.4.0.0.0"), not nested folders
            # ("c/4/0/0/0"): three fewer mkdirs per chunk written (~0.2 ms each)
            chunk_key_encoding={"name": "default", "separator": "."},
        )
    return arrays


def create_site(site_dir: Path, specs: dict[str, ArraySpec], first: dict[str, np.ndarray],
                files: ChunkFileWriter) -> dict[str, ZarrArray]:
    """Create a site's group and arrays (replacing an interrupted creation's leftovers).

    Direct path: zarr builds the metadata in memory and the writer writes the files,
    the group's last (zarr's own file I/O runs on its event-loop thread, which cost a
    2-core machine's model ~40 ms at the start of every capture).
    """
    import zarr
    from zarr.storage import MemoryStore

    if isinstance(site_dir, RemotePath):  # object storage: zarr's own path, always
        site_dir.remove()
        site_dir.root.site_meta.pop(site_dir.rel, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = zarr.open_group(store=site_dir.root.zarr_store(site_dir.rel), mode="w")
            _create_arrays(g, specs, first)
        return open_site(site_dir, files)
    shutil.rmtree(site_dir, ignore_errors=True)
    if not direct_path()[0]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = zarr.open_group(store=str(site_dir), mode="w")
            _create_arrays(g, specs, first)
        return open_site(site_dir, files)
    documents: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = zarr.open_group(store=MemoryStore(documents), mode="w")
        made = _create_arrays(g, specs, first)
    out: dict[str, ZarrArray] = {}
    for name, arr in made.items():
        (site_dir / name).mkdir(parents=True)
        out[name] = DirectArray(arr.metadata, site_dir / name, files)
        out[name].write_metadata()
    atomic_write_bytes(site_dir / ROOT_META, documents[ROOT_META].to_bytes())  # group last
    return out


def open_site(site_dir: Path, files: ChunkFileWriter) -> dict[str, ZarrArray]:
    """The arrays of an existing site group, as the writer keeps them."""
    import zarr

    remote = isinstance(site_dir, RemotePath)
    direct = direct_path()[0] and not remote
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = zarr.open_group(store=_location(site_dir), mode="r+", use_consolidated=False)
        if direct:
            return {name: DirectArray(a.metadata, site_dir / name, files) for name, a in g.arrays()}
        return {name: ZarrArray(site_dir / name) for name, _ in g.arrays()}


def _location(directory: Path | RemotePath) -> Any:
    """What zarr opens: a local folder's path, or an ``FsspecStore`` rooted at the node."""
    if isinstance(directory, RemotePath):
        return directory.root.zarr_store(directory.rel)
    return str(directory)


class ZarrArray:
    """One array of a site group, written through zarr's public API (the fallback, and
    the only path on object storage)."""

    def __init__(self, directory: Path | RemotePath) -> None:
        self.directory = directory
        self._opened: Any = None
        # grow ahead of the data (few metadata writes)? Not on object storage: shrinking
        # back at close deletes every chunk key past the end, one request each
        self.grow_ahead = not isinstance(directory, RemotePath)

    def zarr_array(self) -> Any:
        """The array opened with zarr (cached until the next ``resize``)."""
        if self._opened is None:
            import zarr

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = zarr.open_array(store=_location(self.directory), mode="r+", zarr_format=3)
            # every chunk written holds data: skip zarr's per-chunk "all fill value?" scan
            with_config = getattr(arr, "with_config", None)
            self._opened = with_config({"write_empty_chunks": True}) if with_config else arr
        return self._opened

    @property
    def length(self) -> int:
        return int(self.zarr_array().shape[0])

    @property
    def chunk(self) -> int:
        return int(self.zarr_array().chunks[0])

    def resize(self, length: int) -> None:
        """Set the length along the first dim (rows past it are dropped or unwritten)."""
        arr = self.zarr_array()
        arr.resize((int(length), *arr.shape[1:]))  # updates ``arr``'s own shape too

    def write(self, start: int, parts: list[np.ndarray], k: int) -> None:
        """Write the first ``k`` rows of ``parts`` (joined) at row ``start``."""
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self.zarr_array()[start : start + k] = data[:k]


class DirectArray(ZarrArray):
    """An array whose ``zarr.json`` and whole chunks the writer writes itself.

    Chunks of the codec chains ``_chunk_encoder`` knows (``bytes``, ``bytes`` +
    ``zstd``), chunk-aligned and numeric, go straight to their files; anything else
    through zarr (``ZarrArray.write``).
    """

    def __init__(self, metadata: Any, directory: Path, files: ChunkFileWriter) -> None:
        super().__init__(directory)
        self.metadata = metadata
        self.files = files
        self._encoder: Any = None  # chunk -> bytes, RAW, or False (not ours to write)
        self._made_dirs: set[Path] = set()

    @property
    def length(self) -> int:
        return int(self.metadata.shape[0])

    @property
    def chunk(self) -> int:
        return int(self.metadata.chunks[0])

    def write_metadata(self) -> None:
        """(Re)write this array's ``zarr.json`` atomically, as zarr serialises it."""
        from zarr.core.buffer import default_buffer_prototype

        doc = self.metadata.to_buffer_dict(default_buffer_prototype())[ROOT_META]
        atomic_write_bytes(self.directory / ROOT_META, doc.to_bytes())

    def resize(self, length: int) -> None:
        """Only the metadata changes (chunks past the length stay unwritten, or ignored)."""
        self.metadata = self.metadata.update_shape((int(length), *self.metadata.shape[1:]))
        self.write_metadata()
        self._opened = None

    def write(self, start: int, parts: list[np.ndarray], k: int) -> None:
        if not self._write_whole_chunks(start, parts, k):
            super().write(start, parts, k)

    def _write_whole_chunks(self, start: int, parts: list[np.ndarray], k: int) -> bool:
        """Write ``k`` samples from ``parts`` as whole chunks straight to their files.

        Returns False (nothing written) where this does not apply: not chunk-aligned,
        not numeric, or another codec chain. Each file goes through a temporary name and
        ``os.replace`` like zarr's ``LocalStore``; the batches making up a chunk are
        copied once, straight into the page-aligned buffer the file is written from.
        """
        chunk = self.chunk
        tail = k % chunk  # only at a flush: the last chunk, padded with the fill value
        if start % chunk or any(p.dtype.kind not in "biuf" for p in parts):
            return False
        if tail and (sum(len(p) for p in parts) != k or self.metadata.fill_value != 0):
            return False
        if self._encoder is None:
            self._encoder = _chunk_encoder(self.metadata)
        encode = self._encoder
        if encode is False:
            return False
        parts = [np.ascontiguousarray(p, dtype=p.dtype.newbyteorder("<")) for p in parts]
        if tail:  # zarr stores an edge chunk whole: pad it as zarr would
            parts.append(np.zeros((chunk - tail, *parts[0].shape[1:]), dtype=parts[0].dtype))
        trailing_zeros = (0,) * (parts[0].ndim - 1)
        for i, pieces in enumerate(split_into_chunks(parts, chunk, -(-k // chunk))):
            key = self.metadata.encode_chunk_key((start // chunk + i, *trailing_zeros))
            path = self.directory / key
            if path.parent not in self._made_dirs:  # nested keys (stores made before ".")
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made_dirs.add(path.parent)
            if encode is RAW:
                self.files.write_parts(path, pieces)
            else:
                self.files.write(path, encode(pieces[0] if len(pieces) == 1 else np.concatenate(pieces)))
        return True


def _chunk_encoder(metadata: Any) -> Any:
    """``chunk -> bytes`` for the codec chains we can write directly (``RAW`` for no
    codec), else False."""
    from zarr.codecs import BytesCodec, ZstdCodec

    codecs = tuple(metadata.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec) or str(getattr(codecs[0].endian, "value", "little")) != "little":
        return False
    if len(codecs) == 1:
        return RAW
    if len(codecs) == 2 and isinstance(codecs[1], ZstdCodec):
        from numcodecs import Zstd

        zstd = Zstd(level=codecs[1].level, checksum=codecs[1].checksum)
        return lambda chunk: zstd.encode(chunk)
    return False
