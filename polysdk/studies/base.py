"""The ``Study`` base: a dataclass config, presets, and the loop over resume units.

    from polysdk.studies import get_study
    study = get_study("toy-models")("LR1", quick=True, seeds=2)   # preset, CPU scale, a field
    report = study.run(out="runs/demo")            # -> Path of the HTML report
    study.run(out="runs/demo", client=Client())    # units on a dask.distributed cluster

A study is one experiment. A subclass sets ``name``, ``Config`` (a dataclass; an
optional ``quick()`` method returns its CPU scale), ``presets`` (name -> Config
instance) and implements three methods:

* :meth:`Study.units` -> the resume units, each a :class:`Unit` whose ``name`` is the
  result it writes into the run's store (toy models: one chunk of instances);
* :meth:`Study.run_unit` (unit) -> that unit's ``xarray.Dataset``;
* :meth:`Study.make_report` (out) -> the report's path; and optionally
  :meth:`Study.finish` (store, units), run once every unit is stored (a summary).

:meth:`Study.run` does the rest: it resolves the device, opens ``<out>/results.zarr``
(refusing a folder that holds a run of another config), records the unit list in the
store the first time (a resumed run keeps the units it started with), skips units whose
result is already there, runs the others (in order here, or on a ``dask.distributed``
client: each unit a task, each result written as it arrives, so a worker that dies
loses only its unit), seeds Python/NumPy/torch with the unit's own seed before each
unit (results do not depend on order or placement), then ``finish``, ``config.json``
and the report. A killed run re-run with the same command redoes only the unit that was
cut.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from polysdk._util import jsonable, resolve_device, seed_everything
from polysdk.errors import ConfigError, PolysdkError
from polysdk.registry import Registry
from polysdk.studies.config import config_from_dict, describe, with_settings

__all__ = ["Study", "Unit", "UnitError", "STUDIES", "register_study", "get_study",
           "available_studies", "study_paths"]

log = logging.getLogger(__name__)
C = TypeVar("C")


def _check_study(name: str, obj: Any) -> None:
    if not (isinstance(obj, type) and issubclass(obj, Study)):
        raise ConfigError(f"the study {name!r} is {obj!r}, not a Study subclass; an entry "
                          "point of group 'polysdk.studies' must name a Study class.")


#: Every study by its ``polysdk run`` name: built-ins, ``register_study`` and the
#: ``polysdk.studies`` entry points of installed packages.
STUDIES: Registry[type[Study]] = Registry(
    "study", group="polysdk.studies", check=_check_study,
    builtins={  # ours; also declared as entry points, which a built-in shadows
        "toy-models": "polysdk.studies.toy_models:ToyModelStudy",
        "penalty": "polysdk.studies.penalty:PenaltyStudy",
        "alexnet-subnetworks": "polysdk.studies.alexnet:AlexNetStudy",
        "solu-hunt": "polysdk.studies.solu_hunt:SoLUHuntStudy",
        "relearning": "polysdk.studies.relearning:RelearningStudy",
    })


def register_study(cls: type[Study]) -> type[Study]:
    """Class decorator: make a study known to ``polysdk run/list`` under ``cls.name``."""
    if not getattr(cls, "name", ""):
        raise ConfigError(f"{cls.__name__} has no 'name'; set name = 'my-study'.")
    return STUDIES.register(cls.name, cls)


def get_study(name: str) -> type[Study]:
    """The study class called ``name`` (unknown: ConfigError with the closest names)."""
    return STUDIES.get(name)


def available_studies() -> dict[str, type[Study]]:
    """Every study that loads, by name."""
    return STUDIES.items()


def study_paths(out: str | Path) -> dict[str, Path]:
    """The files of a run folder: store, report, figures, config.json."""
    out = Path(out)
    return {"out": out, "store": out / "results.zarr", "report": out / "report.html",
            "figures": out / "figures", "config": out / "config.json"}


@dataclasses.dataclass(frozen=True)
class Unit:
    """One resume unit: ``name`` is the result it writes; ``spec`` (JSON-able) says what
    it does; ``seed`` is set by :meth:`Study.run` from the config's seed and its index."""

    name: str
    spec: Any = None
    seed: int = 0


