"""Toy models of superposition (seed 002): a quick sweep, its numbers and its report.

    .venv/bin/python examples/toy_models.py            # about a minute on 2 CPU cores

Trains the LR1 preset's learning-rate sweep at the quick CPU scale, all models in one
batched computation, then reads the results back with plain xarray-style access and
checks one model with the ``FeatureCapacity`` detector.
"""

from __future__ import annotations

from polysdk.detect.capacity import FeatureCapacity
from polysdk.store import ActivationStore
from polysdk.studies import ToyModelStudy


def main(out: str = "runs/example-toy-models") -> None:
    study = ToyModelStudy(batch="B1", quick=True, sweep={"initial_bias": [-1.0, 0.0]},
                          seeds=2)
    report = study.run(out=out)

    store = ActivationStore(f"{out}/results.zarr")
    summary = store.read_result("toy_models/summary")
    cols = ["initial_bias", "seed", "final_loss", "mono_per_feature", "mono_per_neuron",
            "features_covered"]
    print(summary[cols].to_dataframe()[cols].to_string())

    # monosemantic neurons / N at each checkpoint (steps 2**j - 1): a negative offset
    # gives some while the decaying bias is still negative (see docs/results.md)
    chunk = store.read_result("toy_models/chunk_000")
    for i in range(chunk.sizes["instance"]):
        curve = chunk["checkpoint_mono_per_feature"].values[i]
        print(f"offset {float(chunk['initial_bias'][i]):+.1f} seed {int(chunk['seed'][i])}: "
              f"mono/N by log2(step) {[round(float(c), 2) for c in curve]}")

    # one model, checked again from its stored activations with the detector
    det = FeatureCapacity(threshold=0.999).fit(chunk["checkpoint_activation"].values[0, -1])
    print(f"instance 0: {det.n_monosemantic_} monosemantic neurons, "
          f"{det.mono_per_feature_:.3f} per feature, {det.features_covered_} features covered")
    print(f"report: {report}")


if __name__ == "__main__":
    main()
