"""What the maskers read: batches (as ``Probe`` takes them) and the target unit's value.

*Batches.* A masker's data is a tensor, a tuple ``(x, label, ...)`` of tensors or a
dict of model keyword arguments (Hugging Face style: ``input_ids``,
``attention_mask``, ...), each split into batches of ``batch_size``; or an iterable
of such batches (a ``DataLoader``, a list of dynamically padded dicts). Keys
``label``/``labels``/``id``/``ids`` of a dict are not passed to the model (``label``
or ``labels`` is the batch's label), exactly as :class:`polysdk.probe.Probe` does.

*The target.* :class:`Target` names one unit of one site and a selection of the
site's other dims; its value is :func:`polysdk.dims.select_unit` of the site's
tensor, with the batch's ``attention_mask`` whenever the site has a ``position``
dim, so padding never counts (``"mean"`` is the mean over real tokens, ``-1`` each
text's last real token). When the selection keeps the positions (``None``), the
value comes with the mask of its real entries, and every reduction after it
(saliency targets, objectives, preservation scores) skips the padding.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from polysdk import dims as D
from polysdk.errors import ConfigError

__all__ = ["COORD_KEYS", "Batch", "Target", "TargetValue", "as_batch", "as_whole", "cat_values",
           "clean_labels", "iter_batches", "labelled_batches", "labelled_source", "reiterable"]

COORD_KEYS = ("label", "labels", "id", "ids")


@dataclass
class Batch:
    """One batch: the model's positional and keyword inputs, and its labels."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor | None:
        """The ``attention_mask`` given to the model (``None`` without one)."""
        return self.kwargs.get("attention_mask")

    def __len__(self) -> int:
        for value in (*self.args, *self.kwargs.values()):
            if isinstance(value, torch.Tensor) and value.ndim:
                return int(value.shape[0])
        raise ConfigError("a batch needs at least one tensor input (first axis = sample)")

    def call(self, fn: Any) -> Any:
        """``fn(*args, **kwargs)``: the forward pass on this batch."""
        return fn(*self.args, **self.kwargs)

    def to(self, device: torch.device | str) -> Batch:
        move = _mover(device)
        return Batch(tuple(move(a) for a in self.args), {k: move(v) for k, v in self.kwargs.items()},
                     None if self.label is None else self.label.to(device))

    def take(self, rows: torch.Tensor | slice) -> Batch:
        """The samples ``rows`` (an index tensor, a bool mask or a slice) of every input."""
        n = len(self)
        pick = _picker(n, rows)
        return Batch(tuple(pick(a) for a in self.args), {k: pick(v) for k, v in self.kwargs.items()},
                     None if self.label is None else self.label[rows])


def _mover(device: torch.device | str) -> Any:
    return lambda v: v.to(device) if isinstance(v, torch.Tensor) else v


def _picker(n: int, rows: torch.Tensor | slice) -> Any:
    return lambda v: v[rows] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n else v


def _label(value: Any) -> torch.Tensor | None:
    if value is None or isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"a batch's label must be numbers (one per sample), got {value!r:.80}") from None


def _from_mapping(item: Mapping[str, Any], label: Any = None) -> Batch:
    kwargs = {k: v for k, v in item.items() if k not in COORD_KEYS}
    if label is None:
        label = item.get("label", item.get("labels"))
    return Batch((), kwargs, _label(label))


def as_batch(item: Any) -> Batch:
    """One batch from a tensor, a tuple/list ``(x, label, ...)`` (``x`` may be a dict
    of keyword arguments) or a dict of model keyword arguments."""
    if isinstance(item, Batch):
        return item
    if isinstance(item, torch.Tensor):
        return Batch((item,))
    if isinstance(item, Mapping):
        return _from_mapping(item)
    if isinstance(item, (tuple, list)) and item:
        label = item[1] if len(item) > 1 else None
        if isinstance(item[0], Mapping):
            return _from_mapping(item[0], label)
        return Batch((item[0],), {}, _label(label))
    raise ConfigError(
        f"cannot read a batch of type {type(item).__name__}; give a tensor, a tuple (x, label, "
        f"...) or a dict of model keyword arguments (input_ids, attention_mask, ...)"
    )


