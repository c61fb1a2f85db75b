"""Time the penalty study's quick preset end to end, and say where the time goes.

    .venv/bin/python benchmarks/penalty_quick.py                       # soft, digits, fresh
    .venv/bin/python benchmarks/penalty_quick.py --preset hard --out runs/penalty-hard-quick

The same as ``polysdk run penalty --preset soft --quick --fresh``: every trial is trained
and measured from scratch into ``--out``, then the report is written. The split comes
from what each trial records (``train_seconds``: the training loop; ``cluster_seconds``:
Clusterability's graph and shuffles); the rest is data loading, the test-set forward,
the firing analysis, the store and the report.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="soft")
    ap.add_argument("--out", default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    from polysdk.store import ActivationStore
    from polysdk.studies.penalty import PenaltyStudy

    settings = dict(s.split("=", 1) for s in args.sets)
    study = PenaltyStudy(args.preset, quick=True, progress=False, **settings)
    out = args.out or f"runs/penalty-{args.preset}-quick"
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    report = study.run(out=out, resume=False)
    total = time.perf_counter() - t0
    summary = ActivationStore(study.paths(out)["store"], mode="r").read_result(
        "penalty/summary")
    train = float(np.sum(summary["train_seconds"].values))
    cluster = float(np.sum(summary["cluster_seconds"].values))
    n = summary.sizes["run"]
    cfg = study.config
    print(f"penalty --preset {args.preset} --quick: {n} trials ({cfg.dataset}, "
          f"{cfg.resolved_epochs()} epochs, {cfg.n_shuffles} shuffles), {os.cpu_count()} "
          f"cores, load {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"total {total:8.1f} s   ({total / 60:.1f} min)")
    print(f"train {train:8.1f} s   {train / total:5.1%}   ({train / n:.1f} s per trial)")
    print(f"clust {cluster:8.1f} s   {cluster / total:5.1%}   ({cluster / n:.1f} s per trial,"
          f" {cluster / n / (cfg.n_shuffles + 1) * 1e3:.0f} ms per graph)")
    rest = total - train - cluster
    print(f"rest  {rest:8.1f} s   {rest / total:5.1%}   (data, firing analysis, store, report)")
    print(f"report: {report}")


if __name__ == "__main__":
    main()
