"""The ``Intervention`` base class (``Compose`` lives in :mod:`polysdk.compose`).

An intervention edits the value of its sites during the forward pass. A subclass
implements :meth:`Intervention.edit`, returning the new values (anything that
broadcasts against the site's tensor); the base keeps the old values outside the
chosen ``units`` and hands the result back through the hook layer::

    with Ablate(model, "fc1", units=[3, 7]), Steer(model, "fc1", direction, scale=4.0):
        out = model(x)          # fc1: units 3 and 7 zeroed, then the direction added

On one site, interventions run in the order they were attached (the order of the
``with`` items, or of the arguments of :class:`~polysdk.compose.Compose`).

Every intervention is a :class:`polysdk.component.Component`: one lifecycle
(``inactive()`` leaves the hooks on and the values untouched) and the parameter API
(``get_params``, ``set_params``, ``clone(model=other)``, ``repr``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from polysdk.compose import Compose
from polysdk.component import Component
from polysdk.intervene._layout import check_site_keys, per_site, position_mask, site_dims, unit_mask
from polysdk.sites import Capture, SiteSpec, TensorKey

__all__ = ["Compose", "Intervention"]


class Intervention(Component):
    """Base class: edit chosen units of chosen sites during the forward pass.

    Parameters
    ----------
    model
        Any ``nn.Module``, a TransformerLens 4 bridge or an ``nnsight.NNsight`` wrapper.
    sites
        Site names, globs or modules (see :func:`polysdk.sites.resolve_sites`).
    units
        Which units to edit: ``None`` (all), an int, a list of ints, a boolean mask over
        the unit axis, or a ``{site: units}`` mapping.
    positions
        Which positions to edit along the ``position`` dim: ``None`` (all), an int, a
        list of ints (negative: from the end), a boolean ``(sample, position)`` (or
        ``(position,)``) mask, or a ``{site: positions}`` mapping. Other positions keep
        their values.
    attention_mask
        The ``(sample, position)`` attention mask of the batch being run: int
        ``positions`` then count each text's real tokens (``-1`` is its last real
        token on right or left padding, never a pad).
    dims
        The names of the site tensor's axes, e.g. ``("sample", "position", "unit")``, or a
        ``{site: dims}`` mapping; by default the rule of :mod:`polysdk.dims`
        (2-D ``(sample, unit)``, 3-D ``(sample, position, unit)``, 4-D
        ``(sample, unit, y, x)``).
    capture, key
        Edit the module's ``"output"`` (default) or ``"input"``; ``key`` picks the tensor
        in a tuple/dict value.

    Subclasses implement ``edit(site, tensor, dims) -> Tensor`` and may override
    ``prepare()`` (run by ``attach()`` while the component's own hooks are inactive).
    """

    def __init__(
        self,
        model: Any,
        sites: SiteSpec | Sequence[SiteSpec],
        *,
        units: Any = None,
        positions: Any = None,
        attention_mask: Any = None,
        dims: Any = None,
        capture: Capture = "output",
        key: TensorKey = None,
    ) -> None:
        self.units = units
        self.positions = positions
        self.attention_mask = attention_mask
        self.dims = dims
        self._validate_params()
        super().__init__(model, sites, capture=capture, key=key)
        check_site_keys(units, "units", self.site_names)
        check_site_keys(positions, "positions", self.site_names)
        check_site_keys(dims, "dims", self.site_names)

    # -- to implement ---------------------------------------------------------------
    def edit(self, site: str, tensor: torch.Tensor, dims: tuple[str, ...]) -> torch.Tensor:
        """Return the new values of ``tensor`` (broadcastable to its shape)."""
        raise NotImplementedError(f"{type(self).__name__} must implement edit()")

    def prepare(self) -> None:
        """Work done once per ``attach()`` (statistics, caches); the component's own
        hooks are on but inactive meanwhile, so a forward run here is not edited."""

    def _on_attach(self) -> None:
        with self.inactive():
            self.prepare()

    # -- hook plumbing --------------------------------------------------------------
    def hook(self, site: str, tensor: torch.Tensor) -> torch.Tensor:
        names = site_dims(site, tensor, self.dims, self.site_names)
        new = self.edit(site, tensor, names)
        if not isinstance(new, torch.Tensor):
            new = torch.as_tensor(new)
        new = new.to(device=tensor.device, dtype=tensor.dtype)
        units = per_site(self.units, site, "units", self.site_names)
        positions = per_site(self.positions, site, "positions", self.site_names)
        chosen = [
            m for m in (
                unit_mask(units, names, tensor.shape, tensor.device, site),
                position_mask(positions, names, tensor.shape, tensor.device, site, self.attention_mask),
            ) if m is not None
        ]
        mask = torch.ones((), dtype=torch.bool, device=tensor.device)
        for m in chosen:
            mask = mask & m
        # torch.where builds a fresh tensor of the site's shape (never a view or an
        # expanded tensor) and keeps the gradient of both branches.
        return torch.where(mask, new, tensor)
