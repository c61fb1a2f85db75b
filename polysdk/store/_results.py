"""Derived results stored beside the activations: ``results/<name>`` groups.

Each is written to a staging folder, renamed into place and then committed, so a
reader sees a result whole or not at all (see ``ActivationStore.write_result``).
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from polysdk.errors import StoreError, closest_names
from polysdk.store import _layout as L
from polysdk.store._commit import CommitLog
from polysdk.store._remote import RemotePath


def list_results(root: Path) -> list[str]:
    """Names of the committed results, sorted."""
    rec = L.read_commit_record(root)
    return L.result_names(rec[1]) if rec else []


def write_result(log: CommitLog, name: str, ds: Any, attrs: Mapping[str, Any] | None = None) -> None:
    """Stage ``ds`` as a Zarr group, swap it in under ``results/<name>``, commit."""
    import xarray as xr

    root = log.root
    existing = list_results(root)
    clash = [r for r in existing if r.startswith(name + "/") or name.startswith(r + "/")]
    if clash:
        raise StoreError(
            f"result name {name!r} nests with existing result {clash[0]!r}; choose a "
            "name that is not a prefix of another"
        )
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name or "value")
    out = ds.copy()
    for v in out.variables.values():
        v.encoding = {}
    out.attrs.update(attrs or {})
    out.attrs["polysdk_result"] = name
    if isinstance(root, RemotePath):
        _write_remote(log, name, out)
        return
    stage = root / L.STAGING / uuid.uuid4().hex
    stage.parent.mkdir(exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.to_zarr(stage, mode="w", consolidated=False, zarr_format=3)
    target = root / L.RESULTS / name
    with log.exclusive():  # other processes' commits wait (see CommitLog.exclusive)
        parts = name.split("/")
        for i in range(len(parts)):  # the groups above the result
            parent = root.joinpath(L.RESULTS, *parts[:i])
            parent.mkdir(exist_ok=True)
            if not (parent / L.ROOT_META).exists():
                group = {"attributes": {}, "zarr_format": 3, "node_type": "group"}
                L.atomic_write_json(parent / L.ROOT_META, group)
        old = None
        if target.exists():
            log.recommit(exclude=(name,))
            old = root / L.STAGING / (uuid.uuid4().hex + ".old")
            os.rename(target, old)
        os.rename(stage, target)
        log.recommit()
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_remote(log: CommitLog, name: str, out: Any) -> None:
    """On object storage (no rename): written in place while the commit record leaves it
    out, then committed. A replaced result leaves the record first, so a kill during
    the write leaves the old one or none (``mode="a"`` deletes the leftovers)."""
    root = log.root
    assert isinstance(root, RemotePath)
    with log.lock:
        if name in list_results(root):
            log.recommit(exclude=(name,))
        log.hidden.add(name)
    try:
        parts = name.split("/")
        group = {"attributes": {}, "zarr_format": 3, "node_type": "group"}
        for i in range(len(parts)):  # the groups above the result
            meta = root.joinpath(L.RESULTS, *parts[:i]) / L.ROOT_META
            if meta.read_json() is None:
                meta.write_json(group)
        target = root.joinpath(L.RESULTS, *parts)
        target.remove()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.to_zarr(root.root.zarr_store(target.rel), mode="w", consolidated=False,
                        zarr_format=3)
    finally:
        with log.lock:
            log.hidden.discard(name)
    log.recommit()


def read_result(root: Path, name: str) -> Any:
    """The result ``name`` loaded into memory (an ``xr.Dataset``)."""
    import xarray as xr

    names = list_results(root)
    if name not in names:
        raise StoreError(
            f"no result {name!r} in {str(root)!r}; closest: "
            f"{closest_names(name, names) or names}"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated.*")
        ds = xr.open_zarr(_zarr_location(root), group=f"{L.RESULTS}/{name}", consolidated=True).load()
    ds.attrs.pop("polysdk_result", None)
    return ds


def _zarr_location(root: Path | RemotePath) -> Any:
    """What xarray opens: the local folder, or an ``FsspecStore`` on a remote store."""
    return root.root.zarr_store(read_only=True) if isinstance(root, RemotePath) else root
