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
    stage = root / L.STAGING / uuid.uuid4().hex
    stage.parent.mkdir(exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.to_zarr(stage, mode="w", consolidated=False, zarr_format=3)
    target = root / L.RESULTS / name
    with log.lock:
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
        ds = xr.open_zarr(root, group=f"{L.RESULTS}/{name}", consolidated=True).load()
    ds.attrs.pop("polysdk_result", None)
    return ds
