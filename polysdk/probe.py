"""Probe: record activations at sites, into an ActivationStore or into memory.

::

    from polysdk import ActivationStore, Probe

    with ActivationStore("acts.zarr", mode="w") as store:
        Probe(cnn, ["features.6", "features.8"], store=store, reduce="mean").run(loader)
    store["features.6"]                  # lazy DataArray (sample, unit) with a `label` coord

    acts = Probe(mlp, "*.1").run([(x, y)])      # no store: {site: xr.DataArray} in memory

Dimension names say what they are: ``sample``; ``unit`` for the neuron / channel axis;
``position`` for sequence positions; ``y``/``x`` for spatial positions. The layout is
inferred from each captured tensor (2-D ``(sample, unit)``; 3-D ``(sample, position,
unit)``, as transformers and ``batch_first`` RNNs return; 4-D ``(sample, unit, y, x)``,
as convolutions return) or given per site with ``dims=``.

Reductions (``reduce=``) run where the activations are (on the GPU for a CUDA model)
before the copy to the host: ``"none"``, ``"mean"`` or ``"max"`` over positions (or
``y``/``x``), ``"center"`` (the centre spatial position, as seed 000 ranks units), a
``(y, x)`` tuple, or one int / a list of ints choosing sequence positions (``-1`` is
the last token).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from polysdk.errors import ConfigError, SiteError
from polysdk.sites import HookedComponent, SiteSpec, default_dims, unwrap_model

__all__ = ["Probe"]

Reduce = str | int | tuple[int, int] | Sequence[int]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_COORD_KEYS = ("label", "labels", "id", "ids")


class Probe(HookedComponent):
    """Record activations at one or more sites of any ``nn.Module``.

    Parameters
    ----------
    model:
        Any module (torchvision, Hugging Face, TransformerLens 4 bridge, nnsight).
    sites:
        Names, glob patterns or module objects (see :mod:`polysdk.sites`).
    store:
        An :class:`~polysdk.store.ActivationStore` to stream into; ``None`` keeps the
        activations in memory and :meth:`run` returns ``{site: DataArray}``.
    reduce:
        ``"none"``, ``"mean"``, ``"max"``, ``"center"``, ``(y, x)``, or sequence
        position(s). See the module docstring.
    dtype:
        ``"float32"`` (default), ``"float16"`` or ``"bfloat16"``.
    dims:
        Optional ``{site: dims}`` overriding the inferred layout (first dim ``sample``).
    capture, key:
        Record a module's ``"output"`` (default) or ``"input"``; ``key`` picks the
        tensor out of tuple / dict / dataclass values (default: the first tensor).

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    >>> acts = Probe(net, "1").run([(torch.ones(2, 3), torch.tensor([0, 1]))])
    >>> acts["1"].dims, acts["1"].label.values.tolist()
    (('sample', 'unit'), [0, 1])
    """

    def __init__(
        self,
        model: Any,
        sites: SiteSpec | Sequence[SiteSpec],
        store: Any | None = None,
        *,
        reduce: Reduce = "none",
        dtype: str = "float32",
        dims: Mapping[str, Sequence[str]] | None = None,
        capture: str = "output",
        key: int | str | None = None,
    ) -> None:
        super().__init__(model, sites, capture=capture, key=key)  # type: ignore[arg-type]
        if dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if isinstance(reduce, str) and reduce not in ("none", "mean", "max", "center"):
            raise ConfigError(
                f"reduce must be 'none', 'mean', 'max', 'center', a (y, x) tuple or "
                f"sequence positions, got {reduce!r}"
            )
        self.store = store
        self.reduce = reduce
        self.dtype = dtype
        self.dims = {k: tuple(v) for k, v in (dims or {}).items()}
        unknown = set(self.dims) - set(self.site_names)
        if unknown:
            raise ConfigError(f"dims= names sites that are not probed: {sorted(unknown)}")
        self._captured: dict[str, list[torch.Tensor]] = {name: [] for name in self.site_names}
        self._site_dims: dict[str, tuple[str, ...]] = {}
        self._positions: np.ndarray | None = None

    # ------------------------------------------------------------------ capture

    def hook(self, site: str, tensor: torch.Tensor) -> None:
        value, dims = self._reduce(site, tensor.detach())
        value = value.to(_DTYPES[self.dtype])
        if value.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr():
            # a view of the live tensor: an in-place op later (AlexNet's ReLU(inplace=True))
            # would change what we recorded
            value = value.clone()
        if value.is_cuda:  # copy to pinned host memory without blocking the stream
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            host.copy_(value, non_blocking=True)
            value = host
        self._site_dims[site] = dims
        self._captured[site].append(value)
        return None

    def _reduce(self, site: str, tensor: torch.Tensor) -> tuple[torch.Tensor, tuple[str, ...]]:
        dims = self.dims.get(site) or default_dims(tensor.ndim)
        if len(dims) != tensor.ndim or dims[0] != "sample":
            raise SiteError(
                f"site {site!r} gives a tensor of shape {tuple(tensor.shape)}, which does not "
                f"fit dims {dims}; pass dims={{{site!r}: (...)}} with 'sample' first"
            )
        spatial = [d for d in ("y", "x") if d in dims]
        seq = ["position"] if "position" in dims else []
        reduce = self.reduce
        if reduce == "none":
            return tensor, dims
        if reduce in ("mean", "max"):
            over = spatial or seq
            if not over:
                return tensor, dims
            axes = tuple(dims.index(d) for d in over)
            out = tensor.float().mean(axes) if reduce == "mean" else tensor.float().amax(axes)
            return out, tuple(d for d in dims if d not in over)
        if spatial and (reduce == "center" or (isinstance(reduce, tuple) and len(reduce) == 2)):
            h, w = tensor.shape[dims.index("y")], tensor.shape[dims.index("x")]
            y, x = (h // 2, w // 2) if reduce == "center" else reduce  # type: ignore[misc]
            index = [slice(None)] * tensor.ndim
            index[dims.index("y")], index[dims.index("x")] = y, x
            return tensor[tuple(index)], tuple(d for d in dims if d not in ("y", "x"))
        if seq and not isinstance(reduce, str):
            axis = dims.index("position")
            if isinstance(reduce, int):
                return tensor.select(axis, reduce), tuple(d for d in dims if d != "position")
            positions = list(reduce)  # type: ignore[arg-type]
            self._positions = np.asarray(
                [p % tensor.shape[axis] for p in positions], dtype=np.int64
            )
            return tensor.index_select(axis, torch.as_tensor(positions, device=tensor.device) % tensor.shape[axis]), dims
        raise SiteError(
            f"reduce={reduce!r} does not apply to site {site!r} with dims {dims}; use "
            f"'mean'/'max'/'none', 'center' or (y, x) for conv maps, positions for sequences"
        )

    def take(self) -> dict[str, torch.Tensor]:
        """Return and clear what the hooks captured since the last call (one tensor per site)."""
        out: dict[str, torch.Tensor] = {}
        for site, parts in self._captured.items():
            if not parts:
                raise SiteError(
                    f"site {site!r} captured nothing in the last forward pass; check that "
                    f"the model actually runs through it"
                )
            out[site] = parts[0] if len(parts) == 1 else torch.cat(parts)
            parts.clear()
        if any(t.is_pinned() for t in out.values()):
            torch.cuda.current_stream().synchronize()
        return out

    # ------------------------------------------------------------------ running

    def run(
        self,
        data: Iterable[Any],
        *,
        forward: Callable[[Any, Any], Any] | None = None,
        coords: Callable[[Any], Mapping[str, Any]] | None = None,
        grad: bool = False,
        progress: bool = True,
        total: int | None = None,
    ) -> dict[str, xr.DataArray] | Any:
        """Run ``model`` over ``data`` and record every batch.

        ``data`` yields batches: a tensor (the input), a tuple ``(x, label, ...)`` or a
        mapping of model keyword arguments (``label``/``labels``/``id``/``ids`` keys are
        recorded as coordinates, not passed on). ``forward(model, batch)`` and
        ``coords(batch) -> {name: per-sample values}`` override those defaults.

        With a store: resumes after the store's committed samples (whole batches are
        skipped; a partly committed batch is cut), writes through the store's
        background writer and returns the store. Without one: returns
        ``{site: DataArray}``.
        """
        from tqdm.auto import tqdm

        skip = int(self.store.n_samples) if self.store is not None else 0
        seen = 0
        kept: dict[str, list[xr.DataArray]] = {name: [] for name in self.site_names}
        batches = tqdm(data, total=total, desc="probe", unit="batch", disable=not progress)
        with self, torch.set_grad_enabled(grad):
            for batch in batches:
                size = _batch_size(batch)
                if seen + size <= skip:
                    seen += size
                    continue
                (forward or _default_forward)(self.model, batch)
                acts = self.take()
                sample_coords = {k: _to_numpy(v) for k, v in (coords or _default_coords)(batch).items()}
                tokens = _token_ids(batch)
                if tokens is not None:
                    sample_coords.setdefault("token", tokens)
                start = max(skip - seen, 0)
                if start:
                    acts = {k: v[start:] for k, v in acts.items()}
                    sample_coords = {k: v[start:] for k, v in sample_coords.items()}
                seen += size
                if self.store is not None:
                    self.store.append(
                        acts,
                        dims={site: self._site_dims[site] for site in acts},
                        coords=sample_coords or None,
                        copy=False,  # the hooks' tensors are fresh copies, never reused
                    )
                else:
                    for site, value in acts.items():
                        kept[site].append(self._to_dataarray(site, value, sample_coords))
        if self.store is not None:
            self.store.flush()
            return self.store
        return {
            site: _concat_samples(parts, site) for site, parts in kept.items()
        }

    def _to_dataarray(
        self, site: str, value: torch.Tensor, sample_coords: Mapping[str, np.ndarray]
    ) -> xr.DataArray:
        dims = self._site_dims[site]
        array = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
        coords: dict[str, Any] = {}
        for name, values in sample_coords.items():
            extra = ("position",) if values.ndim == 2 else ()
            if values.ndim == 2 and "position" in dims and values.shape[1] != array.shape[dims.index("position")]:
                continue
            coords[name] = (("sample",) + extra)[: values.ndim], values
        if "position" in dims and self._positions is not None:
            coords["position"] = self._positions
        return xr.DataArray(array, dims=dims, coords=coords, name="activation")

    def __repr__(self) -> str:
        store = "memory" if self.store is None else type(self.store).__name__
        return f"Probe({self.site_names}, reduce={self.reduce!r}, dtype={self.dtype!r}, into={store})"


def _concat_samples(parts: list[xr.DataArray], site: str) -> xr.DataArray:
    if not parts:
        raise SiteError(f"no batch was recorded for site {site!r}: the data was empty")
    out = xr.concat(parts, dim="sample") if len(parts) > 1 else parts[0]
    return out.assign_coords(sample=np.arange(out.sizes["sample"]))


def _to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        first = next(v for v in batch.values() if hasattr(v, "__len__"))
        return len(first)
    if isinstance(batch, (tuple, list)):
        return _batch_size(batch[0])
    raise SiteError(f"cannot tell the batch size of a {type(batch).__name__}; pass forward=")


def _default_forward(model: Any, batch: Any) -> Any:
    module = unwrap_model(model)
    if isinstance(batch, torch.Tensor):
        return module(batch)
    if isinstance(batch, Mapping):
        return module(**{k: v for k, v in batch.items() if k not in _COORD_KEYS})
    if isinstance(batch, (tuple, list)):
        return module(batch[0])
    raise SiteError(f"cannot feed a batch of type {type(batch).__name__} to the model; pass forward=")


def _default_coords(batch: Any) -> dict[str, Any]:
    if isinstance(batch, Mapping):
        return {k.rstrip("s") if k in ("labels", "ids") else k: v for k, v in batch.items() if k in _COORD_KEYS}
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return {"label": batch[1]}
    return {}


def _token_ids(batch: Any) -> np.ndarray | None:
    x = batch.get("input_ids") if isinstance(batch, Mapping) else batch[0] if isinstance(batch, (tuple, list)) else batch
    if isinstance(x, torch.Tensor) and x.ndim == 2 and not x.is_floating_point():
        return x.detach().cpu().numpy()
    return None
