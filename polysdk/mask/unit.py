"""``UnitMask``: remove chosen units at a site, and keep them removed while training.

Two ways to remove a unit:

* ``mode="activation"`` (default): a hook zeroes the units in the site's output on
  every forward pass, so they stay zero however the model trains; detaching gives
  them back.
* ``mode="parameter"`` (seed 004's pruning): zero the entries of the site module's
  ``weight`` (and ``bias``, ``zero_bias=True``) that write the units, e.g. the gain of
  the LayerNorm that writes residual dimensions. While attached, a gradient mask keeps
  their gradient at zero and, when ``optimizer`` is given, they are re-zeroed after
  each ``optimizer.step()`` (weight decay or momentum cannot move them). ``regrow=True``
  zeroes once and lets them regrow (the original code's behaviour). The zeros stay
  after ``detach()`` (it is pruning) unless ``restore=True``.

``with mask.inactive():`` switches the effect off with every hook left in place: in
activation mode the units pass unchanged; in parameter mode the gradient mask and the
re-zeroing after ``optimizer.step()`` stand aside (the entries may train), and they
are zeroed again when the block ends, so the entries are held at zero exactly while
the mask is active. ``UnitMask`` is a :class:`~polysdk.mask.base.Masker`:
``masks_`` holds the kept units (``fit(x)`` reads the site's size in activation
mode; parameter mode needs no data).

>>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
>>> with UnitMask(net, "0", units=[1]):
...     net(torch.ones(1, 2))[0, 1].item()
0.0
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Self

import torch

from polysdk import dims as D
from polysdk.component import Component
from polysdk.errors import ConfigError
from polysdk.mask._data import iter_batches
from polysdk.mask.base import Masker
from polysdk.params import Options, TypeOf
from polysdk.sites import SiteSpec, TensorKey, hook_gradient, hook_optimizer_step, unwrap_model
from polysdk.trace import Trace

__all__ = ["UnitMask"]


class UnitMask(Component, Masker):
    """Zero ``units`` at ``site`` (see the module docstring for the two modes).

    Parameters
    ----------
    model, site : the model and one site (a module name, glob or module).
    units : indices along the site's ``unit`` axis (activation mode) or, in parameter
        mode, along the first axis of the module's ``weight`` and ``bias``.
    dims : activation mode: names of the site tensor's axes, one of them ``"unit"``
        (default :func:`polysdk.dims.default_dims`: ``(sample, unit)``,
        ``(sample, position, unit)``, ``(sample, unit, y, x)``).
    mode : ``"activation"`` or ``"parameter"``.
    regrow : parameter mode only: do not hold the zeros during training.
    zero_bias : parameter mode: zero the bias entries too.
    optimizer : parameter mode: re-zero after each of its steps while attached.
    restore : parameter mode: put the original values back on ``detach()``.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    >>> with torch.no_grad():
    ...     _ = net[1].bias.fill_(0.5)
    >>> pruned = UnitMask(net, "1", units=[0, 2], mode="parameter").attach()
    >>> net[1].weight.tolist(), net[1].bias.tolist()
    ([0.0, 1.0, 0.0, 1.0], [0.0, 0.5, 0.0, 0.5])
    >>> pruned.fit().density_
    0.5
    >>> pruned.detach()
    """

    _constraints = {
        "mode": Options("activation", "parameter"),
        "regrow": TypeOf(bool),
        "zero_bias": TypeOf(bool),
        "restore": TypeOf(bool),
    }

    def __init__(
        self,
        model: Any,
        site: SiteSpec,
        units: Sequence[int] | torch.Tensor,
        *,
        mode: Literal["activation", "parameter"] = "activation",
        dims: Sequence[str] | None = None,
        regrow: bool = False,
        zero_bias: bool = True,
        optimizer: torch.optim.Optimizer | None = None,
        restore: bool = False,
        capture: Literal["output", "input"] = "output",
        key: TensorKey = None,
    ) -> None:
        self.site = site
        self.units = [int(u) for u in (units.tolist() if isinstance(units, torch.Tensor) else units)]
        self.mode = mode
        self.dims = dims
        self.regrow = regrow
        self.zero_bias = zero_bias
        self.optimizer = optimizer
        self.restore = restore
        self._validate_params()
        super().__init__(model, site, capture=capture, key=key)
        if len(self.site_names) != 1:
            raise ConfigError(f"UnitMask takes one site; {site!r} matches {self.site_names}")
        self._saved: dict[str, torch.Tensor] = {}
        if mode == "parameter":
            self._targets()  # fail early on a module without weights or out-of-range units

    def _validate_params(self, names: Any = None) -> None:
        super()._validate_params(names)
        if self.regrow and self.mode == "activation":
            raise ConfigError(
                "regrow=True applies to mode='parameter' (zero the weights once and let them "
                "train); a hook in mode='activation' holds the units at zero by construction"
            )

    # ---------------------------------------------------------------- activation
    def hook(self, site: str, tensor: torch.Tensor) -> torch.Tensor | None:
        if self.mode == "parameter":
            return None  # the weights carry the removal
        names = D.check_dims(None if self.dims is None else tuple(self.dims), tensor.shape, site=site,
                             need_unit=True)
        dim = D.unit_axis(names, site=site)
        self._check_range(tensor.shape[dim], f"the unit axis {dim} of {site!r}")
        idx = torch.as_tensor(self.units, device=tensor.device, dtype=torch.long)
        return tensor.index_fill(dim, idx, 0.0)

    def _check_range(self, size: int, where: str) -> None:
        bad = [u for u in self.units if not -size <= u < size]
        if bad:
            raise ConfigError(f"units {bad} are out of range for {where} of size {size}")

    # ---------------------------------------------------------------- parameter
    def _targets(self) -> dict[str, torch.nn.Parameter]:
        module = self.modules[self.site_names[0]]
        names = ("weight", "bias") if self.zero_bias else ("weight",)
        found = {n: getattr(module, n) for n in names if isinstance(getattr(module, n, None), torch.nn.Parameter)}
        if "weight" not in found:
            raise ConfigError(
                f"mode='parameter' needs a module with a weight parameter; {self.site_names[0]!r} "
                f"is {type(module).__name__}: name the LayerNorm/Linear/Conv that writes the units"
            )
        for n, p in found.items():
            self._check_range(p.shape[0], f"{self.site_names[0]}.{n}")
        return found

    def _keep(self, p: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(p.shape[0], dtype=p.dtype, device=p.device)
        keep[self.units] = 0
        return keep.reshape(-1, *([1] * (p.ndim - 1)))

    @torch.no_grad()
    def enforce(self) -> None:
        """Set the removed entries back to zero (parameter mode)."""
        for p in self._targets().values():
            p[self.units] = 0

    # ---------------------------------------------------------------- lifecycle
    def _on_attach(self) -> None:
        if self.mode != "parameter":
            return
        params = self._targets()
        with torch.no_grad():
            for n, p in params.items():
                self._saved[n] = p[self.units].detach().clone()
                p[self.units] = 0
        if self.regrow:
            return
        for p in params.values():
            self._own(hook_gradient(p, lambda g, keep=self._keep(p): g * keep if self.active else None))
        if self.optimizer is not None:
            self._own(hook_optimizer_step(self.optimizer, lambda *_: self.enforce() if self.active else None))

    def _on_detach(self) -> None:
        if self._saved and self.restore:
            with torch.no_grad():
                for n, p in self._targets().items():
                    if n in self._saved:
                        p[self.units] = self._saved[n].to(p.device)
        self._saved = {}

    @contextlib.contextmanager
    def inactive(self) -> Iterator[Self]:
        """Effect off, hooks on; parameter mode re-zeroes the entries on leaving."""
        try:
            with super().inactive():
                yield self
        finally:
            if self.attached and self.active and self.mode == "parameter" and not self.regrow:
                self.enforce()

    # ---------------------------------------------------------------- Masker
    def fit(self, x: Any = None) -> UnitMask:
        """Build ``masks_``: the kept entries of each zeroed parameter (parameter mode)
        or ``{site: kept units}`` (activation mode, sized from one forward on ``x``)."""
        if self.mode == "parameter":
            names = {id(p): n for n, p in unwrap_model(self.model).named_parameters()}
            self.masks_ = {names[id(p)]: self._keep(p).bool().expand_as(p).clone()
                           for p in self._targets().values()}
            return self
        if x is None:
            raise ConfigError("UnitMask(mode='activation').fit(x) needs a batch to read the site's size")
        batch = next(iter_batches(x, 8), None)
        if batch is None:
            raise ConfigError("UnitMask.fit got no data")
        site = self.site_names[0]
        with torch.no_grad():
            trace = Trace(self.model, site, stop=True, capture=self.capture, key=self.key)
            value = trace.run(batch.call, self.model)[site]
        names = D.check_dims(None if self.dims is None else tuple(self.dims), value.shape, site=site,
                             need_unit=True)
        size = value.shape[D.unit_axis(names, site=site)]
        self._check_range(size, f"the unit axis of {site!r}")
        keep = torch.ones(size, dtype=torch.bool)
        keep[self.units] = False
        self.masks_ = {site: keep}
        return self

    @contextlib.contextmanager
    def masked(self, model: Any = None) -> Iterator[Any]:
        """Within the block the units are removed (attached for the block if needed);
        ``model`` (another model with the same site) gets a clone of this mask."""
        mask = self if model is None or model is self.model else self.clone(model=model)
        was = mask.attached
        mask.attach()
        try:
            yield mask.model
        finally:
            if not was:
                mask.detach()
