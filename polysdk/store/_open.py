"""Opening a store: create one, or load its commit record (and repair it for appending)."""

from __future__ import annotations

import datetime as _dt
import functools
import shutil
import warnings
from collections.abc import Mapping
from importlib import metadata as _md
from pathlib import Path
from typing import Any

from polysdk.errors import ConfigError, StoreError
from polysdk.store import _layout as L
from polysdk.store import _commit as C
from polysdk.store import _remote as REMOTE
from polysdk.store._commit import CommitLog
from polysdk.store._remote import RemotePath
from polysdk.store._schema import Schema

_VERSIONED = ("polysdk", "torch", "zarr", "xarray", "numpy")


@functools.lru_cache(maxsize=None)
def _version(pkg: str) -> str | None:
    try:
        return _md.version(pkg)
    except _md.PackageNotFoundError:
        return None


def exists(p: Path | RemotePath) -> bool:
    """Whether ``p`` holds a store or anything else (``mode="a"`` creates otherwise)."""
    if isinstance(p, RemotePath):
        return (p / L.ROOT_META).exists() or p.has_objects()
    return (p / L.ROOT_META).exists() or (p.exists() and (not p.is_dir() or any(p.iterdir())))


def create(p: Path, mode: str, attrs: Mapping[str, Any] | None, chunk_samples: int | None,
           codec: Any) -> CommitLog:
    """Create an empty store at ``p`` (``mode`` "w" replaces a store, "w-" refuses)."""
    if isinstance(p, RemotePath):
        _clear_remote(p, mode)
    elif p.exists():
        if mode == "w-":
            raise StoreError(
                f"store {str(p)!r} already exists (mode='w-'); use mode='a' to append "
                "or 'w' to replace it"
            )
        if p.is_dir() and (p / L.ROOT_META).exists():
            shutil.rmtree(p)
        elif not p.is_dir() or any(p.iterdir()):
            raise StoreError(
                f"{str(p)!r} exists and is not a Zarr store; refusing to overwrite it. "
                "Choose another path"
            )
    if not isinstance(p, RemotePath):
        p.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = dict(attrs or {})
    doc["polysdk"] = {
        "format": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "chunk_samples": chunk_samples,
        "codec": L.codec_label(codec),
        "model": doc.get("model"),
        "versions": {k: _version(k) for k in _VERSIONED},
        "bfloat16": "stored as float32; that activation has attr source_dtype='bfloat16'",
    }
    log = CommitLog(p, doc)
    if not isinstance(p, RemotePath):
        log.writers = C.Held(C.writers_lock(p)[0])
    try:
        log.commit(0, [])
    except BaseException as err:
        if log.writers is not None:
            log.writers.release()
        if not isinstance(err, FileNotFoundError) or not isinstance(p, RemotePath):
            raise
        raise StoreError(f"cannot create the store {str(p)!r}: {err}; does the bucket "
                         "exist?") from err
    return log


def _clear_remote(p: RemotePath, mode: str) -> None:
    """``create``'s checks on object storage: replace a store, never other objects."""
    if (p / L.ROOT_META).exists():
        if mode == "w-":
            raise StoreError(
                f"store {str(p)!r} already exists (mode='w-'); use mode='a' to append "
                "or 'w' to replace it"
            )
        p.remove()
    elif p.has_objects():
        raise StoreError(
            f"{str(p)!r} holds objects but is not a Zarr store; refusing to overwrite "
            "it. Choose another URL"
        )


