"""Continuous sparsification (Savarese, Silva, Maire 2020) for one target unit.

A learnable logit ``s`` per masked element (or per conv kernel); the soft mask is
``sigmoid(T * s)``; the model's weights stay frozen; the loss is the objective on the
target unit plus ``lam * sum(soft weight masks)``; the temperature ``T`` grows each
epoch from ``T0`` to ``T1`` (``T_e = T0 * (T1 / T0) ** (e / (E - 1))``, seed 000: 1 to
200); the final binary mask is ``s > 0``::

    cs = ContinuousSparsification(alexnet, "features.10", unit=255, position=(6, 6),
                                  params="features.*", epochs=160, milestones=(130, 150))
    cs.fit(images, cluster_labels)                # 1 = chosen cluster, 0 = other, -1 dropped
    cs.masks_["features.0.weight"]                # bool, the parameter's shape
    cs.result_                                    # xr.Dataset: masks, densities, objective
    cs.save(store, "subnetwork/features.10/255/a")

The masked weights exist only during each call (:func:`polysdk.mask.swapped_parameters`,
which, unlike ``torch.func.functional_call``, is safe for models that register one
submodule under two names, as TransformerLens bridges do); no hook is added to the
model except the one that reads the target (through :mod:`polysdk.sites`), and that
hook ends the forward pass at the target (``stop_at_target``).
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch

from polysdk._util import progress_bar
from polysdk.errors import ConfigError
from polysdk.mask._core import SiteReader, eval_mode, expand_mask, masked_call, model_device, select_parameters
from polysdk.mask._data import (Batch, Target, TargetValue, cat_values, iter_batches, labelled_batches,
                                labelled_source)
from polysdk.mask.base import Masker
from polysdk.mask.io import masks_to_dataset
from polysdk.mask.objectives import Contrastive, call_objective, resolve_objective
from polysdk.params import Interval, Options, Satisfies, TypeOf
from polysdk.regularize.losses import soft_mask_l0
from polysdk.sites import SiteSpec, TensorKey

__all__ = ["ContinuousSparsification", "temperature_schedule"]

log = logging.getLogger(__name__)


def temperature_schedule(epochs: int, start: float = 1.0, end: float = 200.0) -> list[float]:
    """``T_e = start * (end / start) ** (e / (epochs - 1))`` for ``e = 0 .. epochs-1``.

    >>> [round(t, 6) for t in temperature_schedule(3, 1.0, 100.0)]
    [1.0, 10.0, 100.0]
    """
    if epochs < 1 or start <= 0 or end <= 0:
        raise ConfigError(
            f"need epochs >= 1 and positive temperatures, got epochs={epochs}, "
            f"start={start}, end={end}"
        )
    if epochs == 1:
        return [float(start)]
    return [start * (end / start) ** (e / (epochs - 1)) for e in range(epochs)]


def _positive_pair(value: Any) -> bool:
    try:
        return len(value) == 2 and all(float(t) > 0 for t in value)
    except (TypeError, ValueError):
        return False


def _int_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, numbers.Integral) and v >= 0 for v in value)


_BOOL = TypeOf(bool)


class ContinuousSparsification(Masker):
    """Learn a sparse binary mask over ``params`` that serves one target unit.

    Parameters
    ----------
    model : the network (its weights are frozen: they get no gradient).
    target : the site whose output holds the unit (e.g. the conv, pre-ReLU).
    unit, position, dims : which value of the site: ``dims`` names the site tensor's
        axes (default :func:`polysdk.dims.default_dims`), ``position`` selects the
        others (:class:`polysdk.dims.Selection`: ``None`` keeps them, ``"centre"`` or
        ``"center"``, ``"mean"``, ``"max"``, ``-1``, ``(6, 6)``). On text batches with
        an ``attention_mask`` padding never counts (``"mean"`` over real tokens, ``-1``
        the last real token; kept positions reach the objective with the mask).
    params : site spec of the modules whose weights (and biases if ``mask_bias``) are
        masked; parameters that cannot reach the target are dropped (``unused_``).
    granularity : ``"weight"`` (one logit per element) or ``"kernel"`` (one per
        ``[out, in]`` kernel of a conv weight; biases stay per element).
    objective : ``"contrastive"`` (default), ``"preserve"`` or a callable
        ``(act, labels, reference) -> loss`` (see :mod:`polysdk.mask.objectives`).
    swap : train the other cluster's subnetwork (labels ``y -> 1 - y``).
    lam : weight of ``sum(sigmoid(T s))`` over weight masks (over all masks when
        ``penalize="all"``); a kernel logit counts once per weight it covers.
    s0, temperature : initial logit and the ``(T0, T1)`` schedule ends.
    epochs, lr, momentum, milestones, gamma, batch_size : SGD on the logits only, the
        learning rate times ``gamma`` at each milestone epoch.
    stop_at_target : end each forward pass at the target (see ``_core``).

    Attributes (after ``fit``)
    --------------------------
    masks_ : ``{param: bool tensor}`` of each parameter's shape (``s > 0``).
    logits_ : the learned logits (structured shape for kernels).
    history_ : one dict per epoch (``temperature``, ``objective``, ``penalty``,
        ``density`` of the binary mask, wall-clock ``seconds`` and ``steps``).
    objective_train_, objective_val_ : the objective with the binary mask (``nan``
        without ``x_val``); ``accuracy_train_``, ``accuracy_val_``: for the contrastive
        objective, the share of inputs on the right side of 0.
    unused_ : selected parameters that cannot reach the target (not masked).
    result_ : ``xr.Dataset`` of :func:`polysdk.mask.io.masks_to_dataset` with attrs.

    Examples
    --------
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    >>> x = torch.randn(64, 4); y = (x[:, 0] > 0).long()
    >>> cs = ContinuousSparsification(net, "2", unit=0, epochs=3, batch_size=16,
    ...                               progress=False).fit(x, y)
    >>> sorted(cs.masks_)
    ['0.bias', '0.weight', '2.bias', '2.weight']
    >>> with cs.masked():                  # the model runs as the subnetwork
    ...     _ = net(x)
    """

    _constraints = {
        "granularity": Options("weight", "kernel"),
        "penalize": Options("weights", "all"),
        "lam": Interval(0, None),
        "s0": Interval(None, None),
        "temperature": Satisfies(_positive_pair, "a pair (T0, T1) of positive temperatures"),
        "epochs": Interval(1, None, integer=True),
        "lr": Interval(0, None),
        "momentum": Interval(0, None),
        "milestones": Satisfies(_int_sequence, "a sequence of epoch numbers (ints >= 0)"),
        "gamma": Interval(0, None, closed="neither"),
        "batch_size": Interval(1, None, integer=True),
        "seed": Interval(None, None, integer=True),
        "mask_bias": _BOOL, "swap": _BOOL, "stop_at_target": _BOOL, "progress": _BOOL,
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
        granularity: Literal["weight", "kernel"] = "weight",
        mask_bias: bool = True,
        objective: Any = "contrastive",
        swap: bool = False,
        lam: float = 1e-6,
        penalize: Literal["weights", "all"] = "weights",
        s0: float = 0.0,
        temperature: tuple[float, float] = (1.0, 200.0),
        epochs: int = 160,
        lr: float = 0.1,
        momentum: float = 0.0,
        milestones: Sequence[int] = (130, 150),
        gamma: float = 0.1,
        batch_size: int = 32,
        stop_at_target: bool = True,
        capture: Literal["output", "input"] = "output",
        key: TensorKey = None,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.target = target
        self.unit = unit
        self.position = position
        self.dims = dims
        self.params = params
        self.granularity = granularity
        self.mask_bias = mask_bias
        self.objective = objective
        self.swap = swap
        self.lam = lam
        self.penalize = penalize
        self.s0 = s0
        self.temperature = temperature
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.milestones = milestones
        self.gamma = gamma
        self.batch_size = batch_size
        self.stop_at_target = stop_at_target
        self.capture = capture
        self.key = key
        self.seed = seed
        self.progress = progress
        self._validate_params()

    # ------------------------------------------------------------------ data
    def _source(self, x: Any, labels: Any, objective: Any) -> Any:
        return labelled_source(x, labels, objective, swap=self.swap)

    def _batches(self, source: Any, objective: Any, *, generator: torch.Generator | None = None,
                 shuffle: bool = False) -> Any:
        return labelled_batches(source, objective, self.batch_size, swap=self.swap,
                                generator=generator, shuffle=shuffle)

    def _read(self, reader: SiteReader, masks: dict[str, torch.Tensor] | None, batch: Batch) -> TargetValue:
        """The target's value on ``batch`` with ``masks`` (``None``: the full model)."""
        if masks is None:
            act = reader.run(lambda: batch.call(self.model))
        else:
            act = reader.run(lambda: masked_call(self.model, masks, *batch.args, detach=True, **batch.kwargs))
        return Target(reader.site, self.unit, self.position, self.dims).value(act, batch.mask)

    def _reader(self) -> SiteReader:
        return SiteReader(self.model, self.target, stop=self.stop_at_target, capture=self.capture, key=self.key)

    def _loss(self, objective: Any, reader: SiteReader, masks: dict[str, torch.Tensor], batch: Batch,
              needs_reference: bool) -> torch.Tensor:
        ref = None
        if needs_reference:
            with torch.no_grad():
                ref = self._read(reader, None, batch).values
        act = self._read(reader, masks, batch)
        return call_objective(objective, act.values, batch.label, ref, mask=act.real())

    def _soft(self, logits: dict[str, torch.Tensor], temp: float) -> dict[str, torch.Tensor]:
        return {n: torch.sigmoid(temp * s) for n, s in logits.items()}

    def _penalty(self, logits: dict[str, torch.Tensor], temp: float) -> torch.Tensor:
        """``lam * sum sigmoid(T s)`` through :func:`polysdk.regularize.soft_mask_l0`."""
        names = [
            n for n in logits
            if not (self.penalize == "weights" and n.rsplit(".", 1)[-1] == "bias")
        ]
        if not names:
            return torch.zeros((), device=next(iter(logits.values())).device)
        return soft_mask_l0(
            [logits[n] for n in names], temperature=temp, lam=self.lam,
            weights=[self._cover[n] for n in names],
        )

    # ------------------------------------------------------------------ fit
    def fit(
        self, x: Any, labels: Any = None, *, x_val: Any = None, labels_val: Any = None,
    ) -> ContinuousSparsification:
        """Train the mask logits on ``x`` (and ``labels`` for the contrastive objective).

        ``x`` is all inputs at once (a tensor, first axis = sample; a tuple ``(x,
        label)``; a dict of model keyword arguments), drawn in shuffled batches with a
        generator seeded by ``seed``; or an iterable of batches (a ``DataLoader``, a
        list of dynamically padded dicts), read in its own order each epoch, each batch
        carrying its labels. ``labels`` holds 1 (chosen cluster), 0 (the other) or -1
        (dropped, e.g. HDBSCAN noise). ``x_val``/``labels_val`` are the held-out inputs
        whose objective goes into ``objective_val_`` and ``result_``.
        """
        self._validate_params()
        objective = resolve_objective(self.objective)
        needs_ref = bool(getattr(objective, "needs_reference", False))
        device = model_device(self.model)
        kinds = ("weight", "bias") if self.mask_bias else ("weight",)
        params = select_parameters(self.model, self.params, kinds=kinds)
        source = self._source(x, labels, objective)
        gen = torch.Generator().manual_seed(self.seed)
        logits: dict[str, torch.Tensor] = {}
        self._cover: dict[str, int] = {}
        for name, p in params.items():
            shape = p.shape[:2] if self.granularity == "kernel" and p.ndim > 2 else p.shape
            logits[name] = torch.full(shape, float(self.s0), device=device, dtype=p.dtype, requires_grad=True)
            self._cover[name] = p[(0,) * len(shape)].numel() if len(shape) < p.ndim else 1
        temps = temperature_schedule(self.epochs, *self.temperature)
        self.history_: list[dict[str, float]] = []
        with eval_mode(self.model), self._reader() as reader:
            # drop parameters the target does not depend on (e.g. layers after it)
            first = next(iter(self._batches(source, objective)), None)
            if first is None:
                raise ConfigError("no inputs left to train on (the data was empty, or all labels were -1)")
            probe = self._loss(objective, reader, self._soft(logits, temps[0]), first.to(device), needs_ref)
            grads = torch.autograd.grad(probe, list(logits.values()), allow_unused=True)
            self.unused_ = [n for n, g in zip(logits, grads) if g is None]
            for name in self.unused_:
                log.info("parameter %s does not reach %s: not masked", name, self.target)
                del logits[name]
            if not logits:
                raise ConfigError(f"none of the parameters selected by params={self.params!r} reaches the target")
            opt = torch.optim.SGD(list(logits.values()), lr=self.lr, momentum=self.momentum)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(self.milestones), gamma=self.gamma)
            for epoch in progress_bar(range(self.epochs), show=self.progress, desc="mask training"):
                temp = temps[epoch]
                sums = [0.0, 0.0, 0]
                started = time.perf_counter()
                for batch in self._batches(source, objective, generator=gen, shuffle=True):
                    b = batch.to(device)
                    obj = self._loss(objective, reader, self._soft(logits, temp), b, needs_ref)
                    pen = self._penalty(logits, temp)
                    opt.zero_grad(set_to_none=True)
                    (obj + pen).backward()
                    opt.step()
                    sums[0] += float(obj.detach()) * len(b)
                    sums[1] += float(pen.detach()) * len(b)
                    sums[2] += len(b)
                sched.step()
                seconds = time.perf_counter() - started
                with torch.no_grad():
                    kept = sum(int((s > 0).sum()) * self._cover[n] for n, s in logits.items())
                    size = sum(int(params[n].numel()) for n in logits)
                self.history_.append({
                    "epoch": epoch, "temperature": temp, "objective": sums[0] / sums[2],
                    "penalty": sums[1] / sums[2], "density": kept / size,
                    "seconds": seconds, "steps": math.ceil(sums[2] / self.batch_size),
                })
            self.logits_ = {n: s.detach() for n, s in logits.items()}
            self.masks_ = {
                n: expand_mask(s > 0, params[n].shape).clone() for n, s in self.logits_.items()
            }
            self.objective_train_, self.accuracy_train_ = self._evaluate(reader, objective, source, device)
            self.objective_val_ = self.accuracy_val_ = float("nan")
            if x_val is not None:
                val = self._source(x_val, labels_val, objective)
                self.objective_val_, self.accuracy_val_ = self._evaluate(reader, objective, val, device)
        self.result_ = masks_to_dataset(self.masks_, attrs=self._attrs(objective))
        return self

    def _evaluate(self, reader: SiteReader, objective: Any, source: Any,
                  device: torch.device) -> tuple[float, float]:
        """Objective (and, for contrastive, accuracy of ``logit > 0``) with the binary
        mask, over all of ``source`` at once."""
        acts: list[TargetValue] = []
        refs: list[TargetValue] = []
        labels: list[torch.Tensor] = []
        needs_ref = bool(getattr(objective, "needs_reference", False))
        with torch.no_grad():
            for batch in self._batches(source, objective):
                b = batch.to(device)
                acts.append(self._read(reader, self.masks_, b))
                if needs_ref:
                    refs.append(self._read(reader, None, b))
                if b.label is not None:
                    labels.append(b.label)
            act = cat_values(acts)
            ref = cat_values(refs).values if refs else None
            y = torch.cat(labels) if labels and len(labels) == len(acts) else None
            out = call_objective(objective, act.values, y, ref, mask=act.real())
        acc = float("nan")
        if isinstance(objective, Contrastive) and y is not None:
            predicted = (objective.logits(act.values, mask=act.real()) > 0).long().cpu()
            acc = float((predicted == y.cpu()).float().mean())
        return float(out), acc

    def _attrs(self, objective: Any) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "method": "continuous_sparsification",
            "target": str(self.target), "unit": -1 if self.unit is None else int(self.unit),
            "position": str(self.position), "objective": getattr(objective, "name", repr(objective)),
            "swap": bool(self.swap), "lam": float(self.lam), "s0": float(self.s0),
            "temperature_start": float(self.temperature[0]), "temperature_end": float(self.temperature[1]),
            "epochs": int(self.epochs), "lr": float(self.lr), "batch_size": int(self.batch_size),
            "granularity": self.granularity, "seed": int(self.seed),
            "objective_train": self.objective_train_,
            "objective_val": self.objective_val_,
            "accuracy_train": self.accuracy_train_, "accuracy_val": self.accuracy_val_,
        }
        return attrs

    # ------------------------------------------------------------------ use
    def _fit_hint(self) -> str:
        return "call fit(x, labels) first"

    def activations(self, x: Any, *, masked: bool = True) -> torch.Tensor:
        """The target unit's activation on ``x`` with the binary mask (or without):
        ``[sample, *rest]``; where the selection keeps the positions of masked text
        batches, their real tokens only, ``[token, *rest]`` (text order)."""
        self._check_fitted()
        device = model_device(self.model)
        with eval_mode(self.model), self._reader() as reader, torch.no_grad():
            parts = [
                self._read(reader, self.masks_ if masked else None, batch.to(device)).tokens()
                for batch in iter_batches(x, self.batch_size)
            ]
        return torch.cat(parts)

    def score(self, x: Any, labels: Any = None) -> float:
        """The objective on ``x`` with the binary mask (lower is better)."""
        self._check_fitted()
        objective = resolve_objective(self.objective)
        source = self._source(x, labels, objective)
        with eval_mode(self.model), self._reader() as reader:
            return self._evaluate(reader, objective, source, model_device(self.model))[0]

    def save(self, store: Any, name: str) -> None:
        """Write ``result_`` to an ``ActivationStore`` as result ``name``."""
        self._check_fitted()
        store.write_result(name, self.result_, attrs=dict(self.result_.attrs))
