"""Small helpers shared across layers: torch threads, devices, seeding, JSON-able values.

    from polysdk._util import torch_threads, resolve_device, seed_everything
    with torch_threads(1):
        ...                                   # torch's intra-op threads set, then restored
    resolve_device("auto")                    # cuda when available, else cpu
    seed_everything(0)                        # Python, NumPy and torch
    for x in progress_bar(items, desc="fit"):  # a tqdm bar, unless progress is off
        ...

Nothing here imports another polysdk module except :mod:`polysdk.errors`, so any layer
may use it.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from polysdk.errors import ConfigError

__all__ = ["torch_threads", "resolve_device", "seed_everything", "jsonable", "threads_for",
           "progress_bar", "progress_enabled", "set_progress"]

#: Process-wide switch for every polysdk progress bar (``polysdk run/report/atlas
#: --no-progress`` or the environment variable ``POLYSDK_PROGRESS=0`` turn it off).
_progress_on: bool | None = None
_HF_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"
_UNSET: Any = object()
_hf_env_before: Any = _UNSET  # (the variable's value, transformers loaded?) before we set it
_hf_bars_off_by_us = False


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None or 0: leave it); restored after.

    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    import torch

    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def resolve_device(device: Any = "auto") -> Any:
    """``"auto"``/None -> ``cuda`` when available, else ``cpu``; others are checked.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device={device!r} is not a torch device; use 'cpu', 'cuda', "
                          "'cuda:1' or 'auto'.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={str(device)!r} was asked for but CUDA is not available "
                          "here; use device='cpu' or 'auto'.")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (prefer own generators)."""
    import torch

    random.seed(int(seed))
    np.random.seed(int(seed) % 2 ** 32)
    torch.manual_seed(int(seed))


def jsonable(value: Any) -> Any:
    """Config values as JSON-able data (dataclasses, numpy, tuples, paths, devices).

    >>> jsonable({"a": (1, np.float32(0.5)), "p": Path("x")})
    {'a': [1, 0.5], 'p': 'x'}
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path) or type(value).__name__ == "device":
        return str(value)
    return value


def threads_for(setting: Any, device: Any) -> int | None:
    """Torch threads for a study's unit: ``setting`` (an int, ``None``/``0`` = torch's
    default) or ``"auto"``: one thread on a CPU that other processes keep busy (load
    above the core count minus a half), else torch's default. Measured on the shared
    2-core machine at load 8-9: small models ran 7-17x slower per step on 2 threads
    than on 1."""
    import os

    if setting != "auto":
        return None if setting in (None, 0) else int(setting)
    if getattr(device, "type", str(device)) != "cpu":
        return None
    return 1 if os.getloadavg()[0] > (os.cpu_count() or 1) - 0.5 else None


def set_progress(enabled: bool | None) -> None:
    """Turn every polysdk progress bar on or off for this process (the CLI's
    ``--no-progress``); ``None`` goes back to ``POLYSDK_PROGRESS``. A component's own
    ``progress=False`` still turns its bar off. Off also silences Hugging Face's bars
    (transformers' "Loading weights", downloads) until progress is turned back on.

    >>> set_progress(False); progress_enabled()
    False
    >>> set_progress(True); progress_enabled()
    True
    >>> set_progress(None)
    """
    import os
    import sys

    global _progress_on, _hf_env_before, _hf_bars_off_by_us
    _progress_on = None if enabled is None else bool(enabled)
    quiet = not progress_enabled()
    hf = None
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf
    if quiet:
        if _hf_env_before is _UNSET:                # read by huggingface_hub on import
            _hf_env_before = (os.environ.get(_HF_ENV), hf is not None)
            os.environ[_HF_ENV] = "1"
        if hf is not None and hf.is_progress_bar_enabled():
            hf.disable_progress_bar()
            _hf_bars_off_by_us = True
        return
    if _hf_env_before is not _UNSET:                # undo only what we did
        value, loaded_then = _hf_env_before
        if value is None:
            os.environ.pop(_HF_ENV, None)
        else:
            os.environ[_HF_ENV] = value
        _hf_env_before = _UNSET
        if hf is not None and not loaded_then:      # imported under our variable: off by us
            _hf_bars_off_by_us = True
    if hf is not None and _hf_bars_off_by_us:
        import warnings

        with warnings.catch_warnings():   # huggingface_hub imported under our variable
            warnings.filterwarnings("ignore", message="Cannot enable progress bars")
            hf.enable_progress_bar()      # keeps its own bars off: it read the variable once
    _hf_bars_off_by_us = False


def progress_enabled() -> bool:
    """Whether progress bars may show: :func:`set_progress`, else ``POLYSDK_PROGRESS``
    (``0``/``false``/``no``/``off`` turn them off), else on."""
    import os

    if _progress_on is not None:
        return _progress_on
    return os.environ.get("POLYSDK_PROGRESS", "1").strip().lower() not in (
        "0", "false", "no", "off")


def progress_bar(iterable: Any = None, *, show: bool = True, **kwargs: Any) -> Any:
    """A ``tqdm.auto`` bar over ``iterable``, shown when ``show`` and progress is
    enabled (:func:`progress_enabled`); the one place polysdk makes bars.

    >>> set_progress(False)
    >>> list(progress_bar(range(3), desc="quiet"))
    [0, 1, 2]
    >>> set_progress(None)
    """
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not (show and progress_enabled()), **kwargs)
