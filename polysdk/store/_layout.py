"""On-disk layout of an activation store: codecs, input conversion, the commit record.

The commit record is the root ``zarr.json`` holding *consolidated metadata*. Plain
xarray (``open_zarr(path, group=site)``, ``open_datatree``) takes every array's shape
from it, so writing it last -- atomically, with a temp file and ``os.replace`` -- makes
the chunks written before it visible all at once, and nothing written after it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polysdk.errors import ConfigError, StoreError

#: Default codec: zstd level 1 (chosen by ``benchmarks/store_codecs.py``, see
#: docs/benchmarks/store.md) for each site whose first batch it shrinks by at least
#: ``AUTO_MIN_SAVING`` and where compressing is faster than writing the bytes it saves;
#: no compression otherwise (see :func:`choose_compressors`).
DEFAULT_CODEC = "auto"
AUTO_CODEC = "zstd:1"
#: the least saving worth compressing for (ZFS's rule for its compressed blocks: 1/8)
AUTO_MIN_SAVING = 1 / 8
AUTO_SAMPLE_BYTES = 1 << 20
#: Target bytes of one chunk when ``chunk_samples`` is None (chosen per site).
TARGET_CHUNK_BYTES = 8 * 2**20
MAX_AUTO_CHUNK_SAMPLES = 4096
RESULTS = "results"
STAGING = ".staging"  # hidden: never part of the commit record
ROOT_META = "zarr.json"


# ----------------------------------------------------------------------------- arrays
@dataclass(frozen=True)
class ArraySpec:
    """How to create one array of a site group (shape along sample starts at 0)."""

    dims: tuple[str, ...]
    trailing: tuple[int, ...]
    dtype: str  # numpy dtype name, or "string"
    chunk_samples: int
    compressors: Any = None
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CodecChoice:
    """Compressors the writer picks from a site's first batch (``codec="auto"``).

    ``choose(first_batch) -> (compressors, note)``. Deferred to the writer thread so
    that sampling zstd and measuring the disk never hold up the model's thread.
    """

    choose: Callable[[np.ndarray], tuple[Any, str]]


# ----------------------------------------------------------------------------- codecs
def make_compressors(codec: Any) -> tuple[Any, ...] | None:
    """Turn a codec spec into zarr ``compressors``.

    Accepted: ``None``/``"none"`` (raw), ``"auto"`` (see :func:`choose_compressors`;
    here: ``AUTO_CODEC``), ``"zstd"``/``"zstd:LEVEL"``,
    ``"blosc-lz4"``/``"blosc-lz4:LEVEL"``, ``"blosc-zstd:LEVEL"``, ``"gzip:LEVEL"``, or
    zarr codec objects (one or a list), passed through unchanged.
    """
    import zarr.codecs as zc

    if codec is None:
        return None
    if is_auto(codec):
        return make_compressors(AUTO_CODEC)  # coordinates; activations: choose_compressors
    if not isinstance(codec, str):
        return tuple(codec) if isinstance(codec, (list, tuple)) else (codec,)
    m = re.fullmatch(r"([a-z0-9-]+)(?::(-?\d+))?", codec.strip().lower())
    name, level = (m.group(1), m.group(2)) if m else (codec, None)
    lvl = None if level is None else int(level)
    if name in ("none", "raw"):
        return None
    try:
        if name == "zstd":
            return (zc.ZstdCodec(level=1 if lvl is None else lvl),)
        if name.startswith("blosc-") and name[6:] in ("lz4", "lz4hc", "zstd", "zlib", "blosclz"):
            return (zc.BloscCodec(cname=name[6:], clevel=5 if lvl is None else lvl, shuffle="shuffle"),)
        if name == "gzip":
            return (zc.GzipCodec(level=5 if lvl is None else lvl),)
    except (ValueError, TypeError) as err:  # e.g. a level out of range
        raise ConfigError(f"codec {codec!r}: {err}; e.g. 'zstd:1' or 'gzip:5'") from err
    raise ConfigError(
        f"unknown codec {codec!r}; use None/'none', 'zstd[:level]', 'blosc-lz4[:level]', "
        "'blosc-zstd[:level]', 'gzip[:level]' or a zarr codec object"
    )


def is_auto(codec: Any) -> bool:
    return isinstance(codec, str) and codec.strip().lower() == "auto"


def choose_compressors(
    codec: Any,
    first_batch: np.ndarray,
    disk_mb_per_s: Callable[[], float] | None = None,
) -> tuple[tuple[Any, ...] | None, str]:
    """Compressors for one site's activations, and a note saying what was chosen.

    ``codec="auto"`` compresses up to ``AUTO_SAMPLE_BYTES`` of the site's first batch
    with ``AUTO_CODEC`` and keeps the codec only where

    * it saves at least ``AUTO_MIN_SAVING`` of the bytes: dense activations (residual
      streams, SoLU / GELU outputs: ~10 % saving) are stored raw; and
    * compressing is faster than writing what it saves, ``speed x saving > disk``
      (per raw MB, zstd costs ``1/speed`` and saves ``saving/disk`` of writing), with
      ``disk_mb_per_s()`` measured once per filesystem: on a fast local disk even
      post-ReLU activations (saving ~50 % at ~400 MB/s) are faster raw, while a slow or
      network disk gets them compressed. Without ``disk_mb_per_s``, or where it
      raises ``OSError``, only the first rule applies.

    Any other spec is used as given.
    """
    if not is_auto(codec):
        return make_compressors(codec), codec_label(codec)
    from numcodecs import Zstd

    raw = np.ascontiguousarray(first_batch).view(np.uint8).reshape(-1)[:AUTO_SAMPLE_BYTES]
    if raw.size == 0:
        return make_compressors(AUTO_CODEC), f"auto: {AUTO_CODEC} (empty first batch)"
    zstd = Zstd(level=1)
    saving = 1.0 - len(zstd.encode(raw)) / raw.size  # (also warms the codec up)
    if saving < AUTO_MIN_SAVING:
        return None, f"auto: none (zstd saved only {saving:.0%} of the first batch)"
    if disk_mb_per_s is not None:
        repeats = min(64, -(-AUTO_SAMPLE_BYTES // raw.size))  # ~1 MiB, few calls for tiny batches
        started = time.perf_counter()
        for _ in range(repeats):
            zstd.encode(raw)
        speed = repeats * raw.size / 2**20 / max(time.perf_counter() - started, 1e-9)
        try:
            disk = disk_mb_per_s()
        except OSError as err:  # e.g. no room for the 16 MiB probe: keep the saving
            return make_compressors(AUTO_CODEC), (
                f"auto: {AUTO_CODEC} (first batch {saving:.0%} smaller; the disk's speed "
                f"could not be measured: {err})"
            )
        if speed * saving <= disk:
            return None, (
                f"auto: none (zstd would save {saving:.0%} at {speed:.0f} MB/s, but the disk "
                f"writes {disk:.0f} MB/s: raw is faster; pass codec='zstd:1' to save space)"
            )
        return make_compressors(AUTO_CODEC), (
            f"auto: {AUTO_CODEC} (first batch {saving:.0%} smaller at {speed:.0f} MB/s; "
            f"the disk writes {disk:.0f} MB/s)"
        )
    return make_compressors(AUTO_CODEC), f"auto: {AUTO_CODEC} (first batch {saving:.0%} smaller)"


def codec_label(codec: Any) -> str:
    """A JSON-friendly description of a codec spec (for the store's attrs)."""
    return "none" if codec is None else codec if isinstance(codec, str) else repr(codec)


# ----------------------------------------------------------------------------- inputs
def to_numpy(x: Any, copy: bool = True) -> tuple[np.ndarray, str | None]:
    """Return a numpy version of ``x`` and the source dtype name if it was changed.

    With ``copy=True`` the array is an owned copy (the caller may reuse ``x``); with
    ``copy=False`` it shares ``x``'s memory where it can (the caller hands ``x`` over).

    torch is never imported here: tensors are recognised by their type's module, so a
    process that has no torch loaded pays nothing. ``bfloat16`` has no numpy dtype and
    is stored as ``float32`` (a lossless upcast); the returned name records that.
    """
    mod = type(x).__module__
    if mod.startswith("torch") and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if isinstance(x, torch.Tensor):
            t = x.detach()
            source = None
            if t.dtype == torch.bfloat16:
                t, source = t.to(torch.float32), "bfloat16"
            on_cpu = t.device.type == "cpu" and source is None
            arr = t.cpu().numpy()
            return (arr.copy() if on_cpu and copy else arr), source
    arr = np.asarray(x)
    if arr.dtype == object:
        arr = arr.astype(str)
    return (np.array(arr, copy=True) if copy else arr), None


def auto_chunk_samples(sample_shape: tuple[int, ...], itemsize: int) -> int:
    """Samples per chunk so that one chunk holds about ``TARGET_CHUNK_BYTES``."""
    per_sample = max(1, int(np.prod(sample_shape, dtype=np.int64)) * itemsize)
    return int(max(1, min(MAX_AUTO_CHUNK_SAMPLES, TARGET_CHUNK_BYTES // per_sample)))


def check_name(name: str, what: str) -> str:
    """Validate a site or result name usable as a Zarr group path."""
    parts = name.split("/") if isinstance(name, str) else [""]
    bad = (
        not isinstance(name, str)
        or not name
        or any(p in ("", ".", "..") or p.startswith(".") or p == ROOT_META for p in parts)
    )
    if what == "site" and not bad and ("/" in name or name == RESULTS):
        bad = True
    if bad:
        raise StoreError(
            f"invalid {what} name {name!r}: use non-empty parts without a leading '.'"
            + (", without '/' and not 'results'" if what == "site" else " separated by '/'")
        )
    return name


# ----------------------------------------------------------------------------- commit record
def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (Path, tuple, set)):
        return str(x) if isinstance(x, Path) else list(x)
    raise TypeError(f"{type(x).__name__} value {x!r} is not JSON serialisable")


def to_json(doc: Mapping[str, Any]) -> str:
    """JSON text of ``doc`` (numpy scalars/arrays allowed); StoreError if impossible."""
    try:
        return json.dumps(doc, default=_json_default)  # no indent: the C encoder, ~4x faster
    except (TypeError, ValueError) as err:
        raise StoreError(f"store attributes must be JSON serialisable: {err}; "
                         "store numbers, strings, lists or dicts") from err


def atomic_write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` to ``path`` so that readers see the old or the new file, never half."""
    atomic_write_bytes(path, to_json(doc).encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` as the file ``path`` through a temporary name and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _node_entries(root: Path, rel: str) -> Iterable[tuple[str, dict[str, Any]]]:
    """Yield (path, metadata) of the node at ``rel`` and every node below it."""
    meta_file = root / rel / ROOT_META
    if not meta_file.exists():
        return
    meta = read_json(meta_file)
    meta.pop("consolidated_metadata", None)
    if meta.get("node_type") == "group":
        meta["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": {}}
    yield rel, meta
    if meta.get("node_type") != "group":
        return
    for child in sorted(os.listdir(root / rel)):
        if not child.startswith(".") and (root / rel / child).is_dir():
            yield from _node_entries(root, f"{rel}/{child}")


def write_commit_record(
    root: Path,
    attrs: Mapping[str, Any],
    sites: Iterable[str],
    n_samples: int,
    exclude_results: Iterable[str] = (),
) -> None:
    """Atomically write the root metadata consolidating the committed state.

    Every array of a site group gets ``shape[0] = n_samples`` whatever its own
    ``zarr.json`` says (it may already be larger: chunks beyond are not committed).
    Groups under ``results/`` are listed except ``exclude_results`` (and their insides).
    A remote root (``_remote.RemotePath``) is written by ``_remote.write_commit_record``.
    """
    if not isinstance(root, Path):
        from polysdk.store import _remote

        return _remote.write_commit_record(root, dict(attrs), sites, n_samples, exclude_results)
    metadata: dict[str, Any] = {}
    for site in sites:
        for path, meta in _node_entries(root, site):
            if meta.get("node_type") == "array":
                meta["shape"] = [int(n_samples), *meta["shape"][1:]]
            metadata[path] = meta
    excluded = {f"{RESULTS}/{r}" for r in exclude_results}
    for path, meta in _node_entries(root, RESULTS):
        if not any(path == e or path.startswith(e + "/") for e in excluded):
            metadata[path] = meta
    doc = {
        "attributes": dict(attrs),
        "zarr_format": 3,
        "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": metadata},
        "node_type": "group",
    }
    atomic_write_json(root / ROOT_META, doc)


def read_commit_record(root: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Return (root attrs, consolidated metadata by path), or None if never committed."""
    if not isinstance(root, Path):
        from polysdk.store import _remote

        return _remote.read_commit_record(root)
    doc = read_json(root / ROOT_META)
    cons = doc.get("consolidated_metadata")
    if not isinstance(cons, dict):
        return None
    return doc.get("attributes", {}), cons.get("metadata", {})


def result_names(metadata: Mapping[str, Any]) -> list[str]:
    """Names of committed results (groups marked by ``write_result``)."""
    prefix = RESULTS + "/"
    return sorted(
        p[len(prefix):]
        for p, m in metadata.items()
        if p.startswith(prefix)
        and m.get("node_type") == "group"
        and "polysdk_result" in m.get("attributes", {})
    )
