"""AlexNet subnetworks (seed 000) on the embedded shapes set: find polysemantic
channels by clustering, give each of a channel's meanings its own sparse subnetwork.

    .venv/bin/python examples/alexnet_subnetworks.py              # the quick preset
    .venv/bin/python examples/alexnet_subnetworks.py --tiny       # seconds, for a look

The study trains a narrow AlexNet on generated images (some classes are merged
concepts: one label for two unrelated looks), ranks every channel of conv3/4/5 by its
pre-ReLU centre activation, clusters each unit's top images with HDBSCAN, and trains
two continuous-sparsification subnetworks for the chosen candidates. Then this script
reads the results back: which units are candidates and what their clusters are made
of, and how well each circuit separates a candidate's two clusters.
"""

from __future__ import annotations

import sys

import numpy as np

from polysdk.studies.alexnet import AlexNetStudy

TINY = dict(n_per_class=40, n_test_per_class=8, epochs=3, widths=(8, 16, 24, 16, 16),
            hidden=32, top_k=40, min_cluster_size=6, cs_epochs=8, milestones=(6, 7),
            ladder=(0.5, 0.1, 0.01), ladder_images=24, n_candidates=1)


def main(out: str = "runs/example-alexnet", tiny: bool = False) -> None:
    study = AlexNetStudy(quick=True, progress=False, **(TINY if tiny else {}))
    report = study.run(out=out)
    res = study.results(out)
    data = study.data()

    print(f"test accuracy {res['alexnet/model'].attrs['test_accuracy']:.3f}")
    for layer in study.config.layers:
        cl = res[f"alexnet/clusters/{layer}"]
        cand = np.flatnonzero(cl["n_clusters"].values >= 2)
        print(f"{layer}: {len(cand)} of {cl.sizes['unit']} units have two or more "
              f"clusters; {int(cl['two_looks'].values.sum())} serve both looks of a "
              "merged class")
    for i in range(study.n_slots()):
        cmp = res[f"alexnet/cand{i}/compare"]
        if "empty" in cmp:
            continue
        layer, unit = cmp.attrs["layer"], cmp.attrs["unit"]
        cl = res[f"alexnet/clusters/{layer}"]
        lab, top = cl["cluster"].values[unit], cl["top_index"].values[unit]
        print(f"\n{layer} unit {unit}:")
        for side in ("a", "b"):
            cid = cmp.attrs[f"cluster_{side}"]
            looks = data.factors["look"][top[lab == cid]]
            common = np.bincount(looks).argmax()
            print(f"  cluster {side.upper()}: {int((lab == cid).sum())} images, "
                  f"{np.mean(looks == common):.0%} {data.looks[common]}")
        for c, auc in zip(cmp["circuit"].values, cmp["auc_test"].values):
            print(f"  {c:10s} held-out AUC {auc:.2f}")
    print(f"\nreport: {report}")


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
