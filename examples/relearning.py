"""Prune a concept's neurons, retrain, and watch it come back (seed 004) from Python.

    python examples/relearning.py                    # quick preset: MiniLM on faker data
    python examples/relearning.py --concept person --arms zero,random
    python examples/relearning.py --tiny             # a tiny random BERT, seconds

The same as ``polysdk run relearning --quick --set concept=location``. Prints validation
F1 through retraining per arm, the per-layer mean saliency of the concept before and
after, and the polysemantic counts; the report (figures, tables, the seed's numbers
beside ours) is written into ``--out``.
"""

from __future__ import annotations

import argparse

from polysdk.store import ActivationStore
from polysdk.studies.relearning import RelearningStudy

TINY = dict(model="tiny-bert", n_train=24, n_val=12, n_test=8, base_epochs=1, rounds=2,
            epochs_per_round=1, batch_size=8, learning_rate=1e-3, probe_max_iter=10)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/relearning-example")
    p.add_argument("--concept", default="location")
    p.add_argument("--arms", default="zero,regrow,random")
    p.add_argument("--tiny", action="store_true", help="a tiny random model (a check)")
    args = p.parse_args(argv)
    study = RelearningStudy(quick=True, concept=args.concept, arms=args.arms,
                            **(TINY if args.tiny else {}))
    report = study.run(out=args.out)
    s = ActivationStore(study.paths(args.out)["store"], mode="r").read_result(
        "relearning/summary")
    tag = s.attrs["concept_tag"]
    f1 = s["f1"].sel(split="validation")
    base = float(s["base_f1"].sel(split="validation", metric="overall"))
    print(f"validation F1 (overall / {tag}); base {base:.3f}")
    for arm in s["arm"].values:
        cells = [f"{float(f1.sel(arm=arm, round=r, metric='overall')):.3f}/"
                 f"{float(f1.sel(arm=arm, round=r, metric=tag)):.3f}" for r in s["round"].values]
        print(f"  {arm:7s} epochs {s['epochs'].values.tolist()}: {' '.join(cells)}")
    print("per-layer mean saliency, base:", s["base_layer_saliency"].values.round(2).tolist())
    for arm in s["arm"].values:
        print(f"  {arm:7s} last round:", s["layer_saliency"].sel(arm=arm).values[-1]
              .round(2).tolist(), "| polysemantic:", int(s["poly"].sel(arm=arm)
                                                         .values[-1].sum()),
              f"(base {int(s['base_poly'].sum())})")
    print(f"report: {report}")


if __name__ == "__main__":
    main()
