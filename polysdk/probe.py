"""Probe: record activations at sites, into an ActivationStore or into memory.

Two ways to use it, side by side::

    from polysdk import ActivationStore, Probe

    # 1. Probe runs the loop
    with ActivationStore("acts.zarr", mode="w") as store:
        Probe(cnn, ["features.6", "features.8"], store=store, reduce="mean").run(loader)

    # 2. your own loop (training, generate, an nnsight trace): every forward inside
    #    the block is recorded as one batch
    with Probe(bert, "encoder.layer.*.output", store=store, reduce="mean") as probe:
        for batch in loader:                   # dicts with input_ids / attention_mask
            probe.annotate(label=batch.pop("labels"))   # per-sample coords, optional
            bert(**batch)

Dimension names come from :mod:`polysdk.dims` (``sample``, ``unit``, ``position``,
``y``/``x``, or ``dims=`` per site). Reductions (``reduce=``) run where the
activations are (on the GPU for a CUDA model) before the copy to the host: ``"none"``,
``"mean"``, ``"max"``, ``"sum"``, ``"centre"``, a ``(y, x)`` tuple, or sequence
position(s) (``-1`` is the last token).

Padding is never a token. When a batch has an ``attention_mask`` (a dict batch's key,
the model's keyword argument in your own loop, ``run(mask=...)`` or
``annotate(mask=...)``), ``mean``/``max``/``sum`` skip padded positions, positions
count real tokens (``-1`` is each text's last real token, left or right padded), and
``reduce="none"`` stores the real tokens only: dims ``(token, unit)`` with ``sample``
(the text), ``position`` (index among its real tokens) and ``token_id`` coordinates,
so dynamically padded batches of any length go into one store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from polysdk import dims as D
from polysdk.batches import batch_size, default_coords, default_forward, fingerprint, model_inputs
from polysdk.errors import ConfigError, ResumeMismatchError, SiteError
from polysdk.component import Component
from polysdk.params import Options
from polysdk.sites import SiteSpec

__all__ = ["Probe"]

Reduce = str | int | tuple[int, ...] | Sequence[int]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MASK_KEY = "attention_mask"
_TOKEN_KEY = "input_ids"
_CONSTRAINTS = {"dtype": Options(*_DTYPES)}


class _Forward:
    """What one forward pass needs besides its activations (mask, token ids, coords)."""

    def __init__(self, mask: torch.Tensor | None, tokens: torch.Tensor | None,
                 coords: Mapping[str, Any], fingerprint: str | None) -> None:
        self.mask = mask
        self.tokens = tokens
        self.coords = dict(coords)
        self.fingerprint = fingerprint


class Probe(Component):
    """Record activations at one or more sites of any ``nn.Module``.

    Parameters
    ----------
    model:
        Any module (torchvision, Hugging Face, TransformerLens 4 bridge, nnsight).
    sites:
        Names, glob patterns or module objects (see :mod:`polysdk.sites`).
    store:
        An :class:`~polysdk.store.ActivationStore` to stream into; ``None`` keeps the
        activations in memory (:meth:`run` returns them; after a ``with`` block they
        are in :attr:`activations`).
    reduce:
        ``"none"``, ``"mean"``, ``"max"``, ``"sum"``, ``"centre"``, ``(y, x)``, or
        sequence position(s). See the module docstring; padding never counts.
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
    >>> acts = Probe(net, "1").run([(torch.ones(2, 3), torch.tensor([0, 1]))], progress=False)
    >>> acts["1"].dims, acts["1"].label.values.tolist()
    (('sample', 'unit'), [0, 1])
    >>> with Probe(net, "1") as probe:              # your own loop
    ...     probe.annotate(label=[5, 6])
    ...     _ = net(torch.ones(2, 3))
    >>> probe.activations["1"].label.values.tolist()
    [5, 6]
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
        self.store = store
        self.reduce = reduce
        self.dtype = dtype
        self.dims = dims
        self._validate_params()
        self.selection = D.Selection.parse(reduce, name="reduce")
        self._site_dims = {k: tuple(v) for k, v in (dims or {}).items()}
        unknown = set(self._site_dims) - set(self.site_names)
        if unknown:
            raise ConfigError(f"dims= names sites that are not probed: {sorted(unknown)}")
        self._captured: dict[str, list[tuple[torch.Tensor, tuple[str, ...], dict]]] = {
            name: [] for name in self.site_names}
        self._next: dict[str, Any] | None = None  # annotate() / run() for the next forward
        self._forward: _Forward | None = None
        self._records: list[dict[str, Any]] = []  # memory mode: one per recorded forward
        self._samples_seen = 0

    # ------------------------------------------------------------------ your own loop
    def annotate(self, mask: Any = None, **coords: Any) -> None:
        """Per-sample coordinates (``label=``, ``id=``, ``text=``...) and optionally the
        attention ``mask`` of the *next* forward pass; call it before the forward."""
        if self._next is not None:
            raise ConfigError(
                "annotate() was called twice with no forward pass in between; call it "
                "once before each forward of the model")
        self._next = {"mask": mask, "coords": coords, "fingerprint": None}

    @property
    def activations(self) -> dict[str, xr.DataArray]:
        """Memory mode: ``{site: DataArray}`` of every forward recorded and not taken."""
        if self.store is not None:
            raise ConfigError("this Probe writes to its store; read store[site] instead")
        records, self._records = self._records, []
        out = {site: _concat(site, [r[site] for r in records]) for site in self.site_names}
        self._records = records
        return out

    def take(self) -> dict[str, torch.Tensor]:
        """Return and forget the tensors of the forwards since the last call (one
        tensor per site, concatenated along the rows; memory mode only)."""
        if self.store is not None:
            raise ConfigError("take() reads a Probe without a store; this one writes each "
                              "forward to its store: read store[site]")
        if not self._records:
            raise SiteError("nothing was captured since the last take(); check that the "
                            "model actually ran (inside the with block)")
        records, self._records = self._records, []
        return {site: torch.cat([torch.as_tensor(r[site][0]) for r in records])
                for site in self.site_names}

    # ------------------------------------------------------------------ capture
    def _on_attach(self) -> None:
        self._hook_forward(self._before_forward, self._after_forward)
        if self.store is not None:
            self._samples_seen = int(self.store.next_sample)

    def _on_detach(self) -> None:
        if any(self._captured.values()):  # a forward of a submodule, not the whole model
            self._finish_forward()

    def _before_forward(self, args: tuple, kwargs: dict) -> None:
        for parts in self._captured.values():
            parts.clear()
        given, self._next = self._next or {}, None
        mask = given.get("mask")
        if mask is None:
            mask = kwargs.get(_MASK_KEY)
        tokens = kwargs.get(_TOKEN_KEY)
        if tokens is None:
            tokens = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if not (isinstance(tokens, torch.Tensor) and tokens.ndim == 2 and not tokens.is_floating_point()):
            tokens = None
        fp = given.get("fingerprint") or fingerprint(args, kwargs)
        mask_t = None if mask is None else torch.as_tensor(mask)
        self._forward = _Forward(mask_t, tokens, given.get("coords") or {}, fp)

    def _after_forward(self, ok: bool) -> None:
        if ok:
            self._finish_forward()
        else:  # the forward raised: nothing of it is recorded
            for parts in self._captured.values():
                parts.clear()
            self._forward = None

    def hook(self, site: str, tensor: torch.Tensor) -> None:
        names = D.check_dims(self._site_dims.get(site), tensor.shape, site=site)
        fwd = self._forward
        mask = fwd.mask if fwd is not None else None
        if mask is not None and D.POSITION in names and tensor.shape[names.index(D.POSITION)] != mask.shape[-1]:
            raise SiteError(
                f"site {site!r} has {tensor.shape[names.index(D.POSITION)]} positions but the "
                f"attention mask {mask.shape[-1]}; pass mask= for this site's sequence")
        value = tensor.detach()
        coords: dict[str, np.ndarray] = {}
        if self.selection.kind == "none" and mask is not None and D.POSITION in names:
            value, names, coords = D.flatten_tokens(value, names, mask, site=site)
        else:
            value, names, coords = D.select(value, names, self.selection, mask=mask, site=site)
        value = value.to(_DTYPES[self.dtype])
        if value.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr():
            # a view of the live tensor: an in-place op later (AlexNet's ReLU(inplace=True))
            # would change what we recorded
            value = value.clone()
        if value.is_cuda:  # copy to pinned host memory without blocking the stream
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            host.copy_(value, non_blocking=True)
            value = host
        self._captured[site].append((value, names, coords))
        return None

    def _finish_forward(self) -> None:
        """One forward is complete: write it to the store or keep it in memory."""
        fwd, self._forward = self._forward or _Forward(None, None, {}, None), None
        fired = {s: len(p) for s, p in self._captured.items()}
        if not any(fired.values()):
            return
        if any(n != 1 for n in fired.values()):
            raise SiteError(
                f"each site must fire once per forward pass; got {fired} calls. A module "
                "that runs several times per forward (or a site the model skipped) needs "
                "its own Probe, or name another site")
        parts = {s: p[0] for s, p in self._captured.items()}
        for p in self._captured.values():
            p.clear()
        if any(v.is_pinned() for v, _, _ in parts.values()):
            torch.cuda.current_stream().synchronize()
        n = _n_samples(fwd, parts)
        per_sample = {k: _to_numpy(v) for k, v in fwd.coords.items()}
        for k, v in per_sample.items():
            if v.ndim == 0 or v.shape[0] != n:
                raise ConfigError(f"coordinate {k!r} has {v.shape[:1] or 'no'} values for a "
                                  f"batch of {n} samples; give one value per sample")
        start = self._samples_seen
        self._samples_seen += n
        site_coords = {s: self._coords(fwd, v, names, extra, per_sample, start)
                       for s, (v, names, extra) in parts.items()}
        if self.store is not None:
            first = {k: v for k, v in next(iter(site_coords.values())).items() if k != "_position"}
            self.store.append(
                {s: v for s, (v, _, _) in parts.items()},
                dims={s: names for s, (_, names, _) in parts.items()},
                coords=first or None, copy=False,
                fingerprint=fwd.fingerprint, n_samples=n,
            )
        else:
            self._records.append({s: (v, names, site_coords[s]) for s, (v, names, _) in parts.items()})

    def _coords(self, fwd: _Forward, value: torch.Tensor, names: tuple[str, ...],
                extra: Mapping[str, np.ndarray], per_sample: Mapping[str, np.ndarray],
                start: int) -> dict[str, Any]:
        """Coordinates of one site's rows: per-sample values, token ids, positions."""
        tokens = None if fwd.tokens is None else fwd.tokens.detach().cpu().numpy()
        if names[0] == D.TOKEN:
            rows = extra[D.SAMPLE]
            m = fwd.mask.bool().cpu().numpy()
            out: dict[str, Any] = {k: (D.coord_dims(k, v.ndim, D.TOKEN), v[rows])
                                   for k, v in per_sample.items()}
            out[D.SAMPLE] = ((D.TOKEN,), rows + start)
            out[D.POSITION] = ((D.TOKEN,), extra[D.POSITION])
            if tokens is not None and tokens.shape == m.shape:
                out["token_id"] = ((D.TOKEN,), tokens[m])
            return out
        out = dict(per_sample)
        if D.POSITION in names and tokens is not None:
            positions = extra.get(D.POSITION)
            if positions is None and tokens.shape == (value.shape[0], value.shape[names.index(D.POSITION)]):
                out["token_id"] = ((D.SAMPLE, D.POSITION), tokens)
            elif positions is not None and fwd.mask is None:
                out["token_id"] = ((D.SAMPLE, D.POSITION), tokens[:, positions])
        if D.POSITION in extra:
            out["_position"] = extra[D.POSITION]
        return out

    # ------------------------------------------------------------------ running
    def run(
        self,
        data: Iterable[Any],
        *,
        forward: Callable[[Any, Any], Any] | None = None,
        coords: Callable[[Any], Mapping[str, Any]] | None = None,
        mask: Callable[[Any], Any] | None = None,
        resume: bool | None = None,
        grad: bool = False,
        progress: bool = True,
        total: int | None = None,
    ) -> dict[str, xr.DataArray] | Any:
        """Run ``model`` over ``data`` and record every batch.

        ``data`` yields batches: a tensor (the input), a tuple ``(x, label, ...)`` or a
        mapping of model keyword arguments (``label``/``labels``/``id``/``ids`` keys are
        recorded as coordinates, not passed on; ``attention_mask`` is honoured).
        ``forward(model, batch)``, ``coords(batch) -> {name: per-sample values}`` and
        ``mask(batch) -> (sample, position) mask`` override those defaults.

        With a store that already holds batches, ``resume`` decides: ``None`` (default)
        resumes only when the data is provably the same stream (each batch's input
        fingerprint equals the committed one; a mismatch raises
        :class:`~polysdk.errors.ResumeMismatchError`), ``False`` appends all of
        ``data`` after what is stored, ``True`` also resumes a store written before
        fingerprints existed (by count). Returns the store, or ``{site: DataArray}``
        without one.
        """
        from polysdk._util import progress_bar

        committed, by_count = self._resume_plan(resume)
        batches = progress_bar(data, show=progress, total=total, desc="probe", unit="batch")
        with self, torch.set_grad_enabled(grad):
            for i, batch in enumerate(batches):
                fp = fingerprint(*model_inputs(batch))
                if i < len(committed):
                    self._check_resumed(i, fp, committed[i].fingerprint)
                    continue
                if by_count:
                    size = batch_size(batch)
                    if size > by_count:
                        raise ResumeMismatchError(
                            f"resume=True by count: the store's {self.store.n_samples} samples "
                            f"end inside batch {i} of this data; resume with the batch size "
                            "the store was written with")
                    by_count -= size
                    continue
                self._next = {
                    "mask": mask(batch) if mask is not None else None,
                    "coords": (coords or default_coords)(batch),
                    "fingerprint": fp,
                }
                (forward or default_forward)(self.model, batch)
                self._next = None
                if any(self._captured.values()):  # forward= called a submodule
                    self._finish_forward()
        if self.store is not None:
            self.store.flush()
            return self.store
        out = self.activations
        self._records = []
        return out

    def _resume_plan(self, resume: bool | None) -> tuple[list[Any], int]:
        """(committed batches to check and skip, samples to skip by count)."""
        store = self.store
        if store is None or resume is False or store.n_rows == 0:
            return [], 0
        ledger = store.batches
        if all(b.fingerprint for b in ledger) and sum(b.rows for b in ledger) == store.n_rows:
            return ledger, 0
        if resume is True:  # a store from before fingerprints: resume by count
            return [], int(store.n_samples)
        raise ResumeMismatchError(
            f"store {str(store.path)!r} already holds {store.n_samples} samples that were not "
            "all recorded with input fingerprints, so polysdk cannot tell whether this data "
            "continues them. Pass resume=False to append this data after them, or "
            "resume=True to skip that many samples of this data")

    def _check_resumed(self, i: int, fp: str, committed: str) -> None:
        if committed != fp:
            store = self.store
            raise ResumeMismatchError(
                f"store {str(store.path)!r} holds {len(store.batches)} committed batches "
                f"({store.n_samples} samples), but batch {i} of this data is not the one "
                f"committed there (input fingerprint {fp} != {committed}). To add "
                "this data after what is stored, pass resume=False; to resume the "
                "interrupted run, pass the same data in the same order and batch size")

    _constraints = _CONSTRAINTS

    def __repr__(self) -> str:
        store = "memory" if self.store is None else type(self.store).__name__
        return f"Probe({self.site_names}, reduce={self.reduce!r}, dtype={self.dtype!r}, into={store})"


