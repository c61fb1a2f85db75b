"""Speed of mask training per step against the unmasked model (polysdk.mask).

Runs every case in its own process (so each peak-memory figure is its own) on a
torchvision AlexNet (random weights; the topology is what matters) and prints one
table: seconds per step, the ratio to an unmasked training step of the same model,
and peak memory (RSS on CPU, ``max_memory_allocated`` on CUDA).

Cases
-----
* ``forward``: the full model, no gradient.
* ``train step, full``: the unmasked model's ordinary training step (forward, cross
  entropy, backward into the weights, SGD).
* ``train step, to target``: the same but the loss is the target unit's BCE at the
  centre position, forward stopped at the target (the weights learn instead of a mask).
* ``CS step``: one ``ContinuousSparsification`` step (masked forward to the target,
  backward into the mask logits, SGD), read from the wall-clock seconds ``fit``
  records per epoch (the first is the warm-up), so it is what users get.

Timings run in one process, the cases interleaved over ``--repeat`` rounds after a
warm-up round; each figure is the best round (a block of ``--steps`` steps, one for
ActGrad), as ``timeit`` does, since the machine may be shared. Peak memory is then
measured for each case alone in a fresh process.
* ``CS step, no stop``: the same without stopping at the target.
* ``CS step, kernel``: one logit per kernel.
* ``SNIP pass`` / ``ActGrad pass``: one scoring batch.

Usage::

    python benchmarks/masking.py                       # AlexNet, 224 px, batch 16, CPU
    python benchmarks/masking.py --size 128 --batch 32 --device cuda
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from typing import Any

from _harness import peak_rss_mb  # shared helpers (benchmarks/_harness.py)

import torch


def _build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).to(args.device).eval()
    x = torch.randn(args.batch * args.steps, 3, args.size, args.size)
    y = torch.arange(len(x)) % 2
    return model, x, y


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _block(fn: Any, device: str, steps: int) -> float:
    """Seconds per call of ``steps`` calls of ``fn``."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _measurer(name: str, args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor,
              y: torch.Tensor) -> Any:
    """A function that runs one timed block of the case and returns seconds per step."""
    from polysdk import Trace
    from polysdk.mask import SNIP, ActGrad, ContinuousSparsification, select_unit

    dev = args.device
    xb = x[: args.batch].to(dev)
    yb = y[: args.batch].to(dev)
    target, unit = "features.10", 3
    if name == "forward":
        def step() -> None:
            with torch.no_grad():
                model(xb)
        return lambda: _block(step, dev, args.steps)
    if name.startswith("train step"):
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)
        to_target = name.endswith("to target")

        def step() -> None:
            if to_target:
                h = Trace(model, target, stop=True).run(model, xb)[target]
                act = select_unit(h, ("sample", "unit", "y", "x"), unit, "centre")
                loss = torch.nn.functional.binary_cross_entropy_with_logits(act, yb.float())
            else:
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return lambda: _block(step, dev, args.steps)
    if name.startswith("CS step"):
        kw = dict(params="features.*", batch_size=args.batch, progress=False, lam=1e-6,
                  stop_at_target=not name.endswith("no stop"),
                  granularity="kernel" if name.endswith("kernel") else "weight")

        def block() -> float:
            cs = ContinuousSparsification(model, target, unit, position="centre", epochs=2, **kw).fit(x, y)
            return cs.history_[1]["seconds"] / cs.history_[1]["steps"]  # epoch 0 is the warm-up
        return block
    if name == "SNIP pass":
        return lambda: _block(lambda: SNIP(model, target, unit, params="features.*", batch_size=args.batch).fit(xb),
                              dev, args.steps)
    if name == "ActGrad pass":
        return lambda: _block(lambda: ActGrad(model, target, unit, params="features.*", batch_size=args.batch).fit(xb),
                              dev, 1)
    raise ValueError(name)


def _peak_child(name: str, args: argparse.Namespace, queue: Any) -> None:
    """Peak memory of one case, alone in a fresh process (one block)."""
    torch.set_num_threads(args.threads)
    model, x, y = _build(args)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if name != "model and data only":
        _measurer(name, args, model, x, y)()
    if args.device.startswith("cuda"):
        queue.put(torch.cuda.max_memory_allocated() / 2**20)
    else:
        queue.put(peak_rss_mb())


CASES = [
    "forward", "train step, full", "train step, to target", "CS step", "CS step, no stop",
    "CS step, kernel", "SNIP pass", "ActGrad pass",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="*", default=CASES)
    args = parser.parse_args()
    # peak memory first, while this process is small (a child inherits its parent's
    # high-water mark): each case alone in a fresh process
    ctx = mp.get_context("spawn")
    peaks = {}
    for name in ["model and data only", *args.cases]:
        queue = ctx.Queue()
        proc = ctx.Process(target=_peak_child, args=(name, args, queue))
        proc.start()
        peaks[name] = queue.get()
        proc.join()
    torch.set_num_threads(args.threads)
    # timings: every case in one process, interleaved over rounds, best round kept
    model, x, y = _build(args)
    measure = {name: _measurer(name, args, model, x, y) for name in args.cases}
    for fn in measure.values():
        fn()  # warm-up
    best = {name: float("inf") for name in args.cases}
    for _ in range(args.repeat):
        for name, fn in measure.items():
            best[name] = min(best[name], fn())
    rows = [(name, best[name], peaks[name]) for name in args.cases]
    ref = dict((n, s) for n, s, _ in rows).get("train step, full")
    print(f"AlexNet (random weights), {args.size}px, batch {args.batch}, device {args.device}, "
          f"{args.threads} threads, target features.10 unit 3, params features.*")
    print(f"{'case':<24}{'s/step':>10}{'x train step':>14}{'peak MB':>10}")
    for name, seconds, peak in rows:
        ratio = f"{seconds / ref:.2f}" if ref else "-"
        print(f"{name:<24}{seconds:>10.3f}{ratio:>14}{peak:>10.0f}")
    print(f"{'model and data only':<24}{'':>10}{'':>14}{peaks['model and data only']:>10.0f}")


if __name__ == "__main__":
    main()
