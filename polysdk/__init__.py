"""polysdk: a hook-based SDK for research on polysemantic neurons and superposition.

::

    from polysdk import ActivationStore, Probe
    with ActivationStore("acts.zarr", mode="w") as store:
        Probe(model, "features.*", store=store, reduce="mean").run(loader)
    store["features.6"]        # lazy, labelled xarray DataArray

Components: ``Probe`` (this module), detectors (``polysdk.detect``), interventions
(``polysdk.intervene``), maskers (``polysdk.mask``), regularizers
(``polysdk.regularize``) and studies (``polysdk.studies``); ``Trace`` reads sites
(optionally stopping the forward there) and ``Compose`` attaches several components
in order. See docs/architecture.md.
"""

from importlib.metadata import PackageNotFoundError, version

from polysdk import errors
from polysdk._util import set_progress
from polysdk.compose import Compose
from polysdk.probe import Probe
from polysdk.sites import HookedComponent, Hooks, list_sites, resolve_sites
from polysdk.store import ActivationStore
from polysdk.atlas import Atlas  # noqa: E402  (the detector agreement atlas)
from polysdk.trace import Trace

try:
    __version__ = version("polysdk")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+local"

__all__ = [
    "ActivationStore",
    "Atlas",
    "Compose",
    "HookedComponent",
    "Hooks",
    "Probe",
    "Trace",
    "__version__",
    "errors",
    "list_sites",
    "resolve_sites",
    "set_progress",
]
