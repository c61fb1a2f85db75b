"""Detectors by name: one :class:`polysdk.registry.Registry`, as studies have.

    from polysdk.detect import register, get_detector_class, available_detectors
    @register("mine")                 # or @register (snake-cased class name)
    class Mine(Detector): ...
    get_detector_class("hdbscn")      # ConfigError: ... Did you mean 'hdbscan'?

Built-ins are named here as ``"module:Class"`` (imported when first asked for);
third-party packages add theirs through the ``polysdk.detectors`` entry-point group
(listed without importing them; a plugin that fails to load is reported by name when
asked for). A name taken by a built-in or by :func:`register` is refused unless
``overwrite=True``; a registered name shadows a plugin's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from polysdk.errors import ConfigError
from polysdk.registry import Registry

if TYPE_CHECKING:
    from polysdk.detect.base import BaseDetector

__all__ = ["DETECTORS", "ENTRY_POINT_GROUP", "available_detectors", "get_detector_class",
           "register"]

ENTRY_POINT_GROUP = "polysdk.detectors"
D = TypeVar("D", bound=type)


def _check(name: str, obj: Any) -> None:
    """Only detector classes; a class met under a name it has none for takes that name
    (what ``save`` records, so ``load`` finds a plugin again by its entry point)."""
    from polysdk.detect.base import BaseDetector

    if not (isinstance(obj, type) and issubclass(obj, BaseDetector)):
        raise ConfigError(f"the detector {name!r} is {obj!r}, not a detector class; subclass "
                          "polysdk.detect.Detector (or WeightDetector) and implement _detect().")
    if "registry_name" not in obj.__dict__:
        obj.registry_name = name


#: Every detector by name: built-ins, :func:`register` and the entry points.
DETECTORS: Registry[type[BaseDetector]] = Registry(
    "detector", group=ENTRY_POINT_GROUP, check=_check, builtins={
        "class_selectivity": "polysdk.detect.class_selectivity:ClassSelectivity",
        "hdbscan": "polysdk.detect.hdbscan_clusters:HDBSCANClusters",
        "concept_sets": "polysdk.detect.concept_sets:ConceptSets",
        "concept_ranking": "polysdk.detect.concept_ranking:ConceptRanking",
        "feature_capacity": "polysdk.detect.capacity:FeatureCapacity",
        "dictionary_features": "polysdk.detect.dictionary:DictionaryFeatures",
    })


def _snake(name: str) -> str:
    return "".join(("_" + c.lower()) if c.isupper() and i else c.lower()
                   for i, c in enumerate(name))


def _add(name: str | None, cls: Any, overwrite: bool) -> Any:
    if not isinstance(cls, type):
        _check(str(name), cls)  # raises with the fix
    name = name or cls.__dict__.get("registry_name") or _snake(cls.__name__)
    if DETECTORS.sources().get(name) in ("registered", "built-in") and not overwrite:
        old = DETECTORS.get(name)
        reloaded = (old.__module__, old.__qualname__) == (cls.__module__, cls.__qualname__)
        if old is not cls and not reloaded:
            raise ConfigError(f"detector name {name!r} is already registered to "
                              f"{old.__module__}.{old.__qualname__}; choose another name or "
                              "pass overwrite=True.")
    return DETECTORS.register(name, cls, overwrite=True)  # checked above, built-ins included


def register(name: str | type | None = None, cls: type | None = None, *,
             overwrite: bool = False) -> Any:
    """Register a detector class under ``name`` (decorator or plain function).

    ``@register("mine")``, ``@register`` (name = the class's ``registry_name`` or its
    snake-cased class name) and ``register("mine", MyDetector)`` all work. A name taken
    by a built-in or another registered class raises :class:`ConfigError` unless
    ``overwrite``.
    """
    if isinstance(name, type):  # bare @register
        return _add(None, name, overwrite)
    if cls is not None:
        return _add(name, cls, overwrite)

    def deco(klass: D) -> D:
        return _add(name, klass, overwrite)

    return deco


def available_detectors() -> list[str]:
    """Sorted names of every detector: built-ins, registered and installed plugins
    (listed from their entry points, nothing imported)."""
    return DETECTORS.names()


def get_detector_class(name: str) -> type[BaseDetector]:
    """The class called ``name``; an unknown name raises :class:`ConfigError` naming the
    closest known ones."""
    return DETECTORS.get(name)
