"""The polysemanticity penalty (seed 001) on the embedded digits: train, read, re-measure.

    .venv/bin/python examples/penalty.py               # quick scale, a few minutes on 2 cores
    .venv/bin/python examples/penalty.py --tiny        # seconds (a smoke run)

Runs the soft preset at the quick scale (3 trials per alpha, 20 shuffles), prints the
per-trial table from the store, then measures one trained network again with the
components the study uses: ``ClassSelectivity`` on its hidden activations and
``Clusterability`` on its weights. The same from the command line:
``polysdk run penalty --preset soft --quick``.
"""

from __future__ import annotations

import argparse

from polysdk.detect import Clusterability
from polysdk.store import ActivationStore
from polysdk.studies.penalty import PenaltyStudy


def main(out: str = "runs/example-penalty", tiny: bool = False) -> None:
    settings = dict(trials=1, epochs=3, hidden=[16] * 4, n_shuffles=3, n_init=2) if tiny \
        else {}
    study = PenaltyStudy("soft", quick=True, progress=False, **settings)
    report = study.run(out=out)

    summary = ActivationStore(f"{out}/results.zarr", mode="r").read_result("penalty/summary")
    cols = ["group", "trial", "top1_accuracy", "elementwise_accuracy", "n_cut", "z_score",
            "left_p_value", "frac_polysemantic", "other_class_rate"]
    print(summary[cols].to_dataframe()[cols].to_string())

    # the components on their own: a control network, retrained the way the study does
    from polysdk.studies.penalty_trial import firing_summary, hidden_activations
    from polysdk.train.loop import fit
    import torch

    data = study.data()
    torch.manual_seed(0)
    net = study.build_model(data.n_features)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        data.x_train, data.y_train), batch_size=128, shuffle=True)
    fit(net, loader, epochs=3 if tiny else 20, optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_fn=torch.nn.functional.cross_entropy, progress=False)
    acts = hidden_activations(net, data.x_test, net.hidden_sites)
    for site in net.hidden_sites:
        s = firing_summary(acts[site].numpy(), data.y_test.numpy(), 10)
        print(f"{site}: {s['n_polysemantic']} polysemantic of {acts[site].shape[1]}, "
              f"other-class firing rate {s['other_class_rate']:.3f}")
    res = Clusterability(n_clusters=12, n_shuffles=3 if tiny else 20).fit(net).result_
    print(f"n-cut {float(res['n_cut']):.3f}, Z {float(res['z_score']):.2f}, "
          f"p {float(res['left_p_value']):.3f}")
    print(f"report: {report}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/example-penalty")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    main(a.out, a.tiny)
