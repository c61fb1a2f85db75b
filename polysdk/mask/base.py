"""``Masker``: the base of every masker (one contract, as scikit-learn's estimators).

* Hyper-parameters are ``__init__`` keyword arguments stored unchanged
  (:class:`polysdk.params.Params`: ``get_params``, ``set_params``, ``clone``, ``repr``;
  declared ``_constraints`` raise :class:`~polysdk.errors.ConfigError`).
* ``fit(data, ...)`` returns ``self``; fitted attributes end in ``_``: ``masks_`` is
  ``{name: bool tensor}`` (parameter names for weight masks, site names for unit
  masks) and ``density_`` the kept share of all of them.
* ``with masker.masked():`` runs the model with the masks (``masked(other)`` runs
  another model with the same parameter names)::

      snip = SNIP(model, "features.10", unit=255, density=0.05).fit(images)
      with snip.masked() as subnet, Probe(subnet, "features.*") as probe:
          subnet(images)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from polysdk.component import param_repr
from polysdk.errors import NotFittedError
from polysdk.mask._core import expand_mask, swapped_parameters
from polysdk.mask.io import densities
from polysdk.params import Params
from polysdk.sites import unwrap_model

__all__ = ["Masker"]


class Masker(Params):
    """Base class: ``fit(data, ...) -> self``, ``masks_``, ``density_``, ``masked()``.

    Weight maskers implement ``fit`` and set ``masks_`` (bool masks of each masked
    parameter's shape); ``masked()`` swaps ``weight * mask`` into the model for the
    block (no gradient reaches the weights through it: use
    :func:`polysdk.mask.masked_call` to train through a mask).
    """

    model: Any

    def fit(self, data: Any, *args: Any, **kwargs: Any) -> Masker:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} must implement fit(data, ...)")

    def _fit_hint(self) -> str:
        return "call fit(data) first"

    def _check_fitted(self) -> None:
        if "masks_" not in self.__dict__:
            raise NotFittedError(f"{type(self).__name__} has no masks_ yet: {self._fit_hint()}")

    def __getattr__(self, name: str) -> Any:
        # only reached for missing attributes (and when density_ finds no masks_):
        # the unfitted ones say how to fit, a typo is a plain AttributeError
        if name in ("masks_", "density_"):
            raise NotFittedError(f"{type(self).__name__} has no masks_ yet: {self._fit_hint()}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def density_(self) -> float:
        """The kept share of every masked element (``masks_`` all together)."""
        self._check_fitted()
        return float(densities(self.masks_)["overall"])

    @contextlib.contextmanager
    def masked(self, model: Any = None) -> Iterator[Any]:
        """Within the block ``model`` (default: the masker's) runs with ``masks_``.

        The model's own ``Parameter`` objects are back in place however the block
        ends; hooks (a ``Probe``, interventions) fire as usual inside.
        """
        self._check_fitted()
        target = self.model if model is None else model
        module = unwrap_model(target)
        own = dict(module.named_parameters())
        with torch.no_grad():
            replaced = {}
            for name, mask in self.masks_.items():
                p = own[name] if name in own else None
                if p is None:
                    replaced[name] = mask  # swapped_parameters names the bad key
                    continue
                m = expand_mask(mask.to(p.device), p.shape)
                replaced[name] = p.detach() * m.to(p.dtype)
        with swapped_parameters(module, replaced):
            yield target

    def __repr__(self) -> str:
        return param_repr(self)

