"""Maskers: learnable and fixed masks on weights and units, and how to compare them.

* :class:`ContinuousSparsification`: learn a sparse subnetwork for one unit (seed 000),
  with the ``contrastive`` or ``preserve`` objective (:mod:`polysdk.mask.objectives`).
* :class:`ActGrad`, :class:`SNIP`, :class:`FORCE`: circuit-pruning saliencies, global
  top-k masks, and :func:`preservation_curve` / :func:`feature_preservation`.
* :class:`UnitMask`: remove units at a site and keep them removed while training.
* :func:`mask_overlap`: intersection / IoU of two masks against independent random
  masks of the same densities (hypergeometric).
* :func:`masked_call`, :func:`masks_to_dataset`, :func:`save_masks`, :func:`load_masks`.

Every masker is a :class:`Masker` (:mod:`polysdk.mask.base`): hyper-parameters as
``__init__`` keywords (``get_params``, ``set_params``, ``clone``, ``repr``; bad values
raise ``ConfigError``), ``fit(data, ...)`` returns it, ``masks_`` and ``density_`` are
its fitted attributes and ``with masker.masked():`` runs the model with the masks.
The target is read by a :class:`polysdk.trace.Trace` that stops the forward there.

::

    cs = ContinuousSparsification(model, "features.10", unit=255, position="centre",
                                  params="features.*").fit(images, labels)
    other = ContinuousSparsification(model, "features.10", unit=255, position="center",
                                     params="features.*", swap=True).fit(images, labels)
    mask_overlap(cs.masks_, other.masks_).sel(param="overall")

Every masker takes its data as :class:`polysdk.probe.Probe` does (a tensor, a tuple
``(x, label, ...)``, a dict of model keyword arguments, or an iterable of such
batches), names the target site's axes with ``dims=`` (:mod:`polysdk.dims`) and
selects its value with ``position=`` (``"centre"``/``"center"``, ``"mean"``, ``-1``,
...); on text batches with an ``attention_mask`` padding never counts.
"""

from polysdk.dims import select_unit
from polysdk.mask._core import SiteReader, expand_mask, masked_call, select_parameters
from polysdk.mask.actgrad import ActGrad
from polysdk.mask.base import Masker
from polysdk.mask.compare import hypergeom_overlap, mask_overlap
from polysdk.mask.continuous import ContinuousSparsification, temperature_schedule
from polysdk.mask.io import dataset_to_masks, densities, load_masks, masks_to_dataset, save_masks
from polysdk.mask.objectives import Contrastive, Preserve
from polysdk.mask.preservation import feature_preservation, preservation_curve, preservation_scores
from polysdk.mask.saliency import FORCE, SNIP, SaliencyMasker, collapse_target, force_schedule, topk_masks
from polysdk.mask.unit import UnitMask

__all__ = [
    "FORCE",
    "SNIP",
    "ActGrad",
    "Contrastive",
    "ContinuousSparsification",
    "Masker",
    "Preserve",
    "SaliencyMasker",
    "SiteReader",
    "UnitMask",
    "collapse_target",
    "dataset_to_masks",
    "densities",
    "expand_mask",
    "feature_preservation",
    "force_schedule",
    "hypergeom_overlap",
    "load_masks",
    "mask_overlap",
    "masked_call",
    "masks_to_dataset",
    "preservation_curve",
    "preservation_scores",
    "save_masks",
    "select_parameters",
    "select_unit",
    "temperature_schedule",
    "topk_masks",
]
