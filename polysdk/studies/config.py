"""Study configs are dataclasses: typed ``--set KEY=VALUE``, sweeps, closest-name errors.

    from polysdk.studies.config import with_settings, parse_setting, describe
    cfg = with_settings(ToyModelsConfig(), {"N": "128", "seeds": 2})   # str -> field type
    parse_setting(ToyModelsConfig, "lerning_rate", "0.1")   # ConfigError: ... 'learning_rate'?
    describe(cfg, ToyModelsConfig())                         # "N=128 seeds=2"

A value given as text is parsed by the field's annotation: ``int``, ``float``, ``bool``
(true/false/yes/no/1/0), ``str``, ``X | None`` ("none"), unions (tried left to right,
``str`` last), ``Literal[...]``, ``list[X]``/``tuple[X, ...]`` (comma-separated) and
``dict`` (JSON). Values that are not text are used as given. Every failure is a
:class:`~polysdk.errors.ConfigError` naming the key, the value and the expected type.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from polysdk.errors import ConfigError, closest_names

__all__ = ["config_types", "parse_setting", "parse_sweep", "parse_text", "with_settings",
           "config_from_dict", "describe"]

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def config_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a config dataclass."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"{cls!r} is not a dataclass; a study's Config must be one.")
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def parse_text(text: str, tp: Any) -> Any:
    """Parse command-line ``text`` as type ``tp`` (raises ValueError when it is not one).

    >>> parse_text("3", int), parse_text("1e-3", float), parse_text("none", int | None)
    (3, 0.001, None)
    >>> parse_text("0.1,0.2", list[float]), parse_text("auto", int | str | None)
    ([0.1, 0.2], 'auto')
    """
    text = str(text).strip()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return _guess(text)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        options = sorted((a for a in args if a is not type(None)), key=lambda a: a is str)
        for option in options:
            try:
                return parse_text(text, option)
            except ValueError:
                continue
        raise ValueError(f"{text!r} is not a {' or '.join(map(_type_name, args))}")
    if origin is typing.Literal:
        for a in args:
            if str(a) == text:
                return a
        raise ValueError(f"{text!r} is not one of {list(args)}")
    if origin in (list, tuple) or tp in (list, tuple):
        elem = args[0] if args else Any
        values = [parse_text(t, elem) for t in text.split(",") if t.strip()]
        return tuple(values) if (origin or tp) is tuple else values
    if origin is dict or tp is dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{text!r} is not a JSON object") from err
        if not isinstance(value, dict):
            raise ValueError(f"{text!r} is not a JSON object")
        return value
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{text!r} is not a bool (true/false)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            f = float(text)   # "1e3" is an int; "1.5" is not
        except ValueError:
            f = float("nan")
        if not f.is_integer():
            raise ValueError(f"{text!r} is not an int")
        return int(f)
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a float") from None
    if tp is str:
        return text
    try:
        return tp(text)
    except Exception as err:
        raise ValueError(f"{text!r} is not a {_type_name(tp)}") from err


def _guess(text: str) -> Any:
    for tp in (bool, int, float):
        try:
            return parse_text(text, tp)
        except ValueError:
            pass
    return None if text.lower() in ("none", "null") else text


def _field_type(cls: type, key: str, what: str = "setting") -> Any:
    fields = config_types(cls)
    if key not in fields:
        close = closest_names(key, list(fields), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown {what} {key!r} for {cls.__name__}.{hint} Fields: "
                          f"{', '.join(fields)}.")
    return fields[key]


def parse_setting(cls: type, key: str, text: Any) -> Any:
    """The value of ``--set key=text`` for config class ``cls`` (typed by the field)."""
    tp = _field_type(cls, key)
    if not isinstance(text, str):
        return text
    try:
        return parse_text(text, tp)
    except ValueError as err:
        raise ConfigError(f"{key}={text}: {err} ({key} is {_type_name(tp)}).") from None


def parse_sweep(cls: type, key: str, text: Any, sweepable: Mapping[str, Any] | None = None
                ) -> list[Any]:
    """The values of ``--sweep key=v1,v2``: each parsed as the field ``key`` (or as the
    type ``sweepable[key]`` when the swept variables are not fields of ``cls``)."""
    if sweepable is not None:
        if key not in sweepable:
            close = closest_names(key, list(sweepable), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"cannot sweep {key!r}.{hint} Sweepable: "
                              f"{', '.join(sweepable)}.")
        tp = sweepable[key]
    else:
        tp = _field_type(cls, key, "sweep variable")
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    out = []
    for item in items:
        if isinstance(item, str):
            if not item.strip():
                continue
            try:
                item = parse_text(item, tp)
            except ValueError as err:
                raise ConfigError(f"--sweep {key}={text}: {err} ({key} is "
                                  f"{_type_name(tp)}).") from None
        out.append(item)
    if not out:
        raise ConfigError(f"--sweep {key}={text!r} gives no values; write e.g. {key}=1,2.")
    return out


def with_settings(config: Any, settings: Mapping[str, Any]) -> Any:
    """A copy of ``config`` with ``settings`` applied (text parsed by field type).

    The dataclass's own checks (``__post_init__``) run on the result; their
    ``ValueError``/``TypeError`` come back as :class:`ConfigError`.
    """
    cls = type(config)
    values = {k: parse_setting(cls, k, v) for k, v in settings.items()}
    if not values:
        return config
    try:
        return dataclasses.replace(config, **values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{cls.__name__} rejects {values}: {err}") from err


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuild a config from its JSON record (unknown keys name the closest field)."""
    for key in data:
        _field_type(cls, key, "field")
    try:
        return cls(**dict(data))
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{cls.__name__} rejects the record {dict(data)}: {err}") from err


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"[{_fmt(value[0])} .. {_fmt(value[-1])}] ({len(value)} values)"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def describe(config: Any, base: Any | None = None, skip: tuple[str, ...] = ()) -> str:
    """``key=value`` for every field (of those differing from ``base`` when given).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     n: int = 3
    ...     rate: float = 0.1
    >>> describe(C(n=5), C())
    'n=5'
    """
    parts = []
    for f in dataclasses.fields(config):
        if f.name in skip or not f.init:
            continue
        value = getattr(config, f.name)
        if base is not None and getattr(base, f.name, object()) == value:
            continue
        parts.append(f"{f.name}={_fmt(value)}")
    return " ".join(parts)
