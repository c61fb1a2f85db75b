"""A third-party detector published as its own package (see docs/detectors.md).

polysdk finds it through the ``polysdk.detectors`` entry point in ``pyproject.toml``;
no import of this package is needed::

    from polysdk.detect import Detector
from polysdk.params import Interval
    det = Detector.from_name("max_spread", ratio=3.0).fit(acts)
"""

from __future__ import annotations

import xarray as xr

from polysdk.detect import Detector
from polysdk.params import Interval

__all__ = ["MaxSpread"]


class MaxSpread(Detector):
    """Polysemantic when a unit's max activation exceeds ``ratio`` x its mean
    activation over the samples where it is positive (a crude multi-modality flag)."""

    # checked by fit (and set_params): MaxSpread(ratio=0).fit(acts) raises ConfigError
    _constraints = {"ratio": Interval(1, None)}

    def __init__(self, ratio: float = 3.0):
        self.ratio = ratio

    def _detect(self, activations: xr.DataArray, labels: xr.DataArray | None) -> xr.Dataset:
        acts = activations.max([d for d in activations.dims if d not in ("sample", "unit")]) \
            if activations.ndim > 2 else activations
        positive = acts.where(acts > 0)
        score = (acts.max("sample") / positive.mean("sample")).fillna(0.0)
        return xr.Dataset({"score": score, "polysemantic": score > self.ratio})