def load(p: Path, mode: str, attrs: Mapping[str, Any] | None,
         chunk_samples: int | None) -> tuple[CommitLog, Schema]:
    """The committed state of the store at ``p``; with ``mode="a"`` also repaired."""
    remote = isinstance(p, RemotePath)
    if not (p / L.ROOT_META).exists():
        raise StoreError(
            f"no activation store at {str(p)!r} (mode={mode!r}); create one with "
            "mode='w'"
        )
    rec = L.read_commit_record(p)
    if rec is None:
        root_doc = (p / L.ROOT_META).read_json() if remote else L.read_json(p / L.ROOT_META)
        root_attrs = (root_doc or {}).get("attributes", {})
        if "polysdk" not in root_attrs:
            raise StoreError(
                f"{str(p)!r} is a Zarr group but not an activation store (no commit "
                "record); open it with zarr or xarray instead"
            )
        rec = (root_attrs, {})  # creation was interrupted: empty store
    doc, meta = dict(rec[0]), rec[1]
    if attrs:
        doc.update(attrs)
    schema = Schema.from_metadata(meta)
    _check_chunk_samples(p, schema, chunk_samples)
    if chunk_samples is not None and not schema.sites and mode != "r":
        # no site fixed yet: the first batch will use this value
        doc["polysdk"] = {**doc.get("polysdk", {}), "chunk_samples": chunk_samples}
    log = CommitLog(p, doc, int(doc.get("n_samples", 0)), list(schema.sites), stored_attrs=rec[0])
    if remote:
        p.root.token = rec[0].get(REMOTE.TOKEN)
    if mode == "a" and remote:
        _repair_remote(log, schema, meta)
    elif mode == "a":
        fd, alone = C.writers_lock(p)
        log.writers = C.Held(fd)
        if alone:  # no other writer: what the record does not hold is garbage
            try:
                _repair(log, schema)
                C.share_lock(fd)
            except BaseException:
                log.writers.release()  # never left held by a traceback
                raise
    return log, schema


def _check_chunk_samples(p: Path, schema: Schema, chunk_samples: int | None) -> None:
    """Reopening with another ``chunk_samples`` than the sites were written with is an
    error: their chunks are fixed."""
    if chunk_samples is None:
        return
    for site, info in schema.sites.items():
        if int(info["chunk"]) != chunk_samples:
            raise ConfigError(
                f"store {str(p)!r} was written with chunk_samples={info['chunk']} (site "
                f"{site!r}), but chunk_samples={chunk_samples} was given; a store's chunks "
                f"are fixed: reopen with chunk_samples={info['chunk']} or None, or write a "
                "new store (mode='w')"
            )


def _repair(log: CommitLog, schema: Schema) -> None:
    """Drop everything not in the commit record (an interrupted run's tail).

    Only while no other writer has the store open (``_commit.writers_lock``): another
    process's uncommitted rows and staged results are not garbage. Skipped otherwise,
    which is safe: rows past the record are overwritten by the next appends and never
    shown, staged leftovers are deleted by a later repair.
    """
    import zarr

    p, n = log.root, log.n
    shutil.rmtree(p / L.STAGING, ignore_errors=True)
    keep = {*schema.sites, L.RESULTS}
    for child in p.iterdir():
        if child.is_dir() and child.name not in keep and (child / L.ROOT_META).exists():
            shutil.rmtree(child)  # a site group whose first batch never committed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for site in schema.sites:
            g = zarr.open_group(store=str(p / site), mode="r+", use_consolidated=False)
            for _, arr in g.arrays():
                if arr.shape[0] != n:
                    arr.resize((n, *arr.shape[1:]))
    log.commit(n, list(schema.sites))


def _repair_remote(log: CommitLog, schema: Schema, meta: Mapping[str, Any] | None = None) -> None:
    """``_repair`` on object storage: also drops result groups the record does not list
    (results are written in place there, not renamed in)."""
    import zarr

    p, n = log.root, log.n
    assert isinstance(p, RemotePath)
    committed = dict(L.read_commit_record(p)[1] if meta is None else meta)
    for child in p.children():
        if child not in {*schema.sites, L.RESULTS} and (p / child / L.ROOT_META).exists():
            (p / child).remove()  # a site group whose first batch never committed
    _drop_uncommitted(p / L.RESULTS, committed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for site in schema.sites:
            g = zarr.open_group(store=p.root.zarr_store(site), mode="r+", use_consolidated=False)
            for _, arr in g.arrays():
                if arr.shape[0] != n:
                    arr.resize((n, *arr.shape[1:]))  # deletes the chunks past n
    log.commit(n, list(schema.sites))


def _drop_uncommitted(node: RemotePath, committed: Mapping[str, Any]) -> None:
    """Delete the nodes below ``results`` the record does not list (not inside arrays:
    their chunks are no nodes)."""
    if node.rel not in committed:
        node.remove()
        return
    if committed[node.rel].get("node_type") != "group":
        return
    for child in node.children():
        _drop_uncommitted(node / child, committed)
