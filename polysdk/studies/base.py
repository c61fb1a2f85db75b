"""The ``Study`` base class: config, seeding, device, output folder, resume, report.

    from polysdk.studies import get_study
    study = get_study("toy-models")(batch="LR1", quick=True)
    report = study.run(out="runs/demo")          # -> Path of the HTML report

A study is one experiment from a seed document. Subclasses set ``name``, ``presets``
and implement :meth:`Study._run` (train, measure, write results into the store) and
:meth:`Study.make_report`; the base gives them the output folder layout
(``<out>/results.zarr``, ``<out>/report.html``, ``<out>/figures/``), the device
("auto" -> CUDA when available), seeding, JSON-able config records and resume: a
study records its config in the store, and a re-run with the same config continues
where the last one stopped (each study decides its own resume unit).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from polysdk.errors import ConfigError, closest_names
from polysdk.train.trainer import torch_threads

__all__ = ["Study", "register_study", "get_study", "available_studies", "resolve_device",
           "torch_threads", "parse_value"]

log = logging.getLogger(__name__)
_STUDIES: dict[str, type["Study"]] = {}


def register_study(cls: type["Study"]) -> type["Study"]:
    """Class decorator: make a study known to ``polysdk run/list`` under ``cls.name``."""
    if not cls.name:
        raise ConfigError(f"{cls.__name__} has no 'name'; set name = 'my-study'.")
    _STUDIES[cls.name] = cls
    return cls


def _load_builtin_studies() -> None:
    import polysdk.studies.toy_models  # noqa: F401  (registers itself)


def available_studies() -> dict[str, type["Study"]]:
    """Registered studies by name (the built-ins are imported on first use)."""
    _load_builtin_studies()
    return dict(sorted(_STUDIES.items()))


def get_study(name: str) -> type["Study"]:
    studies = available_studies()
    if name not in studies:
        close = closest_names(name, list(studies), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown study {name!r}.{hint} Known studies: {list(studies)} "
                          "(see `polysdk list`).")
    return studies[name]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> ``cuda`` when available, else ``cpu``; others checked."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={str(device)!r} was asked for but CUDA is not available "
                          "here; use device='cpu' or 'auto'.")
    return dev


def parse_value(text: str) -> Any:
    """Parse a command-line value: int, float, bool, none, a comma list, or the string.

    >>> parse_value("3"), parse_value("1e-3"), parse_value("0.1,0.2"), parse_value("ReLU")
    (3, 0.001, [0.1, 0.2], 'ReLU')
    """
    if isinstance(text, str) and "," in text:
        return [parse_value(t) for t in text.split(",") if t.strip()]
    low = str(text).strip().lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(low)
        except ValueError:
            pass
    return str(text).strip()


def jsonable(value: Any) -> Any:
    """Config values as JSON-able data (dataclasses, numpy, tuples, paths)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, torch.device)):
        return str(value)
    return value


def _config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two JSON-like configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            out += _config_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


class Study:
    """Base class of the studies (see the module docstring).

    Subclasses set ``name`` (the ``polysdk run`` name), ``description``, ``presets``
    (name -> one-line description) and implement ``_run(out, resume, progress)`` and
    ``make_report(out)``. ``config()`` returns what identifies a run (JSON-able).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    presets: ClassVar[Mapping[str, str]] = {}

    def __init__(self, *, seed: int = 0, device: str = "auto", progress: bool = True) -> None:
        self.seed = int(seed)
        self.device = device
        self.progress = progress

    # ----------------------------------------------------------------- config
    def config(self) -> dict[str, Any]:
        """What identifies this run (JSON-able); recorded in the store, checked on resume."""
        return {"study": self.name, "seed": self.seed}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **kwargs: Any) -> "Study":
        """Rebuild a study from what :meth:`config` returned (``<out>/config.json``)."""
        raise NotImplementedError

    @classmethod
    def from_options(cls, preset: str | None = None, quick: bool = False,
                     device: str = "auto", overrides: Mapping[str, Any] | None = None
                     ) -> "Study":
        """Build from command-line options (``--batch/--preset``, ``--quick``, ``--set``)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- helpers
    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)

    def seed_everything(self, seed: int | None = None) -> None:
        """Seed Python, NumPy and torch (studies should still prefer own generators)."""
        seed = self.seed if seed is None else int(seed)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)

    @staticmethod
    def paths(out: str | Path) -> dict[str, Path]:
        out = Path(out)
        return {"out": out, "store": out / "results.zarr", "report": out / "report.html",
                "figures": out / "figures", "config": out / "config.json"}

    def open_store(self, out: str | Path, resume: bool = True,
                   attrs: Mapping[str, Any] | None = None) -> Any:
        """The run's store: resumed when it exists with the same config, else new.

        Raises :class:`ConfigError` when ``out`` holds a run of another config and
        ``resume`` is True (use another folder, or ``resume=False`` to start over).
        ``attrs`` go into a new store's attributes (a resumed store keeps its own).
        """
        from polysdk.store import ActivationStore

        paths = self.paths(out)
        paths["out"].mkdir(parents=True, exist_ok=True)
        cfg = jsonable(self.config())
        store_path = paths["store"]
        if store_path.exists() and resume:
            store = ActivationStore(store_path, mode="a")
            old = store.attrs.get("study_config")
            if old is not None and json.loads(old) != cfg:
                store.close()
                diff = "; ".join(_config_diff(json.loads(old), cfg)[:6])
                raise ConfigError(
                    f"{str(out)!r} already holds a {self.name} run with another config "
                    f"(stored vs asked: {diff}); choose another --out, or pass "
                    "resume=False (--fresh on the command line) to replace it.")
            return store
        return ActivationStore(store_path, mode="w", attrs={
            **dict(attrs or {}), "study": self.name, "study_config": json.dumps(cfg)})

    # ----------------------------------------------------------------- running
    def run(self, out: str | Path = "runs/study", resume: bool = True, report: bool = True
            ) -> Path:
        """Run (or resume) the study into ``out`` and write its report; returns its path
        (the store's path with ``report=False``)."""
        out = Path(out)
        paths = self.paths(out)
        paths["out"].mkdir(parents=True, exist_ok=True)
        self._run(out, resume)
        # written once the run is complete (a refused or killed run leaves the old one)
        paths["config"].write_text(json.dumps(jsonable(self.config()), indent=2))
        return self.make_report(out) if report else paths["store"]

    def _run(self, out: Path, resume: bool) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _run(out, resume).")

    def make_report(self, out: str | Path) -> Path:
        raise NotImplementedError(f"{type(self).__name__} must implement make_report(out).")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()})"