def as_whole(data: Any) -> Batch | None:
    """``data`` as one batch to be split when it is a tensor, a tuple of tensors or a
    dict whose values are tensors (all samples at once); ``None`` when it is an
    iterable of batches."""
    if isinstance(data, np.ndarray):
        data = torch.as_tensor(data)
    if isinstance(data, torch.Tensor):
        return Batch((data,))
    if isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) or t is None for t in data):
        return Batch((data[0],), {}, data[1] if len(data) > 1 else None)
    if isinstance(data, Mapping) and data and any(isinstance(v, torch.Tensor) for v in data.values()) and all(
        isinstance(v, torch.Tensor) or k in COORD_KEYS or not isinstance(v, (list, tuple, Mapping))
        for k, v in data.items()
    ):
        return _from_mapping(data)
    return None


def reiterable(data: Any) -> Any:
    """``data`` as something that can be iterated more than once (a one-shot iterator
    is read into a list)."""
    if isinstance(data, Iterator):
        return list(data)
    if not isinstance(data, Iterable):
        raise ConfigError(
            f"data must be a tensor, a tuple of tensors, a dict of model keyword arguments or "
            f"an iterable of batches, got {type(data).__name__}"
        )
    return data


def iter_batches(
    data: Any, batch_size: int, *, generator: torch.Generator | None = None, shuffle: bool = False
) -> Iterator[Batch]:
    """Yield :class:`Batch` es: a whole tensor / tuple / dict is split into batches of
    ``batch_size`` (shuffled with ``generator`` when ``shuffle``); an iterable of
    batches is read as it comes."""
    whole = data if isinstance(data, Batch) else as_whole(data)
    if whole is not None:
        n = len(whole)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield whole.take(order[start : start + batch_size])
        return
    for item in reiterable(data):
        yield as_batch(item)


# --------------------------------------------------------------------------- the target


@dataclass
class TargetValue:
    """The target unit's value on one batch: ``values`` with dims ``names``
    (``sample`` first); ``mask`` is the batch's ``(sample, position)`` attention mask
    when ``values`` still has the padded ``position`` dim, else ``None``."""

    values: torch.Tensor
    names: tuple[str, ...]
    mask: torch.Tensor | None = None

    def real(self) -> torch.Tensor | None:
        """A bool tensor that broadcasts against ``values``, true on real tokens."""
        if self.mask is None:
            return None
        view = [1] * self.values.ndim
        axis = self.names.index(D.POSITION)
        view[0], view[axis] = self.values.shape[0], self.values.shape[axis]
        return self.mask.to(self.values.device).bool().reshape(view)

    def flat(self) -> torch.Tensor:
        """Every real entry in one 1-D tensor (sample order; padding left out)."""
        keep = self.real()
        if keep is None:
            return self.values.reshape(-1)
        return self.values[keep.expand_as(self.values)]

    def tokens(self) -> torch.Tensor:
        """The values with padding left out: as they are, or (positions kept on a
        masked batch) the real tokens, ``token`` first (:func:`polysdk.dims.flatten_tokens`)."""
        if self.mask is None:
            return self.values
        return D.flatten_tokens(self.values, self.names, self.mask)[0]


def cat_values(parts: Sequence[TargetValue]) -> TargetValue:
    """Join the values of several batches along ``sample``; batches padded to
    different lengths are padded to the longest (the mask marks the padding)."""
    if not parts:
        raise ConfigError("no batch to join: the data was empty")
    if all(p.mask is None for p in parts):
        return TargetValue(torch.cat([p.values for p in parts]), parts[0].names)
    if any(p.mask is None for p in parts):
        raise ConfigError("some batches have an attention mask and some do not; give it to every batch")
    names = parts[0].names
    axis = names.index(D.POSITION)
    longest = max(p.values.shape[axis] for p in parts)
    values, masks = [], []
    for p in parts:
        short = longest - p.values.shape[axis]
        pad = [0, 0] * (p.values.ndim - 1 - axis) + [0, short]
        values.append(torch.nn.functional.pad(p.values, pad))
        masks.append(torch.nn.functional.pad(p.mask.to(p.values.device).bool(), [0, short]))
    return TargetValue(torch.cat(values), names, torch.cat(masks))


