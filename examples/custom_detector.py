"""Write your own detector: one subclass, one method, then use it like a built-in.

    .venv/bin/python examples/custom_detector.py

The example plants polysemantic units (we know the truth), records them into an
activation store, fits a built-in detector and a custom one side by side, scores both
against the truth, and saves the custom result beside the activations.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from polysdk.data import make_planted_classes, precision_recall
from polysdk.detect import ClassSelectivity, Detector, register
from polysdk.params import Interval
from polysdk.store import ActivationStore


@register("top_class_share")
class TopClassShare(Detector):
    """Polysemantic when the classes beyond a unit's favourite one still hold a large
    share of its total activation.

    score = 1 - (activation mass on the top class) / (activation mass on all classes).
    """

    needs_labels = True  # fit raises a clear error when no labels are found
    # declared rules, checked by fit and set_params: max_share=2 raises ConfigError
    _constraints = {"max_share": Interval(0, 1)}

    def __init__(self, max_share: float = 0.8):
        self.max_share = max_share  # hyper-parameters: stored unchanged

    def _detect(self, activations: xr.DataArray, labels: xr.DataArray) -> xr.Dataset:
        # activations: (sample, unit), lazy and dask-backed when read from a store;
        # xarray's groupby keeps it lazy and reduces chunk by chunk.
        per_class = activations.clip(min=0).groupby(labels.rename("class")).sum("sample")
        share = per_class.max("class") / per_class.sum("class").where(lambda s: s > 0)
        score = (1 - share).fillna(0.0)
        return xr.Dataset({"score": score, "polysemantic": share < self.max_share,
                           "class_mass": per_class})


def main() -> None:
    planted = make_planted_classes(n_samples=3000, n_classes=8, units_per_class=4, n_poly=8,
                                   seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acts.zarr"
        with ActivationStore(path, mode="w", chunk_samples=512) as store:
            store.append({"fc": planted.activations.values}, dims={"fc": ("sample", "unit")},
                         coords={"label": planted.activations["label"].values})
        store = ActivationStore(path, mode="a")
        site = store["fc"]  # lazy, dask-backed

        for det in (ClassSelectivity(), Detector.from_name("top_class_share", max_share=0.8)):
            det.fit(site)
            p, r = precision_recall(det.result_["polysemantic"], planted.polysemantic)
            print(f"{det!r:40s} precision {p:.2f} recall {r:.2f} "
                  f"polysemantic units {det.polysemantic_.tolist()}")

        name = det.save(store, "top_class_share/fc")
        back = Detector.load(store, name)
        print(f"reloaded {back!r} from {name!r}: params {back.get_params()}, "
              f"polysdk {back.result_.attrs['polysdk_version']}")
        assert np.array_equal(back.polysemantic_, det.polysemantic_)


if __name__ == "__main__":
    main()
