"""Pruning saliencies for one target unit: the circuit-pruning baselines of seed 000.

The *target* is the unit's activation map collapsed to one number: ``"sum_abs"``
(sum of ``|a|`` over inputs and positions) or ``"max"`` (the max over positions of
each input, summed over inputs). Scores are per weight, per kernel ``[out, in]`` or
per filter ``[out]``; biases are never scored (they stay unmasked). ``scores_`` are
normalised by their global sum, and :meth:`masks_for` keeps one global top-k across
layers; densities count the scored elements that reach the target (non-zero first
score, ``n_reachable_``), as circuit pruning does::

    snip = SNIP(alexnet, "features.10", unit=255, params="features.*").fit(images)
    masks = snip.masks_for(0.05)                    # {param: bool mask of its shape}
    force = FORCE(alexnet, "features.10", unit=255, params="features.*", density=0.05).fit(images)
    ActGrad(alexnet, "features.10", unit=255, structure="kernel").fit(images).scores_
    SNIP(bert, "encoder.layer.1.intermediate", unit=7, position="mean").fit(text_batches)
    snip = SNIP(alexnet, "features.10", unit=255, density=0.05).fit(images)
    snip.masks_, snip.density_                      # every Masker's fitted attributes
    with snip.masked():                             # the model runs as the subnetwork
        alexnet(images)

Data is what :class:`polysdk.probe.Probe` takes: a tensor, a tuple ``(x, label, ...)``
or a dict of model keyword arguments (``input_ids``, ``attention_mask``, ...), split
into batches of ``batch_size``, or an iterable of such batches (dynamically padded
dicts). ``position`` selects the target site's other dims by name (``dims=`` names
them; :class:`polysdk.dims.Selection`): ``None`` keeps them, ``"centre"`` (or
``"center"``), ``"mean"``, ``"max"``, ``-1``, ``(6, 6)``. Padding never counts: on a
batch with an ``attention_mask``, ``"mean"`` is the mean over real tokens, ``-1`` each
text's last real token, the target's sum and max skip padded positions, and
ActGrad's means over positions count real tokens only.

* ``ActGrad``: kernel ``(o, i)``: ``sum_images mean_positions |c_oi * dT/dz_o|`` with
  ``c_oi`` the map kernel ``(o, i)`` adds to output channel ``o``; filter ``o``:
  ``sum_images mean_positions |z_o * dT/dz_o|``.
* ``SNIP``: ``|w * dT/dw|`` with ``T`` the target summed over all inputs; kernel or
  filter structure averages ``|w * dT/dw|`` over the kernel (filter).
* ``FORCE``: iterative SNIP through a mask ``m`` (score ``|dT/dm|``, non-zero for a
  pruned weight too, so it may come back) over ``steps`` rounds keeping
  ``k_t = ceil(exp(t/T log K + (1 - t/T) log N))`` elements, ``t = 1..T``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from polysdk._util import progress_bar
from polysdk.errors import ConfigError, NotFittedError
from polysdk.mask._core import (
    SiteReader,
    eval_mode,
    expand_mask,
    masked_call,
    model_device,
    select_parameters,
)
from polysdk.mask._data import Batch, Target, iter_batches
from polysdk.mask.base import Masker
from polysdk.params import Interval, Options, TypeOf
from polysdk.sites import SiteSpec, TensorKey

__all__ = ["FORCE", "SNIP", "SaliencyMasker", "collapse_target", "force_schedule", "structure_scores",
           "topk_masks"]

Structure = Literal["weight", "kernel", "filter"]


def collapse_target(act: torch.Tensor, reduce: str = "sum_abs", *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The unit's map ``[batch, *positions]`` collapsed to one number.

    ``mask`` (a bool tensor that broadcasts against ``act``, true on real tokens)
    leaves padding out of the sum and of each input's max.

    >>> collapse_target(torch.tensor([[1.0, -3.0], [2.0, 0.5]]), "sum_abs")
    tensor(6.5000)
    >>> collapse_target(torch.tensor([[1.0, -3.0], [2.0, 0.5]]), "max")
    tensor(3.)
    >>> collapse_target(torch.tensor([[1.0, -3.0], [2.0, 0.5]]), "max", mask=torch.tensor([[True], [False]]))
    tensor(1.)
    """
    if reduce not in ("sum_abs", "max"):
        raise ConfigError(f"reduce must be 'sum_abs' or 'max', got {reduce!r}")
    if mask is not None:
        keep = mask.expand_as(act)
        if reduce == "sum_abs":
            return act.abs().masked_fill(~keep, 0.0).sum()
        per_input = act.masked_fill(~keep, float("-inf")).reshape(len(act), -1).amax(1)
        return per_input[keep.reshape(len(act), -1).any(1)].sum()  # an input with no real token adds 0
    if reduce == "sum_abs":
        return act.abs().sum()
    return act.reshape(len(act), -1).amax(1).sum()