@dataclass(frozen=True)
class Target:
    """One unit of one site and a selection of the site's other dims.

    ``dims`` names the site tensor's axes (default :func:`polysdk.dims.default_dims`);
    ``selection`` is anything :meth:`polysdk.dims.Selection.parse` reads (``None``:
    keep the other dims; ``"centre"``/``"center"``, ``"mean"``, ``"max"``, ``"sum"``,
    ``-1``, ``[0, 3]``, ``(6, 6)``, ``{"y": 6, "x": 6}``); ``unit=None`` keeps every unit.
    """

    site: str
    unit: int | None
    selection: Any = None
    dims: Sequence[str] | None = None

    def __post_init__(self) -> None:
        D.Selection.parse(self.selection, name="position")  # fail at construction

    def names(self, act: torch.Tensor) -> tuple[str, ...]:
        return D.check_dims(None if self.dims is None else tuple(self.dims), act.shape, site=self.site,
                            need_unit=True)

    def value(self, act: torch.Tensor, mask: Any = None) -> TargetValue:
        """The target's value in the site tensor ``act`` of a batch with attention ``mask``."""
        names = self.names(act)
        sel = D.Selection.parse(self.selection, name="position")
        use = mask if mask is not None and D.POSITION in names else None
        out = D.select_unit(act, names, self.unit, sel, mask=use, site=self.site)
        rest = names if self.unit is None else tuple(n for n in names if n != D.UNIT)
        if sel.kind == "none" or not D.extra_dims(rest):
            return TargetValue(out, rest, use if D.POSITION in rest else None)
        kept = rest if isinstance(sel.index, list) else tuple(n for n in rest if n not in D.extra_dims(rest))
        return TargetValue(out, kept)

    def with_unit(self, unit: int | None) -> Target:
        return replace(self, unit=unit)


# --------------------------------------------------------------------------- labels


def clean_labels(batch: Batch, objective: Any, *, swap: bool = False) -> Batch:
    """Check a batch's 0/1 labels, drop the inputs labelled -1 and apply ``swap``."""
    if batch.label is None:
        if getattr(objective, "needs_labels", False):
            raise ConfigError(
                f"objective {objective!r} needs labels: call fit(x, labels), or give each "
                f"batch its labels ((x, label) tuples or a 'labels' key)"
            )
        return batch
    y = batch.label.long().reshape(-1)
    if len(y) != len(batch):
        raise ConfigError(f"got {len(batch)} inputs but {len(y)} labels; pass one label per input")
    batch = Batch(batch.args, batch.kwargs, y)
    keep = y >= 0  # -1 is HDBSCAN noise: dropped
    if not bool(keep.all()):
        batch = batch.take(keep)
        y = batch.label
    bad = torch.unique(y[(y != 0) & (y != 1)])
    if len(bad):
        raise ConfigError(
            f"labels must be 1 (chosen cluster), 0 (other) or -1 (dropped); found "
            f"{bad.tolist()}; map your cluster ids to 0/1 first"
        )
    if swap:
        batch = Batch(batch.args, batch.kwargs, 1 - y)
    return batch


def labelled_source(x: Any, labels: Any, objective: Any, *, swap: bool = False) -> Any:
    """All of ``x`` as one checked :class:`Batch` to split (a tensor, a tuple or a
    dict of every input), or the iterable of batches it is."""
    whole = as_whole(x)
    if whole is None:
        if labels is not None:
            raise ConfigError(
                "labels= goes with all inputs at once (a tensor, a tuple or a dict); with an "
                "iterable of batches give each batch its labels ((x, label) tuples or a "
                "'labels' key)"
            )
        return reiterable(x)
    if labels is not None:
        whole = Batch(whole.args, whole.kwargs, torch.as_tensor(labels))
    whole = clean_labels(whole, objective, swap=swap)
    if len(whole) == 0:
        raise ConfigError("no inputs left to train on (all labels were -1?)")
    return whole


def labelled_batches(source: Any, objective: Any, batch_size: int, *, swap: bool = False,
                     generator: torch.Generator | None = None, shuffle: bool = False) -> Iterator[Batch]:
    """The checked batches of ``source`` (a whole batch is split, shuffled if asked)."""
    if isinstance(source, Batch):
        yield from iter_batches(source, batch_size, generator=generator, shuffle=shuffle)
        return
    for item in source:
        batch = clean_labels(as_batch(item), objective, swap=swap)
        if len(batch):
            yield batch
