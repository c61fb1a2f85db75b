"""Interventions: edit activations during a forward pass.

>>> import torch
>>> from polysdk.intervene import Ablate, Steer
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> with Ablate(net, "1", units=[0, 3]), Steer(net, "1", torch.ones(8), scale=0.5):
...     out = net(torch.randn(5, 4))      # hidden units 0 and 3 zeroed, then +0.5 everywhere

* :class:`Ablate` -- ``method="zero" | "mean" | "resample"`` (statistics from an
  ``ActivationStore``, a ``{site: DataArray}`` mapping, a DataArray or a tensor)
* :class:`Patch` -- activations from another input, given values or recorded samples
* :class:`Clamp` -- a fixed value
* :class:`Steer` -- add ``scale * direction``
* :class:`Compose` -- several components at once, applied in the order given
  (:mod:`polysdk.compose`; it composes any component)

Every intervention is a context manager built on :class:`polysdk.sites.HookedComponent`:
it works on plain modules, TransformerLens 4 bridges (hook names such as
``blocks.0.mlp.hook_post``) and ``nnsight.NNsight`` wrappers, attaches on ``__enter__``
and removes exactly its own hooks when the block ends, however it ends. On one site,
interventions run in the order they were attached. ``units=`` picks units on the
``unit`` axis and ``positions=`` tokens on the ``position`` axis (an int, a list of
ints or a boolean ``(sample, position)`` mask; with ``attention_mask=`` ints count
real tokens, ``-1`` = each text's last); everything else keeps its value. Axes are
named by :mod:`polysdk.dims`, as in :class:`polysdk.probe.Probe` (override with
``dims=``)::

    with Steer(model, "encoder.layer.3.output", direction, scale=4.0, positions=-1,
               attention_mask=batch["attention_mask"]):
        out = model(**batch)            # only each text's last real token is steered
"""

from polysdk.compose import Compose
from polysdk.intervene.base import Intervention
from polysdk.intervene.edits import Ablate, Clamp, Steer
from polysdk.intervene.patch import Patch

__all__ = ["Ablate", "Clamp", "Compose", "Intervention", "Patch", "Steer"]
