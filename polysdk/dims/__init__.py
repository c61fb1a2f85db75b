"""Named dims: which axis is what, and every way to select or reduce the others.

This is the one module that decides axes. ``Probe``, the store, the detectors, the
maskers and the interventions all ask it; none keeps its own rule. Importing it
does not import torch (the store and the detectors are torch-free); the functions
that take tensors import torch when they are called.

::

    from polysdk import dims

    dims.default_dims(3)                      # ('sample', 'position', 'unit')
    sel = dims.Selection.parse("mean")        # also "max", "centre", -1, [0, 5], {"y": 6}
    out, out_dims, coords = dims.select(hidden, ("sample", "position", "unit"), sel,
                                        mask=batch["attention_mask"])   # padding never counts
    dims.select_array(store["fc1"], "centre") # the same rules on an xarray.DataArray

Names: ``sample`` (one input), ``token`` (one real token of a flattened text batch,
with ``sample`` and ``position`` coordinates), ``unit`` (the neuron / channel axis),
``position`` (sequence positions), ``y``/``x`` (and ``z``) spatial positions.

Positions in a masked batch count *real* tokens only: with an attention mask, ``0``
is each text's first real token and ``-1`` its last, whether the batch was padded on
the right or on the left; a flattened token's ``position`` coordinate is its index
among its text's real tokens.
"""

from __future__ import annotations

from polysdk.dims._array import reduce_texts, select_array
from polysdk.dims._rule import (
    POSITION,
    ROW_DIMS,
    SAMPLE,
    SPATIAL,
    TOKEN,
    UNIT,
    Selection,
    check_dims,
    coord_dims,
    default_dims,
    extra_dims,
    unit_axis,
)
from polysdk.dims._tensor import flatten_tokens, real_lengths, select, select_unit

__all__ = [
    "POSITION",
    "ROW_DIMS",
    "SAMPLE",
    "SPATIAL",
    "TOKEN",
    "UNIT",
    "Selection",
    "check_dims",
    "coord_dims",
    "default_dims",
    "extra_dims",
    "flatten_tokens",
    "real_lengths",
    "reduce_texts",
    "select",
    "select_array",
    "select_unit",
    "unit_axis",
]
