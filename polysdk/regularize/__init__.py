"""Regularizers: loss terms computed from live activations (or masks) during training.

>>> import torch
>>> from polysdk.regularize import PolysemanticityPenalty
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])
>>> with PolysemanticityPenalty(net, "1", alpha=1.0) as reg:
...     loss = torch.nn.functional.cross_entropy(net(x), y) + reg.loss(labels=y)

* :class:`PolysemanticityPenalty` (seed 001; ``mode="soft"`` or ``"hard"``)
* :class:`ActivationL1` (L1 on activations)
* :class:`MaskL0` (``lam * sum sigmoid(T * s)`` for continuous sparsification)

Every regularizer has one ``loss(*, labels=None)`` (labels are ignored by those that
need none) and the parameter API (``get_params``, ``set_params``, ``clone``, ``repr``;
bad values raise ``ConfigError``).

Each hooked regularizer keeps the *live* tensors of its sites from the last forward
pass, so ``loss = task_loss + reg.loss(labels=y)`` back-propagates into the model; the
hooks are removed when the ``with`` block ends, however it ends, and ``reg.inactive()``
turns the term off (``loss()`` is 0) with the hooks left in place.
"""

from polysdk.regularize.base import ActivationRegularizer, Regularizer, UnhookedRegularizer
from polysdk.regularize.losses import ActivationL1, MaskL0, activation_l1, soft_mask_l0
from polysdk.regularize.penalty import (
    PolysemanticityPenalty,
    normalise_by_max,
    polysemanticity_penalty,
    polysemanticity_penalty_naive,
)

__all__ = [
    "ActivationL1",
    "ActivationRegularizer",
    "MaskL0",
    "PolysemanticityPenalty",
    "Regularizer",
    "UnhookedRegularizer",
    "activation_l1",
    "normalise_by_max",
    "polysemanticity_penalty",
    "polysemanticity_penalty_naive",
    "soft_mask_l0",
]