# --------------------------------------------------------------------------- helpers


def _n_samples(fwd: _Forward, parts: Mapping[str, tuple[torch.Tensor, tuple[str, ...], dict]]) -> int:
    if fwd.mask is not None:
        return int(fwd.mask.shape[0])
    for value, names, extra in parts.values():
        if names[0] == D.SAMPLE:
            return int(value.shape[0])
        return int(extra[D.SAMPLE].max()) + 1 if len(extra[D.SAMPLE]) else 0
    return 0


def _concat(site: str, parts: list[tuple[torch.Tensor, tuple[str, ...], dict]]) -> xr.DataArray:
    if not parts:
        raise SiteError(f"no batch was recorded for site {site!r}: the data was empty, or the "
                        "model never ran inside the with block")
    arrays = [_to_dataarray(*p) for p in parts]
    row = arrays[0].dims[0]
    try:
        out = xr.concat(arrays, dim=row, coords="minimal", compat="override") if len(arrays) > 1 else arrays[0]
    except (ValueError, IndexError) as err:
        raise SiteError(
            f"the forwards recorded at site {site!r} have different shapes ({err}); batches "
            "of different sequence lengths need their attention_mask (then only real tokens "
            "are kept) or a reduce= that removes the position dim") from None
    return out.assign_coords({row: np.arange(out.sizes[row])})


def _to_dataarray(value: torch.Tensor, names: tuple[str, ...], coords: Mapping[str, Any]) -> xr.DataArray:
    array = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
    out: dict[str, Any] = {}
    for name, v in coords.items():
        if name == "_position":
            out[D.POSITION] = v
            continue
        if isinstance(v, tuple):
            out[name] = v
        else:
            v = np.asarray(v)
            out[name] = (D.coord_dims(name, v.ndim, names[0]), v)
    return xr.DataArray(array, dims=names, coords=out, name="activation")


def _to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
