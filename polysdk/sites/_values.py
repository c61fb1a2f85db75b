"""Pick a tensor out of a module's output (tuple, dict, dataclass) and put one back."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from polysdk.errors import SiteError
from polysdk.sites._names import TensorKey

# --------------------------------------------------------------------------- values


def _first_tensor_key(value: Any) -> int | str | None:
    if isinstance(value, (tuple, list)):
        return next((i for i, v in enumerate(value) if isinstance(v, torch.Tensor)), None)
    if isinstance(value, Mapping):
        return next((k for k, v in value.items() if isinstance(v, torch.Tensor)), None)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return next(
            (f.name for f in dataclasses.fields(value) if isinstance(getattr(value, f.name), torch.Tensor)),
            None,
        )
    return None


def get_tensor(value: Any, key: TensorKey = None) -> torch.Tensor:
    """Pick the tensor out of a module's output (or input).

    ``key`` is a tuple index, a mapping key or a dataclass field name; ``None`` picks
    the first tensor found (the whole value when it is a tensor).
    """
    if isinstance(value, torch.Tensor) and key is None:
        return value
    chosen = _first_tensor_key(value) if key is None else key
    if chosen is None:
        raise SiteError(
            f"found no tensor in a value of type {type(value).__name__}; pass key= "
            f"(an index, key or field name) to choose one"
        )
    try:
        if isinstance(value, (tuple, list)):
            picked = value[int(chosen)]
        elif isinstance(value, Mapping):
            picked = value[chosen]
        elif dataclasses.is_dataclass(value):
            picked = getattr(value, str(chosen))
        else:
            raise TypeError
    except (IndexError, KeyError, AttributeError, TypeError, ValueError):
        raise SiteError(
            f"key {chosen!r} does not select anything in a {type(value).__name__}; "
            f"choose an index, key or field the module actually returns"
        ) from None
    if not isinstance(picked, torch.Tensor):
        raise SiteError(
            f"key {chosen!r} selects a {type(picked).__name__}, not a tensor; choose "
            f"another key"
        )
    return picked


def set_tensor(value: Any, new: torch.Tensor, key: TensorKey = None) -> Any:
    """Return ``value`` with the tensor chosen by ``key`` replaced by ``new``."""
    if isinstance(value, torch.Tensor) and key is None:
        return new
    chosen = _first_tensor_key(value) if key is None else key
    if isinstance(value, tuple):
        items = list(value)
        items[int(chosen)] = new  # type: ignore[arg-type]
        return type(value)(items) if type(value) is tuple else type(value)(*items)
    if isinstance(value, list):
        items = list(value)
        items[int(chosen)] = new  # type: ignore[arg-type]
        return items
    if isinstance(value, Mapping):
        replaced = value.copy() if hasattr(value, "copy") else dict(value)
        replaced[chosen] = new
        return replaced
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{str(chosen): new})
    raise SiteError(f"cannot put a tensor back into a {type(value).__name__}")
