"""Penalty benchmark: the vectorised polysemanticity penalty against the naive loop.

Seed 001's setting: 4 hidden sites of 256 units (MLP 784-256-256-256-256-10), 10
classes. Methods, forward + backward; three fresh subprocesses per batch size (naive;
soft and hard; step and step+soft), the calls of one process interleaved:

  naive        the double loop over pairs i < j (``polysemanticity_penalty_naive``)
  soft         polysdk, vectorised (one masked Gram matrix per site), seed's soft mode
  hard         polysdk, vectorised, binarised with a straight-through gradient
  step         one Adam training step of the seed's MLP with cross-entropy only
  step+soft    the same step with ``PolysemanticityPenalty`` hooked on the 4 sites

Usage::

    python benchmarks/penalty.py                       # batches 16, 64, 128
    python benchmarks/penalty.py --batches 32 128 512 --repeats 5
    python benchmarks/penalty.py --quick               # batch 16 and 32 only

Prints the best and median time per call (best is the robust figure on a shared
machine), the ratio of best times to ``soft`` (``step+soft`` to ``step``), the
agreement of the values, the peak RSS of each process and its growth during the
timed loop. Each process uses ``--threads`` torch threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from _harness import peak_rss_mb, rss_mb  # shared helpers (benchmarks/_harness.py)

METHODS = ["naive", "soft", "hard", "step", "step+soft"]


GROUPS = {"naive": ["naive"], "vectorised": ["soft", "hard"], "train": ["step", "step+soft"]}


def child(
    group: str, batch: int, width: int, n_sites: int, repeats: int, device: str, threads: int
) -> list[dict]:
    """Run one group of methods in this process, calls interleaved, and return figures.

    Interleaving (A, B, A, B, ...) in one process keeps the comparison fair when the
    machine's load drifts; the best time of each method is the robust figure.
    """
    import torch
    from torch import nn

    torch.set_num_threads(threads)

    from polysdk.regularize import (
        PolysemanticityPenalty,
        polysemanticity_penalty,
        polysemanticity_penalty_naive,
    )

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(10, (batch,), generator=g).to(device)
    calls: dict[str, Callable[[], float]] = {}

    if group in ("naive", "vectorised"):
        base = [torch.relu(torch.randn(batch, width, generator=g)).to(device) for _ in range(n_sites)]

        def penalty_call(method: str) -> Callable[[], float]:
            def once() -> float:
                acts = [b.clone().requires_grad_() for b in base]
                if method == "naive":
                    loss = polysemanticity_penalty_naive(acts, labels)
                else:
                    loss = polysemanticity_penalty(acts, labels, mode=method)  # type: ignore[arg-type]
                loss.backward()
                return float(loss.detach())

            return once

        for method in GROUPS[group]:
            calls[method] = penalty_call(method)
    else:
        x = torch.rand(batch, 784, generator=g).to(device)
        sites = [str(2 * i + 1) for i in range(n_sites)]

        def train_call(with_penalty: bool) -> Callable[[], float]:
            torch.manual_seed(0)  # the same initial weights for both
            layers: list[nn.Module] = [nn.Linear(784, width), nn.ReLU()]
            for _ in range(n_sites - 1):
                layers += [nn.Linear(width, width), nn.ReLU()]
            net = nn.Sequential(*layers, nn.Linear(width, 10)).to(device)
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            reg = PolysemanticityPenalty(net, sites, alpha=1.0).attach() if with_penalty else None

            def once() -> float:
                opt.zero_grad()
                loss = nn.functional.cross_entropy(net(x), labels)
                if reg is not None:
                    loss = loss + reg.loss(labels=labels)
                loss.backward()
                opt.step()
                return float(loss.detach())

            return once

        calls = {"step": train_call(False), "step+soft": train_call(True)}

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    values = {m: f() for m, f in calls.items()}  # warm-up (and the values compared)
    sync()
    rss_before, peak_before = rss_mb(), peak_rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times: dict[str, list[float]] = {m: [] for m in calls}
    for _ in range(repeats):
        for m, f in calls.items():
            start = time.perf_counter()
            f()
            sync()
            times[m].append(time.perf_counter() - start)
    out = []
    for m in calls:
        row = {
            "method": m,
            "batch": batch,
            "seconds": min(times[m]),
            "median": statistics.median(times[m]),
            "value": values[m],
            "peak_growth_mb": max(0.0, peak_rss_mb() - max(rss_before, peak_before)),
            "peak_rss_mb": peak_rss_mb(),
        }
        if device.startswith("cuda"):
            row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out.append(row)
    return out


def run_child(group: str, batch: int, args: argparse.Namespace) -> list[dict]:
    repeats = args.naive_repeats if group == "naive" else args.repeats
    cmd = [
        sys.executable, __file__, "--child", group, "--batch", str(batch),
        "--width", str(args.width), "--sites", str(args.sites),
        "--repeats", str(repeats), "--device", args.device, "--threads", str(args.threads),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{group} at batch {batch} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--naive-repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--quick", action="store_true", help="batches 16 and 32, fewer repeats")
    parser.add_argument("--child", choices=list(GROUPS), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(
            args.child, args.batch, args.width, args.sites, args.repeats, args.device, args.threads
        )))
        return
    if args.quick:
        args.batches, args.repeats, args.naive_repeats = [16, 32], 5, 1

    import torch

    print(
        f"polysemanticity penalty, forward + backward; {args.sites} sites x {args.width} units, "
        f"10 classes; device {args.device}; torch {torch.__version__}, {args.threads} "
        f"thread(s); best (and median) of {args.repeats} calls (naive: {args.naive_repeats})"
    )
    header = (
        f"{'batch':>5}  {'method':<10} {'best ms':>10} {'median ms':>10} {'ratio':>9} {'value':>12} "
        f"{'peak RSS MB':>11} {'growth MB':>9}"
    )
    print(header)
    print("-" * len(header))
    for batch in args.batches:
        rows = {r["method"]: r for group in GROUPS for r in run_child(group, batch, args)}
        for m in METHODS:
            r = rows[m]
            ref = rows["step"] if m == "step+soft" else rows["soft"]
            ratio = r["seconds"] / ref["seconds"]
            label = "x step" if m == "step+soft" else "x soft"
            extra = f"  gpu {r['gpu_peak_mb']:.1f} MB" if "gpu_peak_mb" in r else ""
            print(
                f"{batch:>5}  {m:<10} {1e3 * r['seconds']:>10.3f} {1e3 * r['median']:>10.3f} "
                f"{ratio:>6.2g} {label:<2} "
                f"{r['value']:>12.6f} {r['peak_rss_mb']:>11.0f} {r['peak_growth_mb']:>9.1f}{extra}"
            )
        diff = abs(rows["naive"]["value"] - rows["soft"]["value"])
        print(f"{'':>5}  naive vs soft |difference| = {diff:.2e}")


if __name__ == "__main__":
    main()