def structure_scores(score: torch.Tensor, structure: Structure) -> torch.Tensor:
    """Average per-weight scores over each kernel (``[O, I]``) or filter (``[O]``)."""
    if structure == "weight" or score.ndim <= {"kernel": 2, "filter": 1}[structure]:
        return score
    keep = 2 if structure == "kernel" else 1
    return score.reshape(*score.shape[:keep], -1).mean(-1)


def topk_masks(scores: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """One global top-``k`` over every score tensor: ``{name: bool, score's shape}``.

    >>> m = topk_masks({"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([2.0, 0.5])}, 2)
    >>> m["a"].tolist(), m["b"].tolist()
    ([True, False], [True, False])
    """
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1).float() for n in names])
    if not 0 <= k <= flat.numel():
        raise ConfigError(f"k={k} is outside 0..{flat.numel()} (the number of scored elements)")
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, k, sorted=False).indices] = True
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[start : start + size].reshape(scores[n].shape)
        start += size
    return out


def force_schedule(n_total: int, n_keep: int, steps: int) -> list[int]:
    """FORCE's exponential schedule of kept counts (``t = 1..steps``), ending at ``n_keep``.

    >>> force_schedule(1000, 10, 2)
    [100, 10]
    """
    if not 0 < n_keep <= n_total or steps < 1:
        raise ConfigError(f"need 0 < n_keep <= n_total and steps >= 1, got {n_keep}, {n_total}, {steps}")
    out = []
    for t in range(1, steps + 1):
        value = math.exp(t / steps * math.log(n_keep) + (1 - t / steps) * math.log(n_total))
        out.append(min(n_total, math.ceil(value - 1e-9)))
    return out


