"""Speed of the AlexNet-subnetworks study (seed 000): recording, mask training, the run.

    python benchmarks/alexnet.py                      # small model, 64 px, quick set
    python benchmarks/alexnet.py --model torchvision  # AlexNet at 224 px (random weights)
    python benchmarks/alexnet.py --run runs/alexnet-quick   # where a run's time went

Cases
-----
* ``record, one pass``: the pre-ReLU centre activation of *every* channel of conv3/4/5
  for every image, ``Probe(reduce="centre")`` into a Zarr store, one forward pass per
  distinct receptive-field box (what the study does), RF inputs made on the fly.
* ``record, one pass per unit``: the shape of a per-unit ranking script: for each unit,
  a pass over the images to its layer (stopped there) keeping that unit's centre value;
  timed for ``--units`` units per layer and scaled to all of them.
* ``CS step`` against ``fwd+bwd to target``: one continuous-sparsification step (masked
  forward to the target, BCE on the unit's centre, backward into the mask logits, SGD),
  read from the seconds ``fit`` records per epoch (the first epoch is a warm-up), against
  the unmasked forward stopped at the target plus a backward into the weights.

Every figure is the best of ``--repeat`` rounds (the machine may be shared), with torch
at ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

LAYERS = ("features.6", "features.8", "features.10")


def build(kind: str, n: int, seed: int = 0):
    from polysdk.studies.alexnet_pipeline import StudyData, embedded_data

    if kind == "small":
        from polysdk.models.alexnet import small_alexnet

        data = embedded_data(max(1, n // 6), 0, 64, __import__(
            "polysdk.data.shapes", fromlist=["x"]).DEFAULT_LOOKS,
            ("0+1", "3+6"), seed)
        return small_alexnet(6).eval(), data
    from polysdk.models.alexnet import torchvision_alexnet

    x = torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    return torchvision_alexnet(None).eval(), StudyData(x, np.zeros(n, np.int64))


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_record(model, data, repeat: int, units: int, batch: int) -> list[dict]:
    from polysdk.mask import SiteReader
    from polysdk.models.alexnet import receptive_field, rf_inputs
    from polysdk.studies.alexnet_pipeline import record_centres

    def one_pass() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            record_centres(model, data, LAYERS, tmp, batch_size=batch)

    t_one = best(one_pass, repeat)
    size = data.x.shape[-1]
    widths = {layer: dict(model.named_modules())[layer].out_channels for layer in LAYERS}
    per_unit = {}
    for layer in LAYERS:
        box = receptive_field(model, layer, size)

        def unit_pass(u: int) -> None:
            with SiteReader(model, layer) as reader, torch.no_grad():
                vals = []
                for s in range(0, len(data), batch):
                    xb = rf_inputs(data.x[s:s + batch], box)
                    act = reader.run(lambda: model(xb))
                    c = act.shape[-1] // 2
                    vals.append(act[:, u, c, c])
                torch.topk(torch.cat(vals), min(10, len(data)))

        per_unit[layer] = best(lambda: [unit_pass(u) for u in range(units)], repeat) / units
    t_all = sum(per_unit[layer] * widths[layer] for layer in LAYERS)
    n_units = sum(widths.values())
    return [{"case": "record, one pass (all channels, Probe -> Zarr)", "seconds": t_one,
             "ratio": 1.0},
            {"case": f"record, one pass per unit ({n_units} units; {units}/layer timed)",
             "seconds": t_all, "ratio": t_all / t_one}]


def bench_cs(model, data, repeat: int, batch: int, n: int) -> list[dict]:
    from polysdk.mask import ContinuousSparsification, SiteReader
    from polysdk.studies.alexnet_pipeline import conv_params_to

    layer, unit = "features.10", 3
    x = data.x[:n]
    y = torch.arange(n) % 2
    epochs = 1 + repeat
    cs = ContinuousSparsification(model, layer, unit=unit, position="centre",
                                  params=conv_params_to(model, layer), epochs=epochs,
                                  batch_size=batch, milestones=(), progress=False).fit(x, y)
    per_step = min(h["seconds"] / h["steps"] for h in cs.history_[1:])
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)

    def plain() -> None:
        with SiteReader(model, layer) as reader:
            for s in range(0, n, batch):
                xb, yb = x[s:s + batch], y[s:s + batch].float()
                act = reader.run(lambda: model(xb))
                c = act.shape[-1] // 2
                loss = F.binary_cross_entropy_with_logits(act[:, unit, c, c], yb)
                model.zero_grad(set_to_none=True)
                loss.backward()

    steps = -(-n // batch)
    plain()
    t_plain = best(plain, repeat) / steps
    return [{"case": f"fwd+bwd to target, unmasked (batch {batch})", "seconds": t_plain,
             "ratio": 1.0},
            {"case": f"CS step (batch {batch})", "seconds": per_step,
             "ratio": per_step / t_plain}]


def run_breakdown(out: str) -> list[dict]:
    from polysdk.store import ActivationStore

    store = ActivationStore(Path(out) / "results.zarr", mode="r")
    rows, total = [], 0.0
    for name in store.list_results():
        ds = store.read_result(name)
        sec = float(ds.attrs.get("seconds", 0.0))
        total += sec
        extra = ""
        if "timings" in ds.attrs:
            t = json.loads(ds.attrs["timings"])
            extra = ", ".join(f"{k} {v:.1f}" for k, v in t.items())
        if "train_seconds" in ds.attrs:
            extra = f"training {ds.attrs['train_seconds']:.1f}"
        rows.append({"case": name, "seconds": sec, "ratio": float("nan"), "detail": extra})
    rows.append({"case": "all units", "seconds": total, "ratio": float("nan"), "detail": ""})
    return rows


def show(rows: list[dict], title: str) -> None:
    print(f"\n## {title}")
    print(f"| case | seconds | x |{' detail |' if any('detail' in r for r in rows) else ''}")
    print(f"| --- | --- | --- |{' --- |' if any('detail' in r for r in rows) else ''}")
    for r in rows:
        ratio = "" if not np.isfinite(r["ratio"]) else f"{r['ratio']:.2f}"
        detail = f" {r['detail']} |" if "detail" in r else ""
        print(f"| {r['case']} | {r['seconds']:.3f} | {ratio} |{detail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["small", "torchvision"], default="small")
    ap.add_argument("--images", type=int, default=None, help="images (small: 2400)")
    ap.add_argument("--units", type=int, default=4, help="units timed per layer")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32, help="mask-training batch")
    ap.add_argument("--run", default=None, help="a run folder: print where its time went")
    args = ap.parse_args()
    if args.run:
        show(run_breakdown(args.run), f"where the time went: {args.run}")
        return
    torch.set_num_threads(args.threads)
    n = args.images or (2400 if args.model == "small" else 256)
    model, data = build(args.model, n)
    for p in model.parameters():
        p.requires_grad_(False)
    print(f"{args.model}: {len(data)} images of {data.x.shape[-1]} px, torch threads "
          f"{torch.get_num_threads()}, best of {args.repeat}")
    show(bench_record(model, data, args.repeat, args.units, 128 if args.model == "small"
                      else 32), "recording top-k RF activations, three layers")
    show(bench_cs(model, data, args.repeat, args.batch, min(len(data), 8 * args.batch)),
         "a subnetwork training step")


if __name__ == "__main__":
    main()
