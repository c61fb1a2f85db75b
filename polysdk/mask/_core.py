"""Shared plumbing of the maskers: parameter selection, masked forward, target reading.

Parameter masks never touch the model's tensors: :func:`masked_call` runs the model
with ``weight * mask`` swapped into each masked parameter's slot for the duration of
the call (:func:`swapped_parameters`, like :func:`torch.func.functional_call` but safe
with aliased submodules), and the original parameters are back on every path
(return, exception, interrupt). Activations
are read only through :mod:`polysdk.sites`.

*Stopping the forward pass at the target.* :class:`SiteReader` is a one-site
:class:`polysdk.trace.Trace` that stops by default: its hook raises
:class:`~polysdk.trace.StopForward` right after storing the value, and
:meth:`SiteReader.run` catches it, so layers after the target never run (no time, no
memory). The exception passes through the model's own code; a model that catches
every ``Exception`` in its forward would swallow it, in which case pass
``stop_at_target=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from polysdk.errors import ConfigError
from polysdk.sites import SiteSpec, TensorKey, resolve_sites, unwrap_model
from polysdk.trace import Trace

__all__ = [
    "SiteReader",
    "expand_mask",
    "masked_call",
    "swapped_parameters",
    "select_parameters",
]


def select_parameters(
    model: Any,
    params: SiteSpec | Sequence[SiteSpec] = "**",
    *,
    kinds: Sequence[str] = ("weight", "bias"),
    min_ndim: int = 1,
) -> dict[str, nn.Parameter]:
    """The parameters (by their model name) of the modules that ``params`` names.

    ``params`` uses the site syntax of :func:`polysdk.sites.resolve_sites`
    (``"features.*"``: every module directly under ``features``; ``"**"``: all),
    and every parameter of a matched module (and its children) whose last name
    component is in ``kinds`` is taken, once, in model order.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> list(select_parameters(net, "*"))
    ['0.weight', '0.bias', '2.weight', '2.bias']
    """
    module = unwrap_model(model)
    modules = resolve_sites(model, params)
    names = {id(p): n for n, p in module.named_parameters()}
    wanted: set[str] = set()
    for sub in modules.values():
        for p in sub.parameters():
            name = names.get(id(p))
            if name is not None and name.rsplit(".", 1)[-1] in kinds and p.ndim >= min_ndim:
                wanted.add(name)
    chosen = {n: p for n, p in module.named_parameters() if n in wanted}
    if not chosen:
        raise ConfigError(
            f"params={params!r} selects no parameter named {tuple(kinds)} with ndim >= "
            f"{min_ndim}; name modules that own weights (e.g. 'features.*' or '**')"
        )
    return chosen


def expand_mask(mask: torch.Tensor, shape: torch.Size | Sequence[int]) -> torch.Tensor:
    """Broadcast a structured mask (a prefix of ``shape``: filter ``[O]``, kernel
    ``[O, I]``) over the remaining axes of a parameter of ``shape``."""
    shape = tuple(shape)
    if tuple(mask.shape) == shape:
        return mask
    if tuple(mask.shape) != shape[: mask.ndim]:
        raise ConfigError(
            f"mask of shape {tuple(mask.shape)} does not fit a parameter of shape {shape}; "
            f"a mask must have the parameter's shape or a prefix of it ([out] or [out, in])"
        )
    return mask.reshape(tuple(mask.shape) + (1,) * (len(shape) - mask.ndim)).expand(shape)


@contextmanager
def swapped_parameters(model: Any, replacements: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, every module slot holding parameter ``name`` holds
    ``replacements[name]`` instead; the original ``Parameter`` objects are put back on
    exit, however the block ends.

    Unlike :func:`torch.func.functional_call` (torch 2.14), this is safe on models
    that register one submodule under several names (a TransformerLens
    ``TransformerBridge`` does): functional_call restores aliased slots in an order
    that leaves the replacement in place, silently corrupting the model. Tied
    parameters (one ``Parameter`` in two modules) are replaced in both slots.
    """
    module = unwrap_model(model)
    own = dict(module.named_parameters())
    by_id: dict[int, torch.Tensor] = {}
    for name, tensor in replacements.items():
        _check_parameter_name(module, own, name)
        by_id[id(own[name])] = tensor
    slots: list[tuple[nn.Module, str, nn.Parameter]] = []
    for sub in module.modules():  # each module object once, however many names it has
        for attr, p in sub._parameters.items():
            if p is not None and id(p) in by_id:
                slots.append((sub, attr, p))
    try:
        for sub, attr, p in slots:
            sub._parameters[attr] = by_id[id(p)]  # type: ignore[assignment]
        yield
    finally:
        for sub, attr, p in reversed(slots):
            sub._parameters[attr] = p


def _check_parameter_name(module: nn.Module, own: Mapping[str, Any], name: str) -> None:
    if name not in own:
        raise ConfigError(
            f"mask for {name!r} names no parameter of {type(module).__name__}; "
            f"keys must be names from model.named_parameters()"
        )


def masked_call(
    model: Any, masks: Mapping[str, torch.Tensor], *args: Any, detach: bool = False, **kwargs: Any
) -> Any:
    """Run ``model(*args, **kwargs)`` with every parameter ``name`` in ``masks``
    replaced by ``param * mask`` (masks may be bool, float or structured prefixes).

    Hooks attached through :mod:`polysdk.sites` fire as usual, so a ``Probe`` can
    record the subnetwork. With ``detach=True`` the model's weights get no gradient.
    The model's own parameters are back in place when the call returns or raises
    (see :func:`swapped_parameters`).

    >>> net = nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.tensor([[1.0, 2.0]]))
    >>> masked_call(net, {"weight": torch.tensor([[True, False]])}, torch.ones(1, 2)).item()
    1.0
    """
    module = unwrap_model(model)
    own = dict(module.named_parameters())
    replaced: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        _check_parameter_name(module, own, name)
        p = own[name].detach() if detach else own[name]
        m = expand_mask(mask.to(device=p.device), p.shape)
        replaced[name] = p * m.to(p.dtype) if m.dtype == torch.bool else p * m
    with swapped_parameters(module, replaced):
        return module(*args, **kwargs)


class SiteReader(Trace):
    """A :class:`~polysdk.trace.Trace` of one site that stops there by default; its
    :meth:`run` returns that site's value (what the maskers read).

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> with SiteReader(net, "0") as reader:
    ...     h = reader.run(lambda: net(torch.zeros(4, 2)))
    >>> tuple(h.shape)
    (4, 3)
    """

    def __init__(
        self, model: Any, site: SiteSpec, *, stop: bool = True, capture: str = "output",
        key: TensorKey = None,
    ) -> None:
        super().__init__(model, site, stop=stop, capture=capture, key=key)  # type: ignore[arg-type]
        if len(self.site_names) != 1:
            raise ConfigError(
                f"the target must be one site, got {site!r} matching {self.site_names}; "
                f"name a single module"
            )
        self.site = self.site_names[0]

    def run(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """Run ``call(*args, **kwargs)`` (a forward pass) and return the site's value."""
        try:
            return super().run(call, *args, **kwargs)[self.site]
        finally:
            self._values = {}


def model_device(model: Any) -> torch.device:
    module = unwrap_model(model)
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class eval_mode:
    """Put a module in eval mode for a block and restore every submodule's flag."""

    def __init__(self, model: Any) -> None:
        self.module = unwrap_model(model)
        self._flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self._flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self.module

    def __exit__(self, *exc_info: object) -> None:
        for m, flag in self._flags:
            m.training = flag
