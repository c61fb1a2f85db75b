"""Base classes of the regularizers: a loss term computed during training.

``Regularizer`` is anything with ``loss(*, labels=None)`` (one signature for every
regularizer: those that need the batch's labels read them from ``labels=``, the
others ignore it). ``ActivationRegularizer`` keeps the *live* activations of its
sites from the last forward pass (the tensors themselves, so the loss carries their
gradient) and drops them on ``detach()``::

    with ActivationL1(model, "fc1", lam=1e-3) as reg:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y) + reg.loss(labels=y)
            loss.backward(); opt.step(); opt.zero_grad()

Within ``reg.inactive()`` the hooks stay on and ``loss()`` is 0 (the term is off).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import torch

from polysdk.component import Component, param_repr
from polysdk.errors import ConfigError
from polysdk.params import Params
from polysdk.sites import Capture, SiteSpec, TensorKey, unwrap_model

__all__ = ["ActivationRegularizer", "Regularizer"]


class Regularizer(Params):
    """Anything that adds a loss term: implement ``loss(*, labels=None)``.

    Regularizers are context managers; those without hooks (:class:`MaskL0`) do
    nothing on attach/detach.
    """

    def loss(self, *, labels: Any = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement loss(*, labels=None)")

    def __repr__(self) -> str:
        return param_repr(self)


class UnhookedRegularizer(Regularizer):
    """A regularizer without hooks: ``attach``/``detach``/``with`` do nothing."""

    attached = False

    def attach(self) -> Self:
        return self

    def detach(self) -> None:
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class ActivationRegularizer(Component, Regularizer):
    """A regularizer on the live activations of some sites.

    The hook keeps each site's tensor from the most recent forward pass (a module
    called twice in one pass keeps the last call's value) and never edits it.
    :meth:`activations` returns them in site order. Subclasses implement
    ``term(activations, labels) -> Tensor``; :meth:`loss` hands them the
    activations of the last forward (and gives 0 while ``inactive()``).
    """

    def __init__(
        self,
        model: Any,
        sites: SiteSpec | Sequence[SiteSpec],
        *,
        capture: Capture = "output",
        key: TensorKey = None,
    ) -> None:
        self._validate_params()
        super().__init__(model, sites, capture=capture, key=key)
        self._acts: dict[str, torch.Tensor] = {}

    def hook(self, site: str, tensor: torch.Tensor) -> None:
        self._acts[site] = tensor
        return None

    def activations(self) -> dict[str, torch.Tensor]:
        """The tensors seen at each site in the last forward pass, in site order."""
        missing = [s for s in self.site_names if s not in self._acts]
        if missing:
            state = "attached" if self.attached else "not attached"
            raise ConfigError(
                f"{type(self).__name__} has no activations for sites {missing} (it is "
                f"{state}); attach it (`with reg:` or reg.attach()) and run a forward "
                f"pass before calling loss()"
            )
        return {s: self._acts[s] for s in self.site_names}

    def clear(self) -> None:
        """Forget the stored activations (and the graph they keep alive)."""
        self._acts.clear()

    def term(self, activations: dict[str, torch.Tensor], labels: Any) -> torch.Tensor:
        """The loss term for the activations of one forward pass."""
        raise NotImplementedError(f"{type(self).__name__} must implement term(activations, labels)")

    def loss(self, *, labels: Any = None) -> torch.Tensor:
        """The term over the activations of the last forward pass (0 while inactive)."""
        if not self.active:
            return self._zero()
        return self.term(self.activations(), labels)

    def _zero(self) -> torch.Tensor:
        if self._acts:
            return next(iter(self._acts.values())).new_zeros(())
        p = next(unwrap_model(self.model).parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)

    def _on_attach(self) -> None:
        self.clear()

    def _on_detach(self) -> None:
        self.clear()

    def __repr__(self) -> str:
        return param_repr(self)
