"""Parameter constraints several built-in detectors declare (see :mod:`polysdk.params`).

>>> POSITION.accepts("center"), POSITION.accepts({"y": 3}), POSITION.accepts("middle")
(True, True, False)
>>> OPTIONAL_SEQUENCE.accepts(["a", "b"]), OPTIONAL_SEQUENCE.accepts("ab")
(True, False)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from polysdk.dims import Selection
from polysdk.errors import ConfigError
from polysdk.params import Options, Satisfies

__all__ = ["FLAG", "OPTIONAL_MAPPING", "OPTIONAL_SEQUENCE", "OPTIONAL_STR", "PER", "POSITION",
           "STR"]


def _is_selection(value: Any) -> bool:
    try:
        Selection.parse(value)
    except ConfigError:
        return False
    return True


def _is_sequence(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, bytes, Mapping)):
        return False
    try:
        iter(value)
    except TypeError:
        return False
    return True


#: a :class:`polysdk.dims.Selection` spelling (or None: keep every position)
POSITION = Satisfies(_is_selection, "a position selection: 'max', 'mean', 'sum', 'centre' "
                                    "(or 'center'), None, an int (-1 = the last real token), "
                                    "a list of ints, a tuple of ints or a {dim: index} dict")
#: text rows: texts, real tokens, or what the labels say
PER = Options("auto", "text", "token")
OPTIONAL_SEQUENCE = Satisfies(_is_sequence, "None or a list of values (not a single string)")
OPTIONAL_MAPPING = Satisfies(lambda v: v is None or isinstance(v, Mapping),
                             "None or a dict of keyword arguments")
STR = Satisfies(lambda v: isinstance(v, str) and bool(v), "a non-empty string")
OPTIONAL_STR = Satisfies(lambda v: v is None or (isinstance(v, str) and bool(v)),
                         "None or a non-empty string")
FLAG = Satisfies(lambda v: isinstance(v, (bool, np.bool_)), "True or False")
