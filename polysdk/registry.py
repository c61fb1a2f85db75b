"""Named registries of plugins: built-ins, entry points, and closest-name errors.

    from polysdk.registry import Registry
    STUDIES = Registry("study", group="polysdk.studies",
                       builtins={"toy-models": "polysdk.studies.toy_models:ToyModelStudy"})
    STUDIES.register("mine", MyStudy)          # or a decorator: @STUDIES.register("mine")
    STUDIES.get("toy-modles")                  # ConfigError: ... did you mean 'toy-models'?
    STUDIES.names()                            # every name: built-ins, registered, plugins

One class for every family that users extend by name (studies today; detectors can
adopt it: a ``Registry("detector", group="polysdk.detectors", ...)``). Built-ins are
given as ``"module:attribute"`` strings and entry points are loaded on first use, so
making a registry imports nothing. A name given twice keeps the first in this order:
registered in Python, built-in, entry point (a plugin cannot shadow a built-in); a
plugin that fails to load is reported by name when asked for, not when listing.

>>> reg = Registry("colour", group=None, builtins={"red": "builtins:str"})
>>> reg.get("red") is str
True
>>> reg.get("rde")
Traceback (most recent call last):
...
polysdk.errors.ConfigError: unknown colour 'rde'. Did you mean 'red'? Known colours: ['red'].
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from polysdk.errors import ConfigError, closest_names

__all__ = ["Registry", "load_object"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def load_object(spec: str) -> Any:
    """``"package.module:attr.sub"`` -> the object (what entry points name)."""
    module, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Objects of one kind by name (see the module docstring).

    Parameters
    ----------
    kind : str
        What the names name, for messages ("study", "detector").
    group : str or None
        The entry point group whose entries are plugins (None: no plugins).
    builtins : mapping, optional
        name -> ``"module:attribute"``, imported when first asked for.
    check : callable, optional
        Called with ``(name, obj)`` for every object before it is handed out; raises
        :class:`~polysdk.errors.ConfigError` for one of the wrong kind.
    """

    def __init__(self, kind: str, group: str | None = None,
                 builtins: Mapping[str, str] | None = None,
                 check: Callable[[str, Any], None] | None = None) -> None:
        self.kind, self.group = kind, group
        self._builtins = dict(builtins or {})
        self._registered: dict[str, T] = {}
        self._check = check

    # ------------------------------------------------------------------ adding
    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False) -> Any:
        """Add ``obj`` under ``name``; without ``obj``, a decorator that does it.

        A name already registered for another object raises :class:`ConfigError`
        unless ``overwrite`` (registering the same object again is a no-op).
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} name must be a non-empty string, got {name!r}.")

        def add(o: T) -> T:
            taken = self._registered.get(name)
            if taken is not None and taken is not o and not overwrite and (
                getattr(taken, "__qualname__", None), getattr(taken, "__module__", None)
            ) != (getattr(o, "__qualname__", None), getattr(o, "__module__", None)):
                raise ConfigError(
                    f"the {self.kind} name {name!r} is taken by {taken!r}; choose another "
                    "name or pass overwrite=True")
            if self._check is not None:
                self._check(name, o)
            self._registered[name] = o
            return o

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Forget a name added with :meth:`register` (built-ins and plugins stay)."""
        self._registered.pop(name, None)

    # ------------------------------------------------------------------ looking up
    def _entry_points(self) -> dict[str, Any]:
        if self.group is None:
            return {}
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group=self.group)}

    def sources(self) -> dict[str, str]:
        """name -> where it comes from ("registered", "built-in" or the plugin's spec)."""
        out = {n: ep.value for n, ep in self._entry_points().items()}
        out.update({n: "built-in" for n in self._builtins})
        out.update({n: "registered" for n in self._registered})
        return dict(sorted(out.items()))

    def names(self) -> list[str]:
        """Every known name, sorted (nothing is imported)."""
        return list(self.sources())

    def __contains__(self, name: object) -> bool:
        return name in self.sources()

    def get(self, name: str) -> T:
        """The object called ``name``; an unknown name raises with the closest ones."""
        if name in self._registered:
            return self._registered[name]
        spec: str | None = self._builtins.get(name)
        eps = self._entry_points() if spec is None else {}
        if spec is None and name not in eps:
            known = self.names()
            close = closest_names(str(name), known, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: "
                              f"{known}.")
        try:
            obj = load_object(spec) if spec is not None else eps[name].load()
        except Exception as err:   # a broken plugin says which one
            where = spec or eps[name].value
            raise ConfigError(f"the {self.kind} {name!r} ({where}) failed to load: "
                              f"{type(err).__name__}: {err}") from err
        if self._check is not None:
            self._check(name, obj)
        return obj

    def items(self) -> dict[str, T]:
        """name -> object for every name that loads (a broken plugin is logged, skipped)."""
        out: dict[str, T] = {}
        for name in self.names():
            try:
                out[name] = self.get(name)
            except ConfigError as err:
                log.warning("%s", err)
        return out

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, names={self.names()})"
