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

Every figure is the best of ``--repeat`` blocks of ``--steps`` steps (one step for
ActGrad) after a warm-up, as ``timeit`` does: the machine may be shared.
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
import resource
import time
from typing import Any

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


def _timed(fn: Any, device: str, steps: int, repeat: int) -> float:
    """Best of ``repeat`` blocks of ``steps`` calls (seconds per call), after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def _case(name: str, args: argparse.Namespace) -> float:
    from polysdk.mask import SNIP, ActGrad, ContinuousSparsification, SiteReader, select_unit

    model, x, y = _build(args)
    dev = args.device
    xb = x[: args.batch].to(dev)
    yb = y[: args.batch].to(dev)
    target, unit = "features.10", 3
    if name == "forward":
        def step() -> None:
            with torch.no_grad():
                model(xb)
        return _timed(step, dev, args.steps, args.repeat)
    if name.startswith("train step"):
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        to_target = name.endswith("to target")
        reader = SiteReader(model, target).__enter__() if to_target else None

        def step() -> None:
            if reader is not None:
                act = select_unit(reader.run(lambda: model(xb)), unit, "center")
                loss = torch.nn.functional.binary_cross_entropy_with_logits(act, yb.float())
            else:
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return _timed(step, dev, args.steps, args.repeat)
    if name.startswith("CS step"):
        kw = dict(params="features.*", batch_size=args.batch, progress=False, lam=1e-6,
                  stop_at_target=not name.endswith("no stop"),
                  granularity="kernel" if name.endswith("kernel") else "weight")
        cs = ContinuousSparsification(model, target, unit, position="center", epochs=1 + args.repeat, **kw).fit(x, y)
        # the first epoch is the warm-up; then the best epoch, like the other cases
        return min(h["seconds"] / h["steps"] for h in cs.history_[1:])
    if name == "SNIP pass":
        return _timed(lambda: SNIP(model, target, unit, params="features.*", batch_size=args.batch).fit(xb),
                      dev, args.steps, args.repeat)
    if name == "ActGrad pass":
        return _timed(lambda: ActGrad(model, target, unit, params="features.*", batch_size=args.batch).fit(xb),
                      dev, 1, args.repeat)
    raise ValueError(name)


def _child(name: str, args: argparse.Namespace, queue: Any) -> None:
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = _case(name, args)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((seconds, peak))


CASES = [
    "forward", "train step, full", "train step, to target", "CS step", "CS step, no stop",
    "CS step, kernel", "SNIP pass", "ActGrad pass",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="*", default=CASES)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for name in args.cases:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(name, args, queue))
        proc.start()
        seconds, peak = queue.get()
        proc.join()
        rows.append((name, seconds, peak))
    ref = dict((n, s) for n, s, _ in rows).get("train step, full")
    print(f"AlexNet (random weights), {args.size}px, batch {args.batch}, device {args.device}, "
          f"{args.threads} threads, target features.10 unit 3, params features.*")
    print(f"{'case':<24}{'s/step':>10}{'x train step':>14}{'peak MB':>10}")
    for name, seconds, peak in rows:
        ratio = f"{seconds / ref:.2f}" if ref else "-"
        print(f"{name:<24}{seconds:>10.3f}{ratio:>14}{peak:>10.0f}")


if __name__ == "__main__":
    main()
