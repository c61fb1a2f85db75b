"""The SoLU neuron hunt (seed 003) on the real all-MiniLM-L6-v2, from Python.

    .venv/bin/python examples/solu_hunt.py            # about a minute on 2 CPU cores
    .venv/bin/python examples/solu_hunt.py --twins     # + the SoLU/GELU twins (minutes)

Records every MLP neuron of MiniLM (6 x 1536) over the four concept sets (Fortran,
Spanish, medical, gibberish; 10 texts each, from installed packages), finds the
neurons active on exactly two sets (top 112 = the seed's 100 of 8192, scaled), gives
each a verdict from its token types, and prints them; the HTML report has the heat
maps. Then reads the stored results back with plain xarray-style access.
"""

from __future__ import annotations

import sys

from polysdk.store import ActivationStore
from polysdk.studies.solu_hunt import SoLUHuntStudy


def main(out: str = "runs/example-solu-hunt", twins: bool = False) -> None:
    study = SoLUHuntStudy("seed-run-2", quick=True, model="all" if twins else "minilm")
    report = study.run(out=out)
    store = ActivationStore(f"{out}/results.zarr")
    for model in study.config.models():
        res = store.read_result(f"{model}/analyse")
        print(f"{model}: {int(res['candidate'].sum())} of {res.sizes['neuron']} neurons "
              f"active on exactly two sets (top {res.attrs['top_k']}), "
              f"{int(res['narrow_candidate'].sum())} with the narrow filter")
        for j in range(min(5, res.sizes.get("cand", 0))):
            print(f"  L{int(res['cand_layer'][j])}N{int(res['cand_unit'][j])} "
                  f"{str(res['pair_a'][j].values)} + {str(res['pair_b'][j].values)}: "
                  f"{str(res['verdict'][j].values)}")
    print(f"report: {report}")


if __name__ == "__main__":
    main(twins="--twins" in sys.argv)
