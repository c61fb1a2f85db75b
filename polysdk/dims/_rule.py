"""The axis rule and the selection specs (see :mod:`polysdk.dims`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from polysdk.errors import ConfigError, SiteError


SAMPLE, TOKEN, UNIT, POSITION = "sample", "token", "unit", "position"
SPATIAL = ("z", "y", "x")
ROW_DIMS = (SAMPLE, TOKEN)
_KINDS = ("none", "mean", "max", "sum", "centre", "index")
_ALIASES = {"center": "centre"}
_TEXT_CHUNK = 4096


# --------------------------------------------------------------------------- the axis rule


def default_dims(ndim: int) -> tuple[str, ...]:
    """Dim names of an ``ndim``-D site tensor when none are given.

    2-D ``(sample, unit)``; 3-D ``(sample, position, unit)`` (transformers,
    ``batch_first`` RNNs); 4-D ``(sample, unit, y, x)`` (2-D convolutions); 5-D
    ``(sample, unit, z, y, x)``; 1-D ``(sample,)``; otherwise ``(sample, dim_1, ...)``.

    >>> default_dims(4)
    ('sample', 'unit', 'y', 'x')
    """
    table = {
        1: (SAMPLE,),
        2: (SAMPLE, UNIT),
        3: (SAMPLE, POSITION, UNIT),
        4: (SAMPLE, UNIT, "y", "x"),
        5: (SAMPLE, UNIT, "z", "y", "x"),
    }
    return table.get(ndim, (SAMPLE, *(f"dim_{i}" for i in range(1, ndim))))


def check_dims(
    given: Sequence[str] | None,
    shape: Sequence[int],
    *,
    site: str,
    rows: Sequence[str] = (SAMPLE,),
    need_unit: bool = False,
) -> tuple[str, ...]:
    """``given`` (or the default rule) checked against ``shape``: one unique name per
    axis, the first in ``rows``; with ``need_unit``, one of them ``unit``."""
    names = tuple(given) if given is not None else default_dims(len(shape))
    if len(names) != len(shape) or not names or names[0] not in rows or len(set(names)) != len(names):
        first = " or ".join(repr(r) for r in rows)
        raise SiteError(
            f"site {site!r}: dims {names} do not fit a tensor of shape {tuple(shape)}; "
            f"pass dims={{{site!r}: (...)}} with one unique name per axis, {first} first"
        )
    if need_unit and UNIT not in names:
        raise SiteError(f"dims {names} of site {site!r} have no 'unit' axis; name one 'unit'")
    return names


def coord_dims(name: str, ndim: int, row: str = SAMPLE) -> tuple[str, ...]:
    """Dims of a per-row coordinate given without them: ``(row,)``; 2-D ``(row,
    position)`` (token ids, masks); otherwise ``(row, <name>_dim1, ...)``."""
    if ndim == 2:
        return (row, POSITION)
    return (row, *(f"{name}_dim{i}" for i in range(1, ndim)))


def unit_axis(names: Sequence[str], *, site: str = "") -> int:
    """Index of ``unit`` in ``names`` (raises :class:`SiteError` when there is none)."""
    if UNIT not in names:
        where = f" of site {site!r}" if site else ""
        raise SiteError(f"dims {tuple(names)}{where} have no 'unit' axis; name one 'unit'")
    return list(names).index(UNIT)


def extra_dims(names: Sequence[str]) -> list[str]:
    """The dims a selection acts on: all but the row dim (``sample``/``token``) and ``unit``."""
    return [d for d in names if d not in ROW_DIMS and d != UNIT]


# --------------------------------------------------------------------------- selections


@dataclass(frozen=True)
class Selection:
    """What to do with the dims other than ``sample`` and ``unit``.

    ``kind`` is ``"none"`` (keep them), ``"mean"``, ``"max"``, ``"sum"`` (reduce them),
    ``"centre"`` (the middle index of each) or ``"index"``: ``index`` is an int (the
    one extra dim, e.g. a sequence position; ``-1`` = the last real token), a list of
    ints (chosen sequence positions, kept as a ``position`` dim), a tuple with one int
    per extra dim (``(6, 6)`` on a conv map) or a ``{dim: index}`` dict.

    >>> Selection.parse("center")
    Selection(kind='centre', index=None)
    >>> Selection.parse(-1)
    Selection(kind='index', index=-1)
    """

    kind: str
    index: Any = None

    @classmethod
    def parse(cls, spec: Any, *, name: str = "reduce") -> Selection:
        """Read every spelling users write; raise :class:`ConfigError` on anything else."""
        if isinstance(spec, Selection):
            return spec
        if spec is None:
            return cls("none")
        if isinstance(spec, str):
            key = _ALIASES.get(spec.lower(), spec.lower())
            if key in _KINDS and key != "index":
                return cls(key)
        elif isinstance(spec, (bool, np.bool_)):
            pass
        elif isinstance(spec, (int, np.integer)):
            return cls("index", int(spec))
        elif isinstance(spec, Mapping):
            if spec and all(isinstance(k, str) for k in spec) and all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in spec.values()
            ):
                return cls("index", {k: int(v) for k, v in spec.items()})
        elif isinstance(spec, (tuple, list)):
            if spec and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in spec):
                values = [int(v) for v in spec]
                return cls("index", tuple(values) if isinstance(spec, tuple) else values)
        raise ConfigError(
            f"{name}={spec!r} is not understood; use 'none', 'mean', 'max', 'sum', "
            f"'centre' (or 'center'), a position (-1 = the last real token), a list of "
            f"positions, a tuple with one index per spatial dim, or a {{dim: index}} dict"
        )

    @property
    def reduces(self) -> bool:
        """True when the selection removes every extra dim (a list of positions keeps one)."""
        return self.kind != "none" and not isinstance(self.index, list)


def _index_per_dim(sel: Selection, extra: list[str], sizes: Mapping[str, int], *, site: str,
                   name: str) -> dict[str, int]:
    """``{dim: index}`` of a ``centre`` / tuple / dict / int selection (checked)."""
    if sel.kind == "centre":
        return {d: sizes[d] // 2 for d in extra}
    idx = sel.index
    if isinstance(idx, Mapping):
        missing = [d for d in extra if d not in idx]
        unknown = [d for d in idx if d not in extra]
        if missing or unknown:
            raise SiteError(
                f"{name}={idx!r} does not match the dims {extra} of site {site!r} (missing "
                f"{missing}, unknown {unknown}); give one index per dim")
        chosen = dict(idx)
    elif isinstance(idx, tuple):
        if len(idx) != len(extra):
            raise SiteError(
                f"{name}={idx!r} has {len(idx)} indices but site {site!r} has the dims "
                f"{extra} to index; give one index per dim, 'centre' or a {{dim: index}} dict")
        chosen = dict(zip(extra, idx))
    else:
        if len(extra) != 1:
            raise SiteError(
                f"{name}={idx!r} is one index but site {site!r} has the dims {extra}; pass "
                f"a tuple with one index per dim or a {{dim: index}} dict")
        chosen = {extra[0]: int(idx)}
    for d, i in chosen.items():
        if not -sizes[d] <= i < sizes[d]:
            raise SiteError(f"{name}: index {i} is out of range for {d!r} of size {sizes[d]} "
                            f"at site {site!r}; pick an index inside it")
    return {d: i % sizes[d] for d, i in chosen.items()}
