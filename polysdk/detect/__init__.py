"""Detectors: decide, unit by unit, which neurons are polysemantic, and why.

    from polysdk.detect import Detector, ClassSelectivity
    det = ClassSelectivity(min_rate=0.05).fit(store["fc1"])      # labels from the store
    det.result_        # xr.Dataset over ``unit``: score, polysemantic, firing_rate, ...
    Detector.from_name("hdbscan", top_k=500)                  # by registry name

Built-ins: ``class_selectivity`` (seed 001), ``hdbscan`` (seed 000), ``concept_sets``
(seed 003), ``concept_ranking`` (seed 004), ``feature_capacity`` (seed 002, from a
model's weights and feature embedding; a ``WeightDetector``). Third-party detectors
register through the ``polysdk.detectors`` entry-point group (see docs/detectors.md);
names are resolved by ``DETECTORS``, a :class:`polysdk.registry.Registry`.
"""

from polysdk.detect._registry import DETECTORS, available_detectors, get_detector_class, register
from polysdk.detect.base import BaseDetector, Detector, WeightDetector
from polysdk.detect.capacity import FeatureCapacity
from polysdk.detect.class_selectivity import ClassSelectivity
from polysdk.detect.clusterability import Clusterability  # noqa: F401  (weight-graph n-cut)
from polysdk.detect.concept_ranking import ConceptRanking
from polysdk.detect.concept_sets import ConceptSets
from polysdk.detect.dictionary import DictionaryFeatures
from polysdk.detect.hdbscan_clusters import HDBSCANClusters

__all__ = ["BaseDetector", "Detector", "WeightDetector", "DETECTORS", "register",
           "available_detectors", "get_detector_class", "DictionaryFeatures",
           "ClassSelectivity", "HDBSCANClusters", "ConceptSets",
           "ConceptRanking", "FeatureCapacity"]
