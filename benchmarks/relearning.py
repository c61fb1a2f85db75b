"""Speed of the relearning study (seed 004): masked fine-tuning steps and the quick preset.

Part 1, ``steps``: one fine-tuning step of all-MiniLM-L6-v2 as a token classifier
(forward, cross entropy, backward, AdamW) on a dynamically padded batch of faker
sentences, with the study's pruning attached against without:

* ``bare``: no hooks;
* ``layernorm, kept at zero``: 7 parameter-mode ``UnitMask``s (3000/5376 * 2688 = 1500
  LayerNorm gains; a gradient mask on each gain and a re-zeroing after each
  ``optimizer.step``), the study's default;
* ``activation mask``: 7 activation-mode ``UnitMask``s (a forward hook zeroing the
  pruned dims of each LayerNorm output);
* ``regrow``: weights zeroed once, no hooks (the same cost as bare, by construction).

The cases are interleaved over ``--repeat`` rounds of ``--steps`` steps after a warm-up
round; each figure is the best round (the machine may be shared), with the median
beside it, and the median process CPU time per step (with one torch thread the CPU
time a step takes is the work it does, whatever else the machine runs: on a busy
machine it is the figure to read).

Part 2, ``quick`` (``--quick``): ``RelearningStudy(quick=True)`` end to end in a
temporary folder, its wall time, and where the time went (training, F1 evaluation,
recording, ranking, the probe, from the seconds each unit stores). The load average is
printed before and after: on a shared machine every figure is slower than alone.

Usage::

    python benchmarks/relearning.py                    # the step table, 2 threads
    python benchmarks/relearning.py --quick            # and the quick preset end to end
    python benchmarks/relearning.py --threads 1 --steps 5 --repeat 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch


def _setup(batch: int) -> tuple[Any, Any, dict, list]:
    from polysdk.data.ner import batches, encode_split, make_faker_ner
    from polysdk.models.token_classifier import load_token_classifier, residual_sites

    data = make_faker_ner(batch, 1, 1, seed=0)
    model, tok = load_token_classifier("minilm", data.label_names)
    enc = encode_split(data["train"], tok, data.label_names)
    (b,) = list(batches(enc, batch))
    return model, tok, b, residual_sites(model)


def _pruned(sites: list, width: int, n: int, seed: int = 0) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(len(sites) * width, n, replace=False))
    return {name: (flat[(flat >= i * width) & (flat < (i + 1) * width)] - i * width).tolist()
            for i, (_, name) in enumerate(sites)}


def bench_steps(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch.nn.functional as F

    from polysdk.mask import UnitMask

    model, _, batch, sites = _setup(args.batch)
    labels = batch.pop("labels")
    width = 384
    units = _pruned(sites, width, int(round(3000 / 5376 * len(sites) * width)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def masks(case: str) -> list[Any]:
        if case == "layernorm, kept at zero":
            return [UnitMask(model, s, units=u, mode="parameter", zero_bias=False,
                             optimizer=opt) for s, u in units.items()]
        if case == "activation mask":
            return [UnitMask(model, s, units=u) for s, u in units.items()]
        if case == "regrow":
            return [UnitMask(model, s, units=u, mode="parameter", regrow=True)
                    for s, u in units.items()]
        return []

    def step() -> None:
        out = model(**batch).logits
        loss = F.cross_entropy(out.flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cases = ["bare", "layernorm, kept at zero", "activation mask", "regrow"]
    times: dict[str, list[float]] = {c: [] for c in cases}
    cpu: dict[str, list[float]] = {c: [] for c in cases}
    model.train()
    for rnd in range(args.repeat + 1):
        for case in cases:
            model.load_state_dict(saved)
            ms = masks(case)
            for m in ms:
                m.attach()
            try:
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    step()
                dt = (time.perf_counter() - t0) / args.steps
                dc = (time.process_time() - c0) / args.steps
            finally:
                for m in reversed(ms):
                    m.detach()
            if rnd:   # round 0 warms up
                times[case].append(dt)
                cpu[case].append(dc)
    best0, med0 = min(times["bare"]), statistics.median(times["bare"])
    cpu0 = statistics.median(cpu["bare"])
    rows = []
    for case in cases:
        b, m, c = min(times[case]), statistics.median(times[case]), statistics.median(cpu[case])
        rows.append({"case": case, "best s/step": b, "ratio (best)": b / best0,
                     "median s/step": m, "ratio (median)": m / med0,
                     "median CPU s/step": c, "ratio (CPU)": c / cpu0})
    return rows


def bench_quick(args: argparse.Namespace) -> dict[str, Any]:
    from polysdk.store import ActivationStore
    from polysdk.studies.relearning import RelearningStudy

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        study = RelearningStudy(quick=True, progress=False, threads=args.threads)
        study.run(out=tmp)
        wall = time.perf_counter() - t0
        store = ActivationStore(os.path.join(tmp, "results.zarr"), mode="r")
        parts: dict[str, float] = {}
        for name in store.list_results():
            for k, v in store.read_result(name).attrs.items():
                if k.startswith("seconds_") and isinstance(v, (int, float)):
                    parts[k[8:]] = parts.get(k[8:], 0.0) + float(v)
    return {"wall": wall, **parts}


def _table(rows: list[dict[str, Any]]) -> str:
    head = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)   # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="also run the quick preset")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"torch threads {args.threads}")
    rows = bench_steps(args)
    print(f"\nMiniLM fine-tuning step, batch {args.batch}, best / median of {args.repeat} "
          f"rounds of {args.steps} steps\n")
    print(_table(rows))
    if args.quick:
        q = bench_quick(args)
        print("\nquick preset end to end (seconds)\n")
        print(_table([{"part": k, "seconds": v} for k, v in q.items()]))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
