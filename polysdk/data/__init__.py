"""Embedded datasets and ground-truth generators (no download needed).

    from polysdk.data import make_planted_classes, precision_recall
    pl = make_planted_classes(n_samples=2000, signal=1.0)
    pl.activations      # xr.DataArray (sample, unit) with a ``label`` coordinate
    pl.polysemantic     # the planted truth, one bool per unit
"""

from polysdk.data.planted import (
    PlantedConcepts,
    PlantedUnits,
    make_planted_classes,
    make_planted_concepts,
    precision_recall,
)

__all__ = ["PlantedUnits", "PlantedConcepts", "make_planted_classes",
           "make_planted_concepts", "precision_recall"]
