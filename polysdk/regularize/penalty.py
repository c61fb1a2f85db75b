"""The polysemanticity penalty of seed 001, as a function and as a hooked regularizer.

For each chosen site, each example's activation vector ``x_i`` (flattened) is divided
by its own maximum *absolute* value plus ``eps``, ``x_i / (max_k |x_ik| + eps)``, as the
original Keras code does (``K.max(K.abs(x))``, ``eps = 1e-9``; not min-max). On ReLU
sites that is the plain maximum and the result lies in [0, 1]; on signed sites
(pre-activations, GELU, a LayerNorm'd SoLU ``hook_post``) it lies in [-1, 1], and an
all-zero example stays 0 instead of dividing by ~0.
For every unordered pair ``i < j`` of the batch whose labels differ, the dot product
``x_i . x_j`` is added; the sum runs over pairs and sites and is divided once by
``C(batch, 2)``::

    loss = alpha / C(B, 2) * sum_sites sum_{i<j, y_i != y_j} x_i . x_j

``mode="soft"`` is the seed's penalty. ``mode="hard"`` is the seed's proposed next
step: the vectors are binarised (a unit fired, ``x > threshold``, or not); the
forward value uses the binary vectors and the gradient is the soft one
(straight-through). ``alpha < 0`` encourages polysemanticity.

The computation is one Gram matrix per site (``X @ X.T``, masked by ``y_i != y_j``),
no loop over pairs; :func:`polysemanticity_penalty_naive` is the double loop kept as a
reference for tests and ``benchmarks/penalty.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from polysdk.errors import ConfigError
from polysdk.params import Interval, Options
from polysdk.regularize.base import ActivationRegularizer
from polysdk.sites import Capture, SiteSpec, TensorKey

__all__ = [
    "PolysemanticityPenalty",
    "normalise_by_max",
    "polysemanticity_penalty",
    "polysemanticity_penalty_naive",
]

Mode = Literal["soft", "hard"]


def _as_labels(labels: Any, batch: int) -> torch.Tensor:
    """Return 1-D labels; a 2-D one-hot (or probability) matrix becomes its argmax."""
    y = torch.as_tensor(labels)
    if y.ndim == 2:
        y = y.argmax(dim=1)
    if y.ndim != 1 or y.shape[0] != batch:
        raise ConfigError(
            f"labels must have one entry per example (shape ({batch},) or one-hot "
            f"({batch}, n_classes)), got shape {tuple(y.shape)}; pass the labels of the "
            f"batch that was just run through the model"
        )
    return y


def _check_mode(mode: str) -> None:
    if mode not in ("soft", "hard"):
        raise ConfigError(f"mode must be 'soft' or 'hard', got {mode!r}")


def normalise_by_max(
    x: torch.Tensor,
    *,
    mode: Mode = "soft",
    eps: float = 1e-9,
    threshold: float = 0.0,
) -> torch.Tensor:
    """Flatten ``x`` to ``(batch, features)`` and rescale each row as the penalty does.

    ``soft``: each row divided by its own maximum absolute value + ``eps`` (the
    original's ``K.max(K.abs(x))``). ``hard``: rows binarised (``x > threshold``) in
    the forward value, with the soft row's gradient.

    >>> normalise_by_max(torch.tensor([[-1.0, -2.0], [0.0, 0.0]])).tolist()
    [[-0.5, -1.0], [0.0, 0.0]]
    """
    _check_mode(mode)
    flat = x.reshape(x.shape[0], -1)
    soft = flat / (flat.abs().max(dim=1, keepdim=True).values + eps)
    if mode == "soft":
        return soft
    hard = (flat > threshold).to(soft.dtype)
    return soft + (hard - soft).detach()


def polysemanticity_penalty(
    activations: torch.Tensor | Sequence[torch.Tensor],
    labels: Any,
    *,
    alpha: float = 1.0,
    mode: Mode = "soft",
    eps: float = 1e-9,
    threshold: float = 0.0,
) -> torch.Tensor:
    """The penalty for one tensor or a sequence of tensors (one per site), vectorised.

    Each tensor has the batch on its first axis; other axes are flattened. Returns a
    scalar tensor that carries the gradient of the activations. A batch of fewer than
    two examples has no pairs and gives 0.

    >>> x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    >>> float(polysemanticity_penalty(x, [0, 1, 1]))   # (1 + 0) / C(3, 2)
    0.3333333432674408
    """
    tensors = [activations] if isinstance(activations, torch.Tensor) else list(activations)
    if not tensors:
        raise ConfigError("polysemanticity_penalty needs at least one activation tensor")
    batch = tensors[0].shape[0]
    y = _as_labels(labels, batch).to(tensors[0].device)
    different = y[:, None] != y[None, :]  # symmetric, false on the diagonal
    n_pairs = batch * (batch - 1) // 2
    total = tensors[0].new_zeros(())
    for x in tensors:
        if x.shape[0] != batch:
            raise ConfigError(
                f"every site must hold the same batch: got {x.shape[0]} examples at one "
                f"site and {batch} at the first; record all sites from the same forward pass"
            )
        z = normalise_by_max(x, mode=mode, eps=eps, threshold=threshold)
        gram = z @ z.T
        # each unordered pair appears twice in the symmetric mask
        total = total + gram.masked_fill(~different, 0.0).sum() / 2
    if n_pairs == 0:
        return total * 0.0
    return alpha * total / n_pairs


def polysemanticity_penalty_naive(
    activations: torch.Tensor | Sequence[torch.Tensor],
    labels: Any,
    *,
    alpha: float = 1.0,
    mode: Mode = "soft",
    eps: float = 1e-9,
    threshold: float = 0.0,
) -> torch.Tensor:
    """The same penalty written as the seed's double loop over pairs (a reference).

    Slow on purpose: used to check :func:`polysemanticity_penalty` and as the baseline
    of ``benchmarks/penalty.py``.
    """
    _check_mode(mode)
    tensors = [activations] if isinstance(activations, torch.Tensor) else list(activations)
    batch = tensors[0].shape[0]
    y = _as_labels(labels, batch)
    total = tensors[0].new_zeros(())
    for x in tensors:
        for i in range(batch):
            xi = x[i].reshape(-1)
            if mode == "soft":
                zi = xi / (xi.abs().max() + eps)
            else:
                zi = (xi > threshold).to(x.dtype)
            for j in range(i + 1, batch):
                if y[i] == y[j]:
                    continue
                xj = x[j].reshape(-1)
                if mode == "soft":
                    zj = xj / (xj.abs().max() + eps)
                else:
                    zj = (xj > threshold).to(x.dtype)
                total = total + torch.dot(zi, zj)
    n_pairs = batch * (batch - 1) // 2
    if n_pairs == 0:
        return total * 0.0
    return alpha * total / n_pairs


class PolysemanticityPenalty(ActivationRegularizer):
    """Seed 001's penalty on the live activations of chosen sites.

    Attach it (``with`` or ``attach()``), run the forward pass, then call
    ``loss(labels=y)`` with the batch's labels; the result keeps the activations'
    gradient, so ``(task_loss + reg.loss(labels=y)).backward()`` trains against it.
    Activations with more than two axes (positions, spatial maps) are flattened per
    example.

    Parameters
    ----------
    model, sites, capture, key
        As for every hooked component (:class:`polysdk.sites.HookedComponent`).
    alpha
        Weight; ``1`` penalises, ``0`` is the control, ``-1`` encourages.
    mode
        ``"soft"`` (the seed's) or ``"hard"`` (binarised, straight-through gradient).
    eps
        Added to each example's maximum absolute value before dividing (the
        original's 1e-9; it keeps an all-zero example at 0).
    threshold
        ``hard`` mode only: a unit fired when its activation is above this.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    >>> with PolysemanticityPenalty(net, "1", alpha=1.0) as reg:
    ...     logits = net(x)
    ...     loss = torch.nn.functional.cross_entropy(logits, y) + reg.loss(labels=y)
    >>> loss.backward()
    """

    _constraints = {
        "alpha": Interval(None, None),
        "mode": Options("soft", "hard"),
        "eps": Interval(0, None),
        "threshold": Interval(None, None),
    }

    def __init__(
        self,
        model: Any,
        sites: SiteSpec | Sequence[SiteSpec],
        *,
        alpha: float = 1.0,
        mode: Mode = "soft",
        eps: float = 1e-9,
        threshold: float = 0.0,
        capture: Capture = "output",
        key: TensorKey = None,
    ) -> None:
        self.alpha = alpha
        self.mode = mode
        self.eps = eps
        self.threshold = threshold
        super().__init__(model, sites, capture=capture, key=key)

    def term(self, activations: dict[str, torch.Tensor], labels: Any) -> torch.Tensor:
        """The penalty over the activations of one forward pass, for ``labels``."""
        if labels is None:
            raise ConfigError(
                "PolysemanticityPenalty.loss needs the batch's labels: call "
                "reg.loss(labels=y) with the labels of the examples just run through the model"
            )
        return polysemanticity_penalty(
            list(activations.values()),
            labels,
            alpha=self.alpha,
            mode=self.mode,
            eps=self.eps,
            threshold=self.threshold,
        )
