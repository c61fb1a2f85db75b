"""Objectives for mask training: what a subnetwork must do for its target unit.

An objective is any callable ``objective(act, labels, reference) -> scalar tensor``:
``act`` is the unit's activation under the current (soft) mask, ``labels`` the
batch's labels (or ``None``), ``reference`` the unmasked model's activation on the
same inputs (or ``None``). The attributes ``needs_labels`` / ``needs_reference``
(default ``False``) tell :class:`~polysdk.mask.ContinuousSparsification` what to
compute. Two are built in:

* :class:`Contrastive` (seed 000): binary cross-entropy with the unit's activation
  as the logit; label 1 for inputs of the chosen cluster, 0 for the other.
* :class:`Preserve` (circuit pruning): keep the unit's activation map as it was.

>>> round(float(Contrastive()(torch.zeros(2), torch.tensor([1, 0]), None)), 6)  # log 2
0.693147
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from polysdk.errors import ConfigError

__all__ = ["Contrastive", "Preserve", "resolve_objective"]


class Contrastive:
    """``BCEWithLogits(act, labels)``: the subnetwork separates the two clusters.

    ``act`` must be one value per input: pass a ``position`` to the masker, or the
    remaining axes are reduced by ``reduce`` (``"mean"``, ``"max"`` or ``"sum"``).
    Labels are 0/1 (inputs labelled otherwise must be dropped before, as the masker
    does with noise ``-1``).
    """

    needs_labels = True
    needs_reference = False
    name = "contrastive"

    def __init__(self, reduce: Literal["mean", "max", "sum"] = "mean") -> None:
        if reduce not in ("mean", "max", "sum"):
            raise ConfigError(f"reduce must be 'mean', 'max' or 'sum', got {reduce!r}")
        self.reduce = reduce

    def logits(self, act: torch.Tensor) -> torch.Tensor:
        if act.ndim == 1:
            return act
        flat = act.flatten(1)
        if self.reduce == "mean":
            return flat.mean(1)
        if self.reduce == "sum":
            return flat.sum(1)
        return flat.amax(1)

    def __call__(
        self, act: torch.Tensor, labels: torch.Tensor | None, reference: torch.Tensor | None
    ) -> torch.Tensor:
        if labels is None:
            raise ConfigError("the contrastive objective needs labels: call fit(x, labels)")
        return F.binary_cross_entropy_with_logits(self.logits(act), labels.to(act.dtype))

    def __repr__(self) -> str:
        return f"Contrastive(reduce={self.reduce!r})"


class Preserve:
    """Keep the unit's activation (map) as the unmasked model has it.

    ``loss = mean((act - reference)^2)``, divided by ``mean(reference^2)`` when
    ``normalize`` (so the value is scale-free: 1 for a silent subnetwork).
    """

    needs_labels = False
    needs_reference = True
    name = "preserve"

    def __init__(self, normalize: bool = True, eps: float = 1e-12) -> None:
        self.normalize = normalize
        self.eps = eps

    def __call__(
        self, act: torch.Tensor, labels: torch.Tensor | None, reference: torch.Tensor | None
    ) -> torch.Tensor:
        if reference is None:
            raise ConfigError("the preserve objective needs the unmasked activation as reference")
        err = (act - reference).pow(2).mean()
        if self.normalize:
            err = err / (reference.pow(2).mean() + self.eps)
        return err

    def __repr__(self) -> str:
        return f"Preserve(normalize={self.normalize})"


def resolve_objective(objective: object):  # noqa: ANN201
    """``"contrastive"`` / ``"preserve"`` / a callable -> a callable objective."""
    if isinstance(objective, str):
        table = {"contrastive": Contrastive, "preserve": Preserve}
        if objective not in table:
            raise ConfigError(
                f"unknown objective {objective!r}; use 'contrastive', 'preserve' or a "
                f"callable (act, labels, reference) -> loss"
            )
        return table[objective]()
    if not callable(objective):
        raise ConfigError(f"objective must be a name or a callable, got {type(objective).__name__}")
    return objective
