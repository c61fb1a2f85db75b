"""Layer 2: the activation store, the only place in polysdk that knows Zarr.

    from polysdk.store import ActivationStore
    with ActivationStore("acts.zarr", mode="w", attrs={"model": "mlp"}) as store:
        store.append({"fc1": acts}, dims={"fc1": ("sample", "unit")}, coords={"label": y})
    ActivationStore("acts.zarr")["fc1"]          # lazy xr.DataArray, plain xarray underneath

On disk (Zarr v3, readable with ``xarray.open_zarr(path, group=site)`` and
``xarray.open_datatree(path, engine="zarr")``):

* one group per site, named verbatim (``features.6``), holding ``activation`` (dims
  ``sample`` first), the index coordinate ``sample`` (global sample number) and the
  per-sample coordinates of ``append(coords=...)`` (numeric or strings, 1-D or with
  extra dims such as ``(sample, position)`` tokens);
* derived results under ``results/<name>`` (``write_result``);
* the root ``zarr.json``: root attributes (config, versions, ``n_samples``) and the
  consolidated metadata of every committed node. It is the **commit record**.

Commit protocol. The writer grows the arrays, writes whole chunks (zarr replaces each
chunk file atomically), and only then rewrites the root ``zarr.json`` with a temp file
and ``os.replace``; the record states ``shape[0] = n_samples`` for every site array,
always a batch boundary. xarray takes shapes from consolidated metadata, so a reader
-- even one opening the store right after a SIGKILL, before any repair -- sees whole
batches only. ``mode="a"`` truncates whatever lies beyond the record and resumes
there. No ``fsync`` is done: a killed process is covered, a power cut is not.

Types. torch tensors are accepted (detached, copied to the host; torch is never
imported by this package). ``bfloat16`` has no numpy dtype and is stored as
``float32`` (exact), the site's ``activation`` carrying ``source_dtype='bfloat16'``;
``float16`` is stored as ``float16``.

One appender at a time per store; readers may be many. On a local store several
processes may write results (``write_result``) meanwhile: commits hold an ``flock``.

Object storage: ``ActivationStore("s3://bucket/run.zarr", storage_options={...})``
(any fsspec URL) writes through zarr's ``FsspecStore`` with the same commit record,
written last in one PUT (see ``_remote``); one writer per remote store.
"""

from polysdk.store._layout import DEFAULT_CODEC
from polysdk.store._store import ActivationStore

__all__ = ["ActivationStore", "DEFAULT_CODEC"]
