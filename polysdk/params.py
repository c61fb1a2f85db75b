"""One parameter API for every component family (scikit-learn's estimator contract).

Hyper-parameters are the keyword arguments of ``__init__``, stored unchanged under
their own names; :class:`Params` derives ``get_params``, ``set_params``, ``clone``
and ``repr`` from the signature, and checks the constraints a class declares in one
place, raising :class:`~polysdk.errors.ConfigError`::

    class MyDetector(Params):
        _constraints = {"threshold": Interval(0, 1), "rule": Options("rank", "all")}

        def __init__(self, threshold: float = 0.5, rule: str = "rank") -> None:
            self.threshold = threshold
            self.rule = rule
            self._validate_params()

    MyDetector(threshold=2)        # ConfigError: threshold=2 is not in [0, 1] ...

>>> class Demo(Params):
...     _constraints = {"k": Interval(1, None, integer=True)}
...     def __init__(self, k: int = 3, name: str = "x") -> None:
...         self.k, self.name = k, name
...         self._validate_params()
>>> Demo(k=5)
Demo(k=5)
>>> Demo().clone(name="y").get_params()
{'k': 3, 'name': 'y'}
>>> d = Demo()
>>> try:
...     d.set_params(k=0)
... except ConfigError:
...     pass
>>> d.k                              # a refused value leaves the object as it was
3
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from polysdk.errors import ConfigError, closest_names

__all__ = ["Interval", "Options", "Params", "Satisfies", "TypeOf", "short_repr"]

_EMPTY = inspect.Parameter.empty


class Constraint:
    """A rule one parameter value must follow; ``describe()`` says it in words."""

    def accepts(self, value: Any) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Constraint):
    """A number in ``[low, high]`` (``None``: unbounded; ``closed`` picks the ends)."""

    low: float | None = None
    high: float | None = None
    closed: str = "both"
    integer: bool = False
    allow_none: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.allow_none
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and math.isnan(value)
        ):
            try:
                import numpy as np

                if not isinstance(value, (np.integer, np.floating)) or isinstance(value, np.bool_):
                    return False
            except ImportError:  # pragma: no cover
                return False
        if value != value:  # NaN (numpy scalars reach here too)
            return False
        if self.integer and int(value) != value:
            return False
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and (value < self.low or (value == self.low and not left)):
            return False
        if self.high is not None and (value > self.high or (value == self.high and not right)):
            return False
        return True

    def describe(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        brackets = {"both": "[]", "left": "[)", "right": "(]", "neither": "()"}[self.closed]
        kind = "an integer" if self.integer else "a number"
        none = " or None" if self.allow_none else ""
        return f"{kind} in {brackets[0]}{lo}, {hi}{brackets[1]}{none}"


@dataclass(frozen=True, init=False)
class Options(Constraint):
    """One of the listed values (strings compare case-sensitively)."""

    values: tuple[Any, ...]

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", tuple(values))

    def accepts(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) or value is v for v in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True, init=False)
class TypeOf(Constraint):
    """An instance of one of the given types."""

    types: tuple[type, ...]

    def __init__(self, *types: type) -> None:
        object.__setattr__(self, "types", tuple(types))

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.types)

    def describe(self) -> str:
        return "a " + " or ".join(t.__name__ for t in self.types)


@dataclass(frozen=True)
class Satisfies(Constraint):
    """Any rule as a predicate, with the words that explain it."""

    predicate: Callable[[Any], bool]
    description: str

    def accepts(self, value: Any) -> bool:
        return bool(self.predicate(value))

    def describe(self) -> str:
        return self.description


class Params:
    """Mixin: ``get_params`` / ``set_params`` / ``clone`` / ``repr`` from ``__init__``,
    and the class's declared ``_constraints`` checked by :meth:`_validate_params`.

    A constraint value is one :class:`Constraint` or a tuple of them (any may match).
    """

    _constraints: ClassVar[Mapping[str, Constraint | tuple[Constraint, ...]]] = {}

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            name for name, p in sig.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    @classmethod
    def _param_defaults(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {n: p.default for n, p in sig.parameters.items() if n != "self"}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments as stored on the object (``deep`` is accepted
        for scikit-learn compatibility; components hold no nested estimators)."""
        out = {}
        for name in self._param_names():
            if not hasattr(self, name):
                raise AttributeError(
                    f"{type(self).__name__}.__init__ takes {name!r} but does not store it as "
                    f"self.{name}; store every constructor argument unchanged")
            out[name] = getattr(self, name)
        return out

    def set_params(self, **params: Any) -> Self:
        """Change hyper-parameters (checked); unknown names raise with the closest."""
        names = self._param_names()
        for key in params:
            if key not in names:
                close = closest_names(key, names)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{type(self).__name__} has no parameter {key!r}{hint} "
                                  f"Parameters: {', '.join(names)}")
        before = {key: getattr(self, key) for key in params if hasattr(self, key)}
        for key, value in params.items():
            setattr(self, key, value)
        try:
            self._validate_params()
        except ConfigError:
            for key in params:  # a refused value leaves the object as it was
                if key in before:
                    setattr(self, key, before[key])
            raise
        return self

    def clone(self, **overrides: Any) -> Self:
        """A new, unfitted object with the same parameters (``overrides`` replace some)."""
        unknown = set(overrides) - set(self._param_names())
        if unknown:
            self.set_params(**{k: overrides[k] for k in unknown})  # raises with the closest
        return type(self)(**{**self.get_params(), **overrides})

    def _validate_params(self, names: Iterable[str] | None = None) -> None:
        """Check the declared constraints; raise ConfigError naming value and rule."""
        for name in names if names is not None else self._constraints:
            rule = self._constraints[name]
            rules = rule if isinstance(rule, tuple) else (rule,)
            value = getattr(self, name)
            if not any(r.accepts(value) for r in rules):
                expected = " or ".join(r.describe() for r in rules)
                raise ConfigError(
                    f"{type(self).__name__}({name}={value!r}): {name} must be {expected}; "
                    f"got {value!r}")

    def __repr__(self) -> str:
        """``Name(k=v, ...)`` of the parameters that differ from their defaults, one line
        (models, optimizers, tensors and arrays by type and shape)."""
        defaults = self._param_defaults()
        try:
            params = self.get_params()
        except AttributeError:
            return f"{type(self).__name__}(...)"
        shown = []
        for name, value in params.items():
            default = defaults.get(name, _EMPTY)
            try:
                same = default is not _EMPTY and type(value) is type(default) and bool(value == default)
            except Exception:  # tensors, arrays: always shown
                same = False
            if not same:
                shown.append(f"{name}={short_repr(value)}")
        return f"{type(self).__name__}({', '.join(shown)})"


def short_repr(value: Any) -> str:
    """A one-line repr: models, optimizers, tensors and arrays by type (and shape)."""
    if hasattr(value, "named_modules") or hasattr(value, "param_groups"):
        return type(value).__name__
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (int, float, str)):
        return f"{type(value).__name__}{tuple(shape)}"
    text = repr(value)
    return text if len(text) <= 80 and "\n" not in text else f"<{type(value).__name__}>"
