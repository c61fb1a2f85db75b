"""Batches as polysdk's components take them: a tensor (the model's input), a tuple
``(x, label, ...)``, or a dict of model keyword arguments (Hugging Face style).

Keys ``label``/``labels``/``id``/``ids`` of a dict are coordinates, never passed to
the model. :func:`fingerprint` identifies a batch's model inputs cheaply, so a resumed
run can prove it is fed the same stream.

>>> import torch
>>> model_inputs({"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": [0, 1]})[1].keys()
dict_keys(['input_ids'])
>>> fingerprint(torch.zeros(4)) == fingerprint(torch.zeros(4)) != fingerprint(torch.ones(4))
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from polysdk.errors import SiteError
from polysdk.sites import unwrap_model

__all__ = ["COORD_KEYS", "batch_size", "default_coords", "default_forward", "fingerprint", "model_inputs"]

COORD_KEYS = ("label", "labels", "id", "ids")


def fingerprint(*args: Any, **kwargs: Any) -> str:
    """A short hash of a batch's model inputs (every tensor, by position and keyword).

    Hashes each tensor's dtype, shape and up to 64 Ki elements spread evenly over it
    (all of a small tensor), so computing it costs microseconds, not a pass over the
    data. Used to prove that a resumed run feeds the same batches.
    """
    h = hashlib.blake2b(digest_size=8)

    def add(name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().reshape(-1)
            if flat.numel() > 65536:
                idx = torch.linspace(0, flat.numel() - 1, 65536, device=flat.device).long()
                flat = flat[idx]
            h.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
            h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(value, np.ndarray):
            add(name, torch.as_tensor(value))
        elif isinstance(value, Mapping):
            for k in sorted(value, key=str):
                add(f"{name}.{k}", value[k])
        elif isinstance(value, (tuple, list)):
            for j, v in enumerate(value):
                add(f"{name}[{j}]", v)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            h.update(f"{name}={value!r}".encode())

    for j, a in enumerate(args):
        add(f"[{j}]", a)
    for k in sorted(kwargs):
        add(k, kwargs[k])
    return h.hexdigest()


def model_inputs(batch: Any) -> tuple[tuple, dict]:
    if isinstance(batch, Mapping):
        return (), {k: v for k, v in batch.items() if k not in COORD_KEYS}
    if isinstance(batch, (tuple, list)):
        return (batch[0],), {}
    return (batch,), {}


def batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        first = next(v for v in batch.values() if hasattr(v, "__len__"))
        return len(first)
    if isinstance(batch, (tuple, list)):
        return batch_size(batch[0])
    raise SiteError(f"cannot tell the batch size of a {type(batch).__name__}; pass forward=")


def default_forward(model: Any, batch: Any) -> Any:
    module = unwrap_model(model)
    if isinstance(batch, torch.Tensor):
        return module(batch)
    if isinstance(batch, Mapping):
        return module(**{k: v for k, v in batch.items() if k not in COORD_KEYS})
    if isinstance(batch, (tuple, list)):
        return module(batch[0])
    raise SiteError(f"cannot feed a batch of type {type(batch).__name__} to the model; pass forward=")


def default_coords(batch: Any) -> dict[str, Any]:
    if isinstance(batch, Mapping):
        return {k.rstrip("s") if k in ("labels", "ids") else k: v for k, v in batch.items() if k in COORD_KEYS}
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return {"label": batch[1]}
    return {}
