"""Base classes of the regularizers: a loss term computed during training.

``Regularizer`` is anything with ``loss()``. ``ActivationRegularizer`` keeps the
*live* activations of its sites from the last forward pass (the tensors themselves,
so the loss carries their gradient) and drops them on ``detach()``::

    with ActivationL1(model, "fc1", lam=1e-3) as reg:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y) + reg.loss()
            loss.backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from polysdk.errors import ConfigError
from polysdk.sites import Capture, HookedComponent, SiteSpec, TensorKey

__all__ = ["ActivationRegularizer", "Regularizer"]


class Regularizer:
    """Anything that adds a loss term: implement :meth:`loss`.

    Regularizers are context managers; those without hooks do nothing on enter/exit.
    """

    def loss(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")

    def __enter__(self) -> Regularizer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class ActivationRegularizer(HookedComponent, Regularizer):
    """A regularizer on the live activations of some sites.

    The hook keeps each site's tensor from the most recent forward pass (a module
    called twice in one pass keeps the last call's value) and never edits it.
    :meth:`activations` returns them in site order.
    """

    def __init__(
        self,
        model: Any,
        sites: SiteSpec | Sequence[SiteSpec],
        *,
        capture: Capture = "output",
        key: TensorKey = None,
    ) -> None:
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

    def attach(self) -> ActivationRegularizer:
        if self.attached:
            return self
        self.clear()
        super().attach()
        return self

    def detach(self) -> None:
        super().detach()
        self.clear()

    def __enter__(self) -> ActivationRegularizer:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.detach()
