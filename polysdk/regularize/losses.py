"""Two simple regularizers: L1 on live activations, and the L0 surrogate on masks.

>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
>>> with ActivationL1(net, "1", lam=0.5) as l1:
...     _ = net(torch.randn(2, 3))
...     penalty = l1.loss()           # 0.5 * mean over the batch of sum |x|
>>> s = torch.zeros(10)
>>> float(MaskL0([s], lam=2.0).loss())   # 2 * 10 * sigmoid(0)
10.0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch

from polysdk.errors import ConfigError
from polysdk.params import Interval, Options
from polysdk.regularize.base import ActivationRegularizer, UnhookedRegularizer
from polysdk.sites import Capture, SiteSpec, TensorKey

__all__ = ["ActivationL1", "MaskL0", "activation_l1", "soft_mask_l0"]

Reduction = Literal["mean", "sum"]


def activation_l1(
    activations: torch.Tensor | Sequence[torch.Tensor],
    *,
    lam: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """``lam * sum_sites sum |x|``, divided by the batch size when ``reduction="mean"``.

    So ``"mean"`` is the per-example L1 norm averaged over the batch (the first axis),
    ``"sum"`` the L1 norm of everything.
    """
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    tensors = [activations] if isinstance(activations, torch.Tensor) else list(activations)
    if not tensors:
        raise ConfigError("activation_l1 needs at least one activation tensor")
    total = tensors[0].new_zeros(())
    for x in tensors:
        term = x.abs().sum()
        if reduction == "mean":
            term = term / max(x.shape[0], 1)
        total = total + term
    return lam * total


class ActivationL1(ActivationRegularizer):
    """L1 penalty on the live activations of chosen sites.

    Parameters
    ----------
    lam
        Weight of the term.
    reduction
        ``"mean"``: per-example L1 norm averaged over the batch (default);
        ``"sum"``: summed over the batch too.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> with ActivationL1(net, ["1"], lam=1e-3) as reg:
    ...     loss = net(torch.randn(5, 3)).pow(2).mean() + reg.loss()
    >>> loss.backward()
    """

    _constraints = {"lam": Interval(None, None), "reduction": Options("mean", "sum")}

    def __init__(
        self,
        model: Any,
        sites: SiteSpec | Sequence[SiteSpec],
        *,
        lam: float = 1.0,
        reduction: Reduction = "mean",
        capture: Capture = "output",
        key: TensorKey = None,
    ) -> None:
        self.lam = lam
        self.reduction = reduction
        super().__init__(model, sites, capture=capture, key=key)

    def term(self, activations: dict[str, torch.Tensor], labels: Any = None) -> torch.Tensor:
        """The L1 term over the activations of one forward pass (labels unused)."""
        return activation_l1(list(activations.values()), lam=self.lam, reduction=self.reduction)


def soft_mask_l0(
    logits: Iterable[torch.Tensor],
    *,
    temperature: float = 1.0,
    lam: float = 1.0,
    weights: Iterable[float] | None = None,
) -> torch.Tensor:
    """``lam * sum over tensors of w_t * sum(sigmoid(temperature * s_t))``.

    ``weights`` (default all 1) counts a tensor's masks several times, e.g. a
    per-kernel logit once for each of the kernel's weights.
    """
    total: torch.Tensor | None = None
    logits = list(logits)
    multipliers = [1.0] * len(logits) if weights is None else list(weights)
    if len(multipliers) != len(logits):
        raise ConfigError(f"soft_mask_l0 got {len(logits)} logit tensors but {len(multipliers)} weights")
    for s, w in zip(logits, multipliers):
        term = torch.sigmoid(temperature * s).sum() * w
        total = term if total is None else total + term
    if total is None:
        raise ConfigError("soft_mask_l0 got no mask-logit tensors")
    return lam * total


class MaskL0(UnhookedRegularizer):
    """The L0 surrogate of continuous sparsification: ``lam * sum sigmoid(T * s)``.

    Parameters
    ----------
    masks
        The mask logits ``s``: a tensor, an iterable or mapping of tensors, or an object
        with a ``mask_logits`` attribute (or method) giving one of those. Read at each
        ``loss()`` call, so masks added later are counted.
    lam
        Weight of the term (``1e-6`` in seed 000's script).
    temperature
        ``T``. ``None`` (default) reads ``masks.temperature`` at each call when the
        object has a number there (so an annealing masker drives it), else uses 1. Set the
        attribute to anneal it yourself: ``l0.temperature = 200 ** (e / (E - 1))``.

    Examples
    --------
    >>> s = torch.tensor([0.0, 2.0, -2.0])
    >>> l0 = MaskL0(s, lam=1.0, temperature=1.0)
    >>> round(float(l0.loss()), 4)   # sigmoid(0) + sigmoid(2) + sigmoid(-2)
    1.5
    """

    _constraints = {
        "lam": Interval(None, None),
        "temperature": Interval(0, None, closed="neither", allow_none=True),
    }

    def __init__(self, masks: Any, *, lam: float = 1.0, temperature: float | None = None) -> None:
        self.masks = masks
        self.lam = lam
        self.temperature = temperature
        self._validate_params()

    def logits(self) -> list[torch.Tensor]:
        """The mask-logit tensors, in order."""
        source = self.masks
        if not isinstance(source, torch.Tensor) and hasattr(source, "mask_logits"):
            source = source.mask_logits
            if callable(source):
                source = source()
        if isinstance(source, torch.Tensor):
            found = [source]
        elif isinstance(source, Mapping):
            found = list(source.values())
        elif isinstance(source, Iterable):
            found = list(source)
        else:
            found = []
        if not found or not all(isinstance(t, torch.Tensor) for t in found):
            raise ConfigError(
                f"MaskL0 needs mask-logit tensors: a tensor, an iterable or mapping of "
                f"tensors, or an object with `mask_logits`; got {type(self.masks).__name__}"
                f" giving {[type(t).__name__ for t in found] or 'nothing'}"
            )
        return found

    def current_temperature(self) -> float:
        """The temperature the next ``loss()`` uses."""
        if self.temperature is not None:
            return float(self.temperature)
        live = getattr(self.masks, "temperature", None)
        if isinstance(live, (int, float)) or (isinstance(live, torch.Tensor) and live.numel() == 1):
            return float(live)
        return 1.0

    def loss(self, *, labels: Any = None) -> torch.Tensor:
        """``lam`` times the sum of the soft mask values (``labels`` unused)."""
        return soft_mask_l0(self.logits(), temperature=self.current_temperature(), lam=self.lam)
