"""Objectives for mask training: what a subnetwork must do for its target unit.

An objective is any callable ``objective(act, labels, reference) -> scalar tensor``:
``act`` is the unit's activation under the current (soft) mask, ``labels`` the
batch's labels (or ``None``), ``reference`` the unmasked model's activation on the
same inputs (or ``None``). The attributes ``needs_labels`` / ``needs_reference``
(default ``False``) tell :class:`~polysdk.mask.ContinuousSparsification` what to
compute. When the unit's value keeps the positions of padded text (``position=None``
on a batch with an ``attention_mask``), the objective is called with ``mask=``, a
bool tensor that broadcasts against ``act``, true on real tokens; an objective
without a ``mask`` parameter is then refused (choose ``position="mean"`` or ``-1``,
or take ``mask``). Two are built in, both honouring the mask:

* :class:`Contrastive` (seed 000): binary cross-entropy with the unit's activation
  as the logit; label 1 for inputs of the chosen cluster, 0 for the other.
* :class:`Preserve` (circuit pruning): keep the unit's activation map as it was.

>>> round(float(Contrastive()(torch.zeros(2), torch.tensor([1, 0]), None)), 6)  # log 2
0.693147
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
import torch.nn.functional as F

from polysdk.errors import ConfigError

__all__ = ["Contrastive", "Preserve", "call_objective", "resolve_objective"]


class Contrastive:
    """``BCEWithLogits(act, labels)``: the subnetwork separates the two clusters.

    ``act`` must be one value per input: pass a ``position`` to the masker, or the
    remaining axes are reduced by ``reduce`` (``"mean"``, ``"max"`` or ``"sum"``; over
    the real tokens only when a ``mask`` comes with them).
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

    def logits(self, act: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """One logit per input: ``act`` itself, or its other axes reduced (real
        entries only where ``mask`` is given)."""
        if act.ndim == 1:
            return act
        flat = act.flatten(1)
        if mask is not None:
            keep = mask.expand_as(act).flatten(1)
            if self.reduce == "max":
                return flat.masked_fill(~keep, float("-inf")).amax(1)
            total = flat.masked_fill(~keep, 0.0).sum(1)
            return total if self.reduce == "sum" else total / keep.sum(1).clamp(min=1).to(total.dtype)
        if self.reduce == "mean":
            return flat.mean(1)
        if self.reduce == "sum":
            return flat.sum(1)
        return flat.amax(1)

    def __call__(
        self, act: torch.Tensor, labels: torch.Tensor | None, reference: torch.Tensor | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if labels is None:
            raise ConfigError("the contrastive objective needs labels: call fit(x, labels)")
        return F.binary_cross_entropy_with_logits(self.logits(act, mask), labels.to(act.dtype))

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
        self, act: torch.Tensor, labels: torch.Tensor | None, reference: torch.Tensor | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if reference is None:
            raise ConfigError("the preserve objective needs the unmasked activation as reference")
        if mask is not None:  # real entries only
            keep = mask.expand_as(act)
            act, reference = act[keep], reference[keep]
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


def _takes_mask(objective: Any) -> bool:
    try:
        params = inspect.signature(objective).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "mask" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def call_objective(objective: Any, act: torch.Tensor, labels: torch.Tensor | None,
                   reference: torch.Tensor | None, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``objective(act, labels, reference)``, with ``mask=`` when padding must be skipped."""
    if mask is None:
        return objective(act, labels, reference)
    if not _takes_mask(objective):
        raise ConfigError(
            f"objective {objective!r} would see padded positions: the unit's value keeps the "
            f"position dim of text batches with an attention_mask; give the masker a position "
            f"(position='mean', 'max' or -1) or let the objective take mask= (a bool tensor "
            f"that broadcasts against act, true on real tokens)"
        )
    return objective(act, labels, reference, mask=mask)