class SaliencyMasker(Masker):
    """Shared parameters, fitting loop and mask making of the saliency maskers.

    Subclasses list every parameter in their ``__init__`` signature and call
    ``self._store(locals())``; ``fit`` scores (``scores_``) and, when ``density`` is
    set, keeps the global top share as ``masks_``.
    """

    _constraints = {
        "reduce": Options("sum_abs", "max"),
        "batch_size": Interval(1, None, integer=True),
        "density": Interval(0, 1, closed="right", allow_none=True),
        "stop_at_target": TypeOf(bool),
        "progress": TypeOf(bool),
    }

    def _store(self, values: dict[str, Any]) -> None:
        for name in self._param_names():
            setattr(self, name, values[name])
        self._validate_params()

    def _fit_hint(self) -> str:
        if getattr(self, "density", None) is None and hasattr(self, "scores_"):
            return (f"it was fitted with density=None (scores only); pass density= (or "
                    f"set_params(density=...) and fit again), or use masks_for(density)")
        return "call fit(x) first"

    def _reset(self) -> None:
        for attr in ("n_reachable_", "scores_", "total_score_", "masks_"):
            self.__dict__.pop(attr, None)

    def _reader(self) -> SiteReader:
        return SiteReader(self.model, self.target, stop=self.stop_at_target, capture=self.capture, key=self.key)

    def _params(self) -> dict[str, nn.Parameter]:
        return select_parameters(self.model, self.params, kinds=("weight",), min_ndim=2)

    def _spec(self, site: str) -> Target:
        return Target(site, self.unit, self.position, self.dims)

    def _target(self, reader: SiteReader, act: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The scalar ``T`` of one batch: the unit's value collapsed, padding left out."""
        value = self._spec(reader.site).value(act, batch.mask)
        return collapse_target(value.values, self.reduce, mask=value.real())

    def _finish(self, raw: dict[str, torch.Tensor]) -> None:
        raw = {n: s for n, s in raw.items() if bool((s > 0).any())}
        if not raw:
            raise ConfigError(
                f"every score is zero: no selected weight (params={self.params!r}) reaches "
                f"{self.target!r} unit {self.unit} on these inputs"
            )
        self.total_score_ = float(sum(float(s.sum()) for s in raw.values()))
        self.scores_ = {n: (s / self.total_score_).cpu() for n, s in raw.items()}
        if not hasattr(self, "n_reachable_"):
            self.n_reachable_ = sum(int((s > 0).sum()) for s in self.scores_.values())

    def _keep_top(self) -> None:
        if self.density is not None:
            self.masks_ = self.masks_for(self.density)

    def _check_scored(self) -> None:
        if not hasattr(self, "scores_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit(x) first")

    def n_keep(self, density: float) -> int:
        """Elements kept at ``density`` of the reachable ones (at least 1)."""
        if not 0 < density <= 1:
            raise ConfigError(f"density must be in (0, 1], got {density}")
        return max(1, math.ceil(density * self.n_reachable_ - 1e-9))

    def masks_for(self, density: float | None = None, *, k: int | None = None, x: Any = None) -> dict[str, torch.Tensor]:
        """Binary masks of each scored parameter's shape keeping the global top-k
        (``k``, or ``density`` of ``n_reachable_``)."""
        self._check_scored()
        if k is None:
            if density is None:
                raise ConfigError("give density= or k=")
            k = self.n_keep(density)
        shapes = dict(self._params())
        picked = topk_masks(self.scores_, min(k, sum(s.numel() for s in self.scores_.values())))
        return {n: expand_mask(m, shapes[n].shape).clone() for n, m in picked.items()}


class _MaskGradient(SaliencyMasker):
    """SNIP and FORCE: scores are ``|dT/dm|`` through a per-weight mask ``m``."""

    _constraints = {**SaliencyMasker._constraints, "structure": Options("weight", "kernel", "filter")}

    def _mask_scores(self, x: Any, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        self._validate_params()
        device = model_device(self.model)
        params = self._params()
        grads = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        with eval_mode(self.model), self._reader() as reader:
            for batch in progress_bar(iter_batches(x, self.batch_size), show=self.progress,
                                      desc=type(self).__name__):
                b = batch.to(device)
                m = {
                    n: (expand_mask(masks[n].to(device), p.shape).to(p.dtype) if masks is not None and n in masks
                        else torch.ones_like(p)).detach().requires_grad_(True)
                    for n, p in params.items()
                }
                act = reader.run(lambda: masked_call(self.model, m, *b.args, detach=True, **b.kwargs))
                target = self._target(reader, act, b)
                got = torch.autograd.grad(target, list(m.values()), allow_unused=True)
                for n, g in zip(m, got):
                    if g is not None:
                        grads[n] += g.float()
        return {n: structure_scores(g.abs(), self.structure) for n, g in grads.items()}


class SNIP(_MaskGradient):
    """SNIP saliency ``|w * dT/dw|`` of every weight (or kernel/filter average).

    ``density`` (optional): ``fit`` also keeps that share of the reachable elements
    as ``masks_`` (otherwise pick any density later with :meth:`masks_for`).

    >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> s = SNIP(net, "2", unit=0, density=0.5).fit(torch.randn(8, 3))
    >>> round(sum(float(v.sum()) for v in s.scores_.values()), 6)
    1.0
    >>> 0 < s.density_ <= 0.5
    True
    """

    def __init__(
        self,
        model: Any,
        target: SiteSpec,
        unit: int | None = None,
        *,
        position: Any = None,
        dims: Sequence[str] | None = None,
        params: SiteSpec | Sequence[SiteSpec] = "**",
        structure: Structure = "weight",
        density: float | None = None,
        reduce: Literal["sum_abs", "max"] = "sum_abs",
        batch_size: int = 32,
        stop_at_target: bool = True,
        capture: Literal["output", "input"] = "output",
        key: TensorKey = None,
        progress: bool = False,
    ) -> None:
        self._store(locals())

    def fit(self, x: Any) -> SNIP:
        self._reset()
        self._finish(self._mask_scores(x))
        self._keep_top()
        return self


class FORCE(_MaskGradient):
    """FORCE: iterative SNIP with an exponential schedule, to ``density`` of the
    reachable elements in ``steps`` rounds. ``masks_`` is the final mask; pruned
    weights are re-scored each round and may come back.
    """

    _constraints = {
        **_MaskGradient._constraints,
        "density": Interval(0, 1, closed="right"),
        "steps": Interval(1, None, integer=True),
    }

    def __init__(
        self,
        model: Any,
        target: SiteSpec,
        unit: int | None = None,
        *,
        position: Any = None,
        dims: Sequence[str] | None = None,
        params: SiteSpec | Sequence[SiteSpec] = "**",
        structure: Structure = "weight",
        density: float = 0.1,
        steps: int = 10,
        reduce: Literal["sum_abs", "max"] = "sum_abs",
        batch_size: int = 32,
        stop_at_target: bool = True,
        capture: Literal["output", "input"] = "output",
        key: TensorKey = None,
        progress: bool = False,
    ) -> None:
        self._store(locals())

    def fit(self, x: Any) -> FORCE:
        self._reset()
        self._finish(self._mask_scores(x))
        shapes = self._params()
        self.schedule_ = force_schedule(self.n_reachable_, self.n_keep(self.density), self.steps)
        self.history_: list[dict[str, float]] = []
        for k in self.schedule_:
            picked = topk_masks(self.scores_, k)
            prev = picked
            raw = self._mask_scores(x, {n: expand_mask(m, shapes[n].shape) for n, m in picked.items()})
            raw = {n: raw[n] for n in self.scores_}
            total = float(sum(float(s.sum()) for s in raw.values())) or 1.0
            self.scores_ = {n: (s / total).cpu() for n, s in raw.items()}
            self.total_score_ = total
            self.history_.append({"kept": k, "target_grad_mass": total})
        self.masks_ = self.masks_for(k=self.schedule_[-1])
        self.revived_ = sum(
            int((self.masks_[n] & ~expand_mask(prev[n], shapes[n].shape)).sum()) for n in self.masks_
        )
        return self

    def masks_for(self, density: float | None = None, *, k: int | None = None, x: Any = None) -> dict[str, torch.Tensor]:
        """Top-k of the final round's scores; for another ``density`` pass ``x`` to
        run FORCE again at that density (FORCE's mask depends on its schedule)."""
        if density is not None and x is not None and density != self.density:
            return self.clone(density=density).fit(x).masks_
        return super().masks_for(density, k=k)
