"""Patch: put activations from elsewhere into chosen units of chosen sites.

Three sources, exactly one per ``Patch``:

* ``input=``: another input. On ``attach()`` the model is run once on it (no grad)
  with a capture on the same sites; those values are patched into later runs.
* ``activations=``: given values, ``{site: Tensor | DataArray}`` (or one tensor).
* ``store=`` with ``samples=``: recorded samples of an ActivationStore (or mapping),
  example ``i`` of the batch taking recorded sample ``samples[i]``.

>>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
>>> clean, corrupt = torch.ones(1, 2), torch.zeros(1, 2)
>>> with Patch(net, "1", input=clean):
...     patched = net(corrupt)
>>> torch.allclose(patched, net(clean))
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import xarray as xr

from polysdk.errors import ConfigError, SiteError
from polysdk.intervene._layout import check_site_keys, per_site, to_layout
from polysdk.intervene._sources import SamplePool, site_source
from polysdk.intervene.base import Intervention
from polysdk.sites import Capture, Hooks, SiteSpec, TensorKey

__all__ = ["Patch", "run_model"]


def run_model(model: Any, inputs: Any) -> Any:
    """Call ``model`` on ``inputs``: a tuple is positional arguments, a dict keywords."""
    if isinstance(inputs, tuple):
        return model(*inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


class Patch(Intervention):
    """Replace chosen units' values with activations from another input or a store.

    Parameters
    ----------
    input
        Another input for the model (a tensor, a tuple of arguments or a dict of keyword
        arguments). Its activations are captured when the patch is attached, with
        whatever other components are attached at that moment.
    activations
        Values to patch in: one tensor (every site), ``{site: Tensor | DataArray}``.
        Tensors have the site's shape (or batch 1, broadcast over the batch).
    store, samples
        An ``ActivationStore`` (or ``{site: DataArray | Tensor}``) and the recorded sample
        index for each example of the target batch.
    units, positions, attention_mask, dims, capture, key
        As for :class:`~polysdk.intervene.Intervention` (``positions=`` patches chosen
        tokens only).

    The patched values must match the target run's shape (a batch of 1 broadcasts):
    otherwise a :class:`~polysdk.errors.SiteError` says which site and which shapes.
    """

    def __init__(
        self,
        model: Any,
        sites: SiteSpec | Sequence[SiteSpec],
        *,
        input: Any = None,  # noqa: A002 - the natural name for a model input
        activations: Any = None,
        store: Any = None,
        samples: Sequence[int] | torch.Tensor | None = None,
        units: Any = None,
        positions: Any = None,
        attention_mask: Any = None,
        dims: Any = None,
        capture: Capture = "output",
        key: TensorKey = None,
    ) -> None:
        self.input = input
        self.activations = activations
        self.store = store
        self.samples = samples
        super().__init__(model, sites, units=units, positions=positions, attention_mask=attention_mask,
                         dims=dims, capture=capture, key=key)
        check_site_keys(activations, "activations", self.site_names)
        self.cache_: dict[str, Any] = {}
        self._converted: dict[tuple, torch.Tensor] = {}

    def _validate_params(self, names: Any = None) -> None:
        super()._validate_params(names)
        sources = (("input", self.input), ("activations", self.activations), ("store", self.store))
        given = [n for n, v in sources if v is not None]
        if len(given) != 1:
            raise ConfigError(
                f"Patch needs exactly one source among input=, activations= and store=; "
                f"got {given or 'none'}"
            )
        if self.store is not None and self.samples is None:
            raise ConfigError(
                "Patch(store=...) needs samples=: the recorded sample index for each "
                "example of the batch you will run"
            )
        if self.samples is not None and self.store is None:
            raise ConfigError("samples= only applies with store=")

    def prepare(self) -> None:
        self.cache_ = {}
        self._converted = {}
        if self.input is not None:
            cache: dict[str, torch.Tensor] = {}

            def record(site: str, tensor: torch.Tensor) -> None:
                cache[site] = tensor.detach().clone()

            with torch.no_grad(), Hooks(
                self.model, self.site_names, record, capture=self.capture, key=self.key
            ):
                run_model(self.model, self.input)
            missing = [s for s in self.site_names if s not in cache]
            if missing:
                raise SiteError(
                    f"running the model on the patch input never reached sites {missing}; "
                    f"check that the input goes through them"
                )
            self.cache_ = cache
        elif self.activations is not None:
            for site in self.site_names:
                self.cache_[site] = per_site(self.activations, site, "activations", self.site_names)
        else:
            idx = torch.as_tensor(self.samples, dtype=torch.long).reshape(-1)
            for site in self.site_names:
                pool = SamplePool(site_source(self.store, site, "Patch(store=)"), site, "Patch")
                self.cache_[site] = pool.take(idx)

    def edit(self, site: str, tensor: torch.Tensor, dims: tuple[str, ...]) -> torch.Tensor:
        key = (site, dims, tuple(tensor.shape), tensor.device, tensor.dtype)
        if key in self._converted:
            return self._converted[key]
        value = self.cache_[site]
        leading = not isinstance(value, xr.DataArray)
        out = to_layout(
            value, dims, tensor.shape, site=site, what="patched activations", leading_sample=leading
        ).to(device=tensor.device, dtype=tensor.dtype)
        if out.ndim == tensor.ndim and out.shape[0] not in (1, tensor.shape[0]):
            raise SiteError(
                f"patched activations for site {site!r} hold {out.shape[0]} examples but the "
                f"batch being run has {tensor.shape[0]}; run a batch of the same size (or "
                f"patch from a single example, which broadcasts)"
            )
        self._converted[key] = out
        return out