class UnitError(PolysdkError, RuntimeError):
    """Some units failed (the others were stored; a re-run redoes only the failed ones)."""


def _unit_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _run_unit_task(study: Study, unit: Unit) -> Any:   # what a dask worker runs
    return study.execute_unit(unit)


class Study(Generic[C]):
    """Base class of the studies (see the module docstring).

    Parameters
    ----------
    config : str, Config or None
        A preset name, a config instance, or None (the Config's defaults).
    quick : bool
        Start from the config's CPU scale (``Config.quick()``); ``settings`` apply after.
    device : str
        "auto" (CUDA when available), "cpu", "cuda", "cuda:1".
    progress : bool
        Progress bars.
    client : dask.distributed.Client, address or None
        Where the units run (None: in this process, one after another).
    **settings
        Config fields to change (text is parsed by the field's type).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type]
    presets: ClassVar[Mapping[str, Any]] = {}
    #: the preset ``polysdk run`` uses without --preset (None: the Config's defaults)
    default_preset: ClassVar[str | None] = None
    #: config fields that do not change results (left out of the resume check)
    runtime_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: C | str | None = None, *, quick: bool = False,
                 device: str = "auto", progress: bool = True, client: Any = None,
                 **settings: Any) -> None:
        self.preset = self.preset_key(config) if isinstance(config, str) else None
        self.quick = bool(quick)
        self.config: C = self.resolve_config(config, quick=quick, settings=settings)
        self.device = device
        self.progress = progress
        self.client = client

    # ----------------------------------------------------------------- config
    @classmethod
    def resolve_config(cls, config: Any = None, *, quick: bool = False,
                       settings: Mapping[str, Any] | None = None) -> C:
        """Preset / instance / defaults, then ``quick()``, then ``settings``."""
        if isinstance(config, str):
            cfg = cls.presets[cls.preset_key(config)]
        elif config is None:
            cfg = cls.Config()
        elif isinstance(config, cls.Config):
            cfg = config
        else:
            raise ConfigError(f"{cls.__name__} takes a preset name or a {cls.Config.__name__}"
                              f", got {type(config).__name__}.")
        if quick:
            cfg = cls.quick_config(cfg)
        return with_settings(cfg, dict(settings or {}))

    @classmethod
    def preset_key(cls, name: str) -> str:
        """The preset called ``name`` (any case); unknown names list the closest."""
        if name in cls.presets:
            return name
        upper = {k.upper(): k for k in cls.presets}
        if str(name).upper() in upper:
            return upper[str(name).upper()]
        reg: Registry[str] = Registry(f"{cls.name or cls.__name__} preset")
        for key in cls.presets:
            reg.register(key, key)
        return reg.get(str(name))   # raises with the closest names

    @classmethod
    def quick_config(cls, config: C) -> C:
        """The CPU scale of ``config`` (``Config.quick()``; unchanged when it has none)."""
        quick = getattr(config, "quick", None)
        return quick() if callable(quick) else config

    @classmethod
    def describe_config(cls, config: C) -> str:
        """One line of the values a run of ``config`` uses (``polysdk list``)."""
        return describe(config, skip=cls.runtime_fields)

    def identity(self) -> dict[str, Any]:
        """What identifies the run's results (config minus ``runtime_fields``); a folder
        holding another identity is not resumed."""
        cfg = jsonable(self.config)
        return {"study": self.name,
                "config": {k: v for k, v in cfg.items() if k not in self.runtime_fields}}

    def record(self) -> dict[str, Any]:
        """JSON record of the run (``config.json``, the store's ``study_record``)."""
        return {"study": self.name, "preset": self.preset, "quick": self.quick,
                "config": jsonable(self.config)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], **kwargs: Any) -> Study:
        """Rebuild from :meth:`record` (``config.json``, or a store's attributes)."""
        study = cls(config_from_dict(cls.Config, record["config"]), **kwargs)
        study.preset, study.quick = record.get("preset"), bool(record.get("quick", False))
        return study

    @staticmethod
    def load(out: str | Path, **kwargs: Any) -> Study:
        """The study of a run folder, rebuilt from its store (or ``config.json``)."""
        paths = study_paths(out)
        record = None
        if (paths["store"] / "zarr.json").exists():
            from polysdk.store import ActivationStore

            store = ActivationStore(paths["store"], mode="r")
            text = store.attrs.get("study_record")
            record = json.loads(text) if text else None
        if record is None and paths["config"].exists():
            record = json.loads(paths["config"].read_text())
        if record is None:
            raise ConfigError(f"{str(out)!r} is not a study run folder (no {paths['store'].name}"
                              f" with a study record, no config.json); pass the --out folder "
                              "of a `polysdk run`.")
        return get_study(record["study"]).from_record(record, **kwargs)

    # ----------------------------------------------------------------- to implement
    def units(self) -> Sequence[Unit]:
        """The resume units (their ``name`` = result name in the store), in run order."""
        raise NotImplementedError(f"{type(self).__name__} must implement units().")

    def run_unit(self, unit: Unit) -> Any:
        """Run one unit; return its ``xarray.Dataset`` (the base stores it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement run_unit(unit).")

    def finish(self, store: Any, units: Sequence[Unit]) -> None:
        """After every unit is stored (e.g. write a summary); default: nothing."""

    def make_report(self, out: str | Path) -> Path:
        raise NotImplementedError(f"{type(self).__name__} must implement make_report(out).")

    # ----------------------------------------------------------------- helpers
    @property
    def seed(self) -> int:
        return int(getattr(self.config, "seed", 0))

    def resolved_device(self) -> Any:
        return resolve_device(self.device)

    paths = staticmethod(study_paths)

    def default_out(self) -> Path:
        label = (self.preset or "default").lower()
        return Path("runs") / f"{self.name}-{label}{'-quick' if self.quick else ''}"

    def open_store(self, out: str | Path, resume: bool = True) -> Any:
        """The run's store: resumed when it holds this identity, else created.

        Raises :class:`ConfigError` when ``out`` holds a run of another config and
        ``resume`` is True (use another folder, or ``resume=False`` to start over).
        """
        from polysdk.store import ActivationStore

        paths = study_paths(out)
        paths["out"].mkdir(parents=True, exist_ok=True)
        ident = self.identity()
        if (paths["store"] / "zarr.json").exists() and resume:
            store = ActivationStore(paths["store"], mode="a")
            old = store.attrs.get("study_identity")
            if old is not None and json.loads(old) != ident:
                store.close()
                diff = "; ".join(_config_diff(json.loads(old), ident)[:6])
                raise ConfigError(
                    f"{str(out)!r} already holds a {json.loads(old).get('study')} run with "
                    f"another config (stored vs asked: {diff}); choose another --out, or "
                    "pass resume=False (--fresh on the command line) to replace it.")
            if old is not None:
                return store
            store.close()   # a store without a study record: created anew
        units = [dataclasses.replace(u, seed=_unit_seed(self.seed, i))
                 for i, u in enumerate(self.units())]
        names = [u.name for u in units]
        if len(set(names)) != len(names):
            raise ConfigError(f"{type(self).__name__}.units() gave repeated names {names}.")
        return ActivationStore(paths["store"], mode="w", attrs={
            "study": self.name, "study_identity": json.dumps(ident),
            "study_record": json.dumps(self.record()),
            "study_units": json.dumps([dataclasses.asdict(u) for u in units])})

    @staticmethod
    def stored_units(store: Any) -> list[Unit]:
        """The units recorded when the run's store was made."""
        return [Unit(**u) for u in json.loads(store.attrs["study_units"])]

    def results(self, out: str | Path) -> dict[str, Any]:
        """Every stored unit's Dataset of the run in ``out``, by unit name (for reports)."""
        from polysdk.store import ActivationStore

        store = ActivationStore(study_paths(out)["store"], mode="r")
        return {u.name: store.read_result(u.name) for u in self.stored_units(store)}

    def execute_unit(self, unit: Unit) -> Any:
        """Seed with the unit's seed and run it (what a local loop or a worker calls)."""
        seed_everything(unit.seed)
        return self.run_unit(unit)

    def __getstate__(self) -> dict[str, Any]:   # the client stays behind (dask pickles us)
        state = dict(self.__dict__)
        state["client"] = None
        return state

    # ----------------------------------------------------------------- running
    def run(self, out: str | Path | None = None, resume: bool = True, report: bool = True,
            client: Any = None) -> Path:
        """Run (or resume) into ``out`` and write the report; returns the report's path
        (the store's with ``report=False``). ``client``: see the class parameters."""
        out = Path(out) if out is not None else self.default_out()
        paths = study_paths(out)
        self.resolved_device()   # fails early on a device that is not here
        seed_everything(self.seed)
        store = self.open_store(out, resume)
        try:
            units = self.stored_units(store)
            done = set(store.list_results())
            todo = [u for u in units if u.name not in done]
            log.info("%s: %d units, %d to run", self.name, len(units), len(todo))
            self._run_units(store, todo, client if client is not None else self.client)
            self.finish(store, units)
        finally:
            store.close()
        # written once the run is complete (a refused or killed run leaves the old one)
        paths["config"].write_text(json.dumps(self.record(), indent=2))
        return self.make_report(out) if report else paths["store"]

    def on_unit_done(self, unit: Unit, done: int, total: int) -> None:
        """Called after each unit is stored (progress); default: log it."""
        log.info("%s: unit %s stored (%d/%d)", self.name, unit.name, done, total)

    def _run_units(self, store: Any, todo: list[Unit], client: Any) -> None:
        if not todo:
            return
        if client is None:
            for i, unit in enumerate(todo):
                store.write_result(unit.name, self.execute_unit(unit))
                self.on_unit_done(unit, i + 1, len(todo))
            return
        from distributed import Client, as_completed

        own = isinstance(client, str)
        if own:
            client = _connect(Client, client)
        try:
            futures = {client.submit(_run_unit_task, self, unit, pure=False,
                                     key=f"{self.name}-{unit.name}-{unit.seed}-{id(self)}"):
                       unit for unit in todo}
            failed: list[tuple[Unit, BaseException]] = []
            n = 0
            # results come back here and are written one by one as they arrive: the
            # store has one writer (this process); a unit whose worker dies is lost alone
            for fut in as_completed(futures):
                unit = futures[fut]
                try:
                    ds = fut.result()
                except Exception as err:
                    failed.append((unit, err))
                    log.error("%s: unit %s failed: %s", self.name, unit.name, err)
                    continue
                store.write_result(unit.name, ds)
                n += 1
                self.on_unit_done(unit, n, len(todo))
        finally:
            if own:
                client.close()
        if failed:
            names = ", ".join(u.name for u, _ in failed)
            raise UnitError(f"{len(failed)} of {len(todo)} units failed ({names}); the other "
                            f"{n} are stored. First error: {type(failed[0][1]).__name__}: "
                            f"{failed[0][1]}. Re-run the same command to redo only these."
                            ) from failed[0][1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def _connect(client_cls: Any, address: str, timeout: str = "10s") -> Any:
    """A client of the scheduler at ``address``; ConfigError when it cannot be reached."""
    try:
        return client_cls(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError, TypeError) as err:
        raise ConfigError(f"cannot reach the dask scheduler at {address!r} ({type(err).__name__}"
                          f": {err}); start one (`dask scheduler`) or leave out --scheduler."
                          ) from err


def _config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two JSON-like configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            out += _config_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]
