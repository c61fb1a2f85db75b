"""Stores on object storage: any fsspec URL (``s3://bucket/run.zarr``, ``gs://``, ``memory://``).

The layout and the commit protocol are the local ones; only the I/O differs. There is
no rename and no ``O_DIRECT`` on an object store, so every array is created, grown and
written through zarr's own API on a ``zarr.storage.FsspecStore`` (the local writer's
fallback path), and the commit record -- the root ``zarr.json`` with the consolidated
metadata -- is written last with one PUT. Object stores replace an object atomically
(a reader gets the old or the new object, never part of one) and S3 reads after writes
consistently, so a reader sees whole batches only, as on a local disk.

What takes the place of the local renames:

* results are written in place under ``results/<name>`` while the commit record
  leaves them out (``CommitLog.hidden``), then committed; a replaced result is first
  dropped from the record. ``mode="a"`` deletes result groups the record does not
  list (a killed ``write_result``'s leftovers) and, as locally, site groups whose first
  batch never committed and every array's rows past the record.
* one writer per store: there is no lock on an object store. Each commit record
  carries a token (``polysdk_commit``); a commit that finds another token in the
  stored record than the one it last wrote raises ``StoreError`` (another process
  committed in between: a best-effort check, not a lock).

``RemotePath`` is the store's ``path``: ``str()`` gives its URL, ``/`` a node below it.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from polysdk.errors import StoreError
from polysdk.store import _layout as L

#: root attribute naming the last commit record's writer (one writer per remote store)
TOKEN = "polysdk_commit"


def is_url(path: Any) -> bool:
    return "://" in str(path)


def local_path_of(url: str) -> str | None:
    """The local path a ``file://`` URL names (such stores use the local writer)."""
    text = str(url)
    return text[len("file://"):] if text.startswith("file://") else None


class RemoteRoot:
    """A store's root on an fsspec filesystem, with the filesystem and zarr store on it."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        self.url = str(url).rstrip("/")
        self.storage_options = dict(storage_options or {})
        # listings are re-read every time: another process (a resume) changes them
        self._fs_options = {"use_listings_cache": False, **self.storage_options}
        try:
            self.fs, self.key = fsspec.url_to_fs(self.url, **self._fs_options)
        except (ImportError, ValueError) as err:
            raise StoreError(f"cannot open {self.url!r} with fsspec: {err}") from err
        self.key = self.key.rstrip("/")
        self._base_store: Any = None
        self.site_meta: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # cached per site
        self.token: str | None = None  # of the last record this process read or wrote

    def zarr_store(self, rel: str = "", read_only: bool = False) -> Any:
        """A ``zarr.storage.FsspecStore`` rooted at the node ``rel`` (the root: ``""``)."""
        from zarr.storage import FsspecStore

        if self._base_store is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._base_store = FsspecStore.from_url(self.url, storage_options=self._fs_options)
        base = self._base_store
        path = base.path.rstrip("/") + (f"/{rel}" if rel else "")
        return FsspecStore(fs=base.fs, path=path, read_only=read_only)


@dataclass(frozen=True, eq=False)
class RemotePath:
    """A node of a remote store (``rel`` from its root); ``str()`` is its URL."""

    root: RemoteRoot
    rel: str = ""

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(self.root, f"{self.rel}/{name}" if self.rel else str(name))

    def __str__(self) -> str:
        return self.root.url + (f"/{self.rel}" if self.rel else "")

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))

    def joinpath(self, *names: str) -> RemotePath:
        node = self
        for name in names:
            node = node / name
        return node

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1] if self.rel else self.root.url.rsplit("/", 1)[-1]

    @property
    def key(self) -> str:
        return self.root.key + (f"/{self.rel}" if self.rel else "")

    # --------------------------------------------------------------- objects
    def exists(self) -> bool:
        return bool(self.root.fs.exists(self.key))

    def read_json(self) -> dict[str, Any] | None:
        """The JSON object at this key, or None where there is none."""
        try:
            return json.loads(self.root.fs.cat_file(self.key))
        except FileNotFoundError:
            return None

    def write_json(self, doc: Mapping[str, Any]) -> None:
        """One PUT: readers get the old object or the new one."""
        self.root.fs.pipe_file(self.key, L.to_json(doc).encode("utf-8"))

    def children(self) -> list[str]:
        """Names of the 'folders' directly below (key prefixes), sorted."""
        try:
            entries = self.root.fs.ls(self.key, detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries
                      if e.get("type") == "directory")

    def has_objects(self) -> bool:
        try:
            return bool(self.root.fs.ls(self.key, detail=False))
        except FileNotFoundError:
            return False

    def remove(self) -> None:
        """Delete every object under this node (nothing to do where there is none)."""
        fs = self.root.fs
        try:
            keys = fs.find(self.key)
        except FileNotFoundError:
            return
        if keys:
            fs.rm(keys)


# ----------------------------------------------------------------------------- the record
def _node_entries(node: RemotePath) -> Iterable[tuple[str, dict[str, Any]]]:
    """(path, metadata) of ``node`` and every node below it (as ``_layout``'s local walk)."""
    meta = (node / L.ROOT_META).read_json()
    if meta is None:
        return
    meta.pop("consolidated_metadata", None)
    if meta.get("node_type") == "group":
        meta["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": {}}
    yield node.rel, meta
    if meta.get("node_type") != "group":
        return
    for child in node.children():
        if not child.startswith("."):
            yield from _node_entries(node / child)


def write_commit_record(root: RemotePath, attrs: dict[str, Any], sites: Iterable[str],
                        n_samples: int, exclude_results: Iterable[str] = ()) -> None:
    """``_layout.write_commit_record`` for a remote store: one PUT of the root document.

    A site's node metadata is read once and cached (only ``shape[0]`` changes, and the
    record sets it); results are listed at every commit.
    """
    r = root.root
    stored = (root / L.ROOT_META).read_json()
    stored_token = (stored or {}).get("attributes", {}).get(TOKEN)
    if stored_token != r.token and stored is not None and "polysdk" in stored.get("attributes", {}):
        raise StoreError(
            f"another process committed to {str(root)!r} since this one last did (commit "
            f"{stored_token!r}, expected {r.token!r}); a store on object storage takes one "
            "writer at a time (appends and write_result alike). Reopen it with mode='a'"
        )
    metadata: dict[str, Any] = {}
    for site in sites:
        if site not in r.site_meta:
            r.site_meta[site] = list(_node_entries(root / site))
        for path, meta in r.site_meta[site]:
            meta = dict(meta)
            if meta.get("node_type") == "array":
                meta["shape"] = [int(n_samples), *meta["shape"][1:]]
            metadata[path] = meta
    excluded = {f"{L.RESULTS}/{x}" for x in exclude_results}
    for path, meta in _node_entries(root / L.RESULTS):
        if not any(path == e or path.startswith(e + "/") for e in excluded):
            metadata[path] = meta
    token = uuid.uuid4().hex
    doc = {
        "attributes": {**attrs, TOKEN: token},
        "zarr_format": 3,
        "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": metadata},
        "node_type": "group",
    }
    (root / L.ROOT_META).write_json(doc)
    r.token = token


def read_commit_record(root: RemotePath) -> tuple[dict[str, Any], dict[str, Any]] | None:
    doc = (root / L.ROOT_META).read_json()
    if doc is None:
        raise StoreError(f"no activation store at {str(root)!r}")
    cons = doc.get("consolidated_metadata")
    if not isinstance(cons, dict):
        return None
    return doc.get("attributes", {}), cons.get("metadata", {})
