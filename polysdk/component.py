"""``Component``: a hooked component with the parameter API (one lifecycle, one contract).

Every class that lives on hooks (interventions, hooked regularizers, ``UnitMask``,
:class:`polysdk.trace.Trace`) is a ``Component``: the lifecycle of
:class:`polysdk.sites.HookedComponent` (nothing happens until ``attach``; every handle
in one set; rollback; ``inactive()``) plus the scikit-learn parameter contract of
:class:`polysdk.params.Params` (hyper-parameters are the ``__init__`` keyword
arguments stored unchanged; ``get_params``, ``set_params``, ``clone``, ``repr``;
declared ``_constraints`` raising :class:`~polysdk.errors.ConfigError`)::

    steer = Steer(model, "blocks.3.mlp", direction, scale=4.0)
    steer.clone(scale=8.0)               # same sites, re-resolved on the same model
    steer.clone(model=other_model)       # the same edit on another model
    steer.set_params(scale=2.0)          # only while detached: it rebuilds the component

``set_params`` re-runs the constructor with the new values (so sites are re-resolved
and every check runs again); it refuses while attached, where the live hooks were
built from the old values.
"""

from __future__ import annotations

from typing import Any, Self

from polysdk.errors import ConfigError
from polysdk.params import Params
from polysdk.sites import HookedComponent

__all__ = ["Component", "param_repr"]

def param_repr(obj: Params) -> str:
    """``Name(k=v, ...)`` of the parameters that differ from their defaults (one line)."""
    return Params.__repr__(obj)


class Component(Params, HookedComponent):
    """Base of every hooked component: :class:`HookedComponent` + :class:`Params`.

    Subclasses store their constructor arguments unchanged, call
    ``self._validate_params()`` and ``super().__init__(model, sites, capture=...,
    key=...)``, implement ``hook`` and, where needed, ``_on_attach`` / ``_on_detach``.

    >>> import torch
    >>> class Scale(Component):
    ...     def __init__(self, model, sites, factor=2.0):
    ...         self.factor = factor
    ...         super().__init__(model, sites)
    ...     def hook(self, site, tensor):
    ...         return tensor * self.factor
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> Scale(net, "0", factor=3.0)
    Scale(model=Sequential, sites='0', factor=3.0)
    >>> Scale(net, "0").clone(factor=4.0).factor
    4.0
    """

    def set_params(self, **params: Any) -> Self:
        """Change hyper-parameters by rebuilding the component (refused while attached)."""
        if self.attached:
            raise ConfigError(
                f"{type(self).__name__} is attached: its hooks were built from the current "
                f"parameters. Detach it (or leave its with block) before set_params, or "
                f"build another with clone(**changes)"
            )
        names = self._param_names()
        unknown = {k: v for k, v in params.items() if k not in names}
        if unknown:
            Params.set_params(self, **unknown)  # raises, naming the closest parameter
        merged = {**self.get_params(), **params}
        type(self)(**merged)  # check everything first: a failed change leaves self as it was
        self.__init__(**merged)  # type: ignore[misc]
        return self

