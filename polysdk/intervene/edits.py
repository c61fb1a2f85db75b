"""Ablate, Clamp and Steer: interventions that compute new values for chosen units.

>>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
>>> with Clamp(net, "0", 5.0, units=[1]):
...     net(torch.zeros(1, 2))[0, 1].item()
5.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from polysdk.errors import ConfigError
from polysdk.intervene._layout import check_site_keys, per_site, to_layout
from polysdk.intervene._sources import SamplePool, mean_of, site_source
from polysdk.intervene.base import Intervention
from polysdk.params import Interval, Options, TypeOf
from polysdk.sites import Capture, SiteSpec, TensorKey

__all__ = ["Ablate", "Clamp", "Steer"]

Method = Literal["zero", "mean", "resample"]


class Ablate(Intervention):
    """Zero, mean or resample ablation of chosen units.

    * ``"zero"``: the units' values become 0.
    * ``"mean"``: their mean over recorded activations (by default over ``sample``; add
      ``"position"`` etc. to ``mean_over`` to average those too). Computed with
      xarray/dask from ``source`` on the first ``attach()`` and kept (build a new
      ``Ablate`` after recording more samples).
    * ``"resample"``: each example of the batch takes the values of one recorded sample
      drawn uniformly at random (one draw per example, shared by all chosen units and
      sites, so that the replacement is one real input's activations), reproducibly
      from ``seed`` (the generator restarts at every ``attach()``).

    Parameters
    ----------
    source
        For ``mean``/``resample``: an ``ActivationStore`` (``store[site]``), a
        ``{site: DataArray | Tensor}`` mapping, or one DataArray/Tensor. A DataArray
        with a ``sample`` dim is averaged (mean) or drawn from (resample); for ``mean``
        a DataArray without ``sample`` or a tensor is the mean itself (one value per
        unit, or the site's shape without the batch axis).
    mean_over
        Dims averaged for ``"mean"`` (``sample`` always is).
    seed
        Seed of the resampling generator (``None``: a fresh random draw each attach).

    Other parameters as for :class:`~polysdk.intervene.Intervention`.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU())
    >>> with Ablate(net, "1", units=[0, 2]):
    ...     y = net(torch.randn(3, 2))
    >>> y[:, [0, 2]].abs().sum().item()
    0.0
    """

    _constraints = {
        "method": Options("zero", "mean", "resample"),
        "seed": Interval(None, None, integer=True, allow_none=True),
    }

    def __init__(
        self,
        model: Any,
        sites: SiteSpec | Sequence[SiteSpec],
        units: Any = None,
        *,
        method: Method = "zero",
        source: Any = None,
        mean_over: Sequence[str] = ("sample",),
        seed: int | None = 0,
        positions: Any = None,
        attention_mask: Any = None,
        dims: Any = None,
        capture: Capture = "output",
        key: TensorKey = None,
    ) -> None:
        self.method = method
        self.source = source
        self.mean_over = tuple(mean_over)
        self.seed = seed
        super().__init__(model, sites, units=units, positions=positions, attention_mask=attention_mask,
                         dims=dims, capture=capture, key=key)
        self._means: dict[str, Any] = {}
        self._mean_tensors: dict[tuple, torch.Tensor] = {}
        self._pools: dict[str, SamplePool] = {}
        self._generator: torch.Generator | None = None
        self._draw: tuple[int, torch.Tensor] | None = None  # (batch, indices) per pass
        self._draw_seen: set[str] = set()

    def _validate_params(self, names: Any = None) -> None:
        super()._validate_params(names)
        if self.method != "zero" and self.source is None:
            raise ConfigError(
                f"Ablate(method={self.method!r}) needs source=: an ActivationStore recorded on "
                f"these sites, a {{site: DataArray}} mapping, or a DataArray/Tensor"
            )

    def prepare(self) -> None:
        what = f"Ablate(method={self.method!r})"
        if self.method == "mean":
            for site in self.site_names:
                if site not in self._means:
                    self._means[site] = mean_of(site_source(self.source, site, what), self.mean_over)
        elif self.method == "resample":
            for site in self.site_names:
                if site not in self._pools:
                    self._pools[site] = SamplePool(site_source(self.source, site, what), site, what)
            self._generator = torch.Generator()
            if self.seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(self.seed)
            self._draw = None

    def _indices(self, site: str, batch: int) -> torch.Tensor:
        """One draw per example, shared by every site of the same forward pass.

        A new draw starts when a site comes round a second time (the next pass) or
        the batch size changes.
        """
        if self._generator is None:  # attach() prepares it; hook() only runs attached
            raise ConfigError("Ablate(method='resample') was not prepared; use attach()")
        if self._draw is None or site in self._draw_seen or self._draw[0] != batch:
            sizes = {p.size for p in self._pools.values()}
            if len(sizes) != 1:
                raise ConfigError(
                    f"resample ablation draws one recorded sample per example for all "
                    f"sites, but the sources hold different sample counts {sorted(sizes)}; "
                    f"record the sites together or ablate them separately"
                )
            idx = torch.randint(sizes.pop(), (batch,), generator=self._generator)
            self._draw = (batch, idx)
            self._draw_seen = set()
        self._draw_seen.add(site)
        return self._draw[1]

    def edit(self, site: str, tensor: torch.Tensor, dims: tuple[str, ...]) -> torch.Tensor:
        if self.method == "zero":
            return torch.zeros((), dtype=tensor.dtype, device=tensor.device)
        if self.method == "mean":
            # converted once per site, layout, device and dtype (not on every pass)
            key = (site, dims, tuple(tensor.shape[1:]), tensor.device, tensor.dtype)
            if key not in self._mean_tensors:
                mean = to_layout(self._means[site], dims, tensor.shape, site=site, what="the mean")
                self._mean_tensors[key] = mean.to(device=tensor.device, dtype=tensor.dtype)
            return self._mean_tensors[key]
        rows = self._pools[site].take(self._indices(site, tensor.shape[0]))
        return to_layout(
            rows, dims, tensor.shape, site=site, what="resampled activations", leading_sample=True
        )


class Clamp(Intervention):
    """Set chosen units to a fixed value.

    ``value`` is a number, one value per unit, a tensor shaped like the site without
    the batch axis, a DataArray with named dims, or a ``{site: value}`` mapping.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3))
    >>> with Clamp(net, "0", torch.tensor([1.0, 2.0, 3.0])):
    ...     net(torch.randn(2, 2)).tolist()
    [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    """

    def __init__(
        self,
        model: Any,
        sites: SiteSpec | Sequence[SiteSpec],
        value: Any,
        *,
        units: Any = None,
        positions: Any = None,
        attention_mask: Any = None,
        dims: Any = None,
        capture: Capture = "output",
        key: TensorKey = None,
    ) -> None:
        self.value = value
        super().__init__(model, sites, units=units, positions=positions, attention_mask=attention_mask,
                         dims=dims, capture=capture, key=key)
        check_site_keys(value, "value", self.site_names)

    def edit(self, site: str, tensor: torch.Tensor, dims: tuple[str, ...]) -> torch.Tensor:
        value = per_site(self.value, site, "value", self.site_names)
        return to_layout(value, dims, tensor.shape, site=site, what="the clamp value")


class Steer(Intervention):
    """Add ``scale * direction`` to the site's value (on chosen units only, if given).

    ``direction`` is one value per unit (the usual case: a vector in the site's unit
    space), a tensor shaped like the site without the batch axis (e.g. per position),
    a DataArray with named dims, or a ``{site: direction}`` mapping. With
    ``normalize=True`` the direction is scaled to unit L2 norm first.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> with Steer(net, "0", torch.tensor([3.0, 4.0]), scale=2.0, normalize=True):
    ...     steered = net(torch.ones(1, 2))
    >>> torch.allclose(steered - net(torch.ones(1, 2)), torch.tensor([[1.2, 1.6]]))  # 2 * (0.6, 0.8)
    True
    """

    _constraints = {"scale": Interval(None, None), "normalize": TypeOf(bool)}

    def __init__(
        self,
        model: Any,
        sites: SiteSpec | Sequence[SiteSpec],
        direction: Any,
        *,
        scale: float = 1.0,
        normalize: bool = False,
        units: Any = None,
        positions: Any = None,
        attention_mask: Any = None,
        dims: Any = None,
        capture: Capture = "output",
        key: TensorKey = None,
    ) -> None:
        self.direction = direction
        self.scale = scale
        self.normalize = normalize
        super().__init__(model, sites, units=units, positions=positions, attention_mask=attention_mask,
                         dims=dims, capture=capture, key=key)
        check_site_keys(direction, "direction", self.site_names)

    def edit(self, site: str, tensor: torch.Tensor, dims: tuple[str, ...]) -> torch.Tensor:
        raw = per_site(self.direction, site, "direction", self.site_names)
        d = to_layout(raw, dims, tensor.shape, site=site, what="the steering direction")
        d = d.to(device=tensor.device, dtype=tensor.dtype)
        if self.normalize:
            norm = d.norm()
            if float(norm) == 0.0:
                raise ConfigError(f"the steering direction for site {site!r} is all zeros")
            d = d / norm
        return tensor + self.scale * d
