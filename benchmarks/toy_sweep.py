"""Toy-model sweeps: our batched trainer vs the one-model-at-a-time original, side by side.

    .venv/bin/python benchmarks/toy_sweep.py                   # quick size, K = 16
    .venv/bin/python benchmarks/toy_sweep.py --size paper --log2-steps 2
    .venv/bin/python benchmarks/toy_sweep.py --size quick paper --repeats 2

Three ways to train the same K models (an LR1-style sweep: 4 learning rates x K/4 seeds,
bias offset -1 and decay 0.03 so every code path runs):

  (a) ``polysdk.train.train_toy_models`` over the sweep, chunked by ``plan_chunks``
      (the instance chunking chosen by size);
  (b) the original's shape, one model at a time: ``nn.Sequential``,
      ``torch_optimizer.Lamb``, ``CosineAnnealingLR(T_max=512)``, fresh features each
      step (one uniform u per entry: kept when u / p < 1, value u / p, as polysdk samples,
      the original's distribution with half the random numbers), the bias decay through ``state_dict``/``load_state_dict``, ``float(loss)``
      every 16 steps and a ``deepcopy`` of the model at each checkpoint, as in
      ``model3.py`` (our per-instance generators and initial weights are used, so that
      the three give the same models);
  (c) our trainer at K = 1, run K times.

Each arm runs in its own fresh process (so peak RSS is its own); the table prints wall
time, the ratios, peak memory and the same metrics from all three (mean final loss,
mean monosemantic neurons / N, and the largest difference of the final first-layer
weights from (a), for the instances with learning rate <= 0.01 and for those at 0.03:
at 0.03 training is chaotic, so float rounding differences between (b) and (a) grow
into different models with the same statistics). Timings take the best of ``--repeats`` runs, arms interleaved.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import time
from typing import Any

from _harness import peak_rss_mb  # shared helpers (benchmarks/_harness.py)

SIZES = {
    # the quick scale of ``ToyModelStudy(quick=True)``; steps shortened for timing
    "quick": dict(N=64, m=16, k=128, log2_batch_size=7, log2_training_steps=10),
    # the paper's sizes (N=512, m=64, k=1024, batch 2**13); a few steps only on CPU
    "paper": dict(N=512, m=64, k=1024, log2_batch_size=13, log2_training_steps=2),
}
RATES = [0.001, 0.003, 0.007, 0.03]


def _configs(size: str, K: int, log2_steps: int | None, log2_batch: int | None = None
             ) -> tuple[list[Any], list[int]]:
    from polysdk.models.toy import ToyConfig

    kw = dict(SIZES[size])
    if log2_steps is not None:
        kw["log2_training_steps"] = log2_steps
    if log2_batch is not None:
        kw["log2_batch_size"] = log2_batch
    cfgs, seeds = [], []
    for i in range(K):
        cfgs.append(ToyConfig(**kw, learning_rate=RATES[i % len(RATES)], decay=0.03,
                              initial_bias=-1.0))
        seeds.append(i // len(RATES))
    return cfgs, seeds


def _metrics(final_losses: list[float], acts: Any, W1: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    from polysdk.detect.capacity import monosemanticity

    s = monosemanticity(torch.as_tensor(np.asarray(acts)))
    return {"loss": float(np.mean(final_losses)),
            "mono_per_feature": float(s["mono_per_feature"].mean()),
            "W1": np.asarray(W1)}


def arm_batched(cfgs: list[Any], seeds: list[int], device: str) -> dict[str, Any]:
    import numpy as np

    from polysdk.train import plan_chunks, train_toy_models

    plan = plan_chunks(cfgs, device)
    losses, acts, W1 = [None] * len(cfgs), [None] * len(cfgs), [None] * len(cfgs)
    for chunk in plan:
        res = train_toy_models([cfgs[i] for i in chunk], [seeds[i] for i in chunk],
                               device=device)
        for j, i in enumerate(chunk):
            losses[i] = float(res.losses[j, -8:].mean())
            acts[i] = res.checkpoint_activations[j, -1]
            W1[i] = res.models.W1[j].cpu().numpy()
    out = _metrics(losses, np.stack(acts), np.stack(W1))
    out["chunks"] = [len(c) for c in plan]
    return out


def arm_single(cfgs: list[Any], seeds: list[int], device: str) -> dict[str, Any]:
    import numpy as np

    from polysdk.train import train_toy_models

    losses, acts, W1 = [], [], []
    for cfg, seed in zip(cfgs, seeds):
        res = train_toy_models([cfg], [seed], device=device)
        losses.append(float(res.losses[0, -8:].mean()))
        acts.append(res.checkpoint_activations[0, -1])
        W1.append(res.models.W1[0].cpu().numpy())
    return _metrics(losses, np.stack(acts), np.stack(W1))


def _original_one(cfg: Any, seed: int, device: str) -> tuple[float, Any, Any]:
    """One model, the shape of the original ``model3.train`` (see the module docstring)."""
    import numpy as np
    import torch
    import torch_optimizer
    from torch import nn

    from polysdk.models.toy import ToyModels, feature_probabilities, instance_generator
    from polysdk.train.trainer import _DATA_STREAM

    init = ToyModels.init([cfg], [seed])
    model = nn.Sequential(nn.Linear(cfg.m, cfg.k, bias=True), nn.ReLU(),
                          nn.Linear(cfg.k, cfg.N, bias=False))
    model.load_state_dict({"0.weight": init.W1[0], "0.bias": init.b1[0],
                           "2.weight": init.W2[0]})
    model.to(device)
    embed = init.embed[0].to(device)
    gen = instance_generator(seed, _DATA_STREAM, device)
    p = feature_probabilities(cfg.N, cfg.eps, cfg.sample_kind).float().to(device)
    optimizer = torch_optimizer.Lamb(model.parameters(), lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2 ** 9, eta_min=0)
    B, T = cfg.batch_size, cfg.training_steps
    losses, models = [], []
    for i in range(T):
        optimizer.zero_grad(set_to_none=True)
        u = torch.rand((B, cfg.N), generator=gen, device=device)      # fresh features
        vectors = torch.threshold(u * (-1.0 / p), -1.0, 0.0).neg()    # u/p if < 1, else 0
        inputs = torch.matmul(vectors, embed.T)
        outputs = model.forward(inputs)
        loss = torch.sum((outputs - vectors) ** 2) / B
        loss.backward()
        optimizer.step()
        scheduler.step()
        if i < T / 2:
            state = model.state_dict()
            state["0.bias"] *= (1 - cfg.decay * cfg.learning_rate)
            model.load_state_dict(state)
        if i % 2 ** 4 == 0:
            losses.append(float(loss.detach()))
        if i & (i + 1) == 0:
            models.append(copy.deepcopy(model))
    with torch.no_grad():
        acts = models[-1][:2](embed.T).T.cpu().numpy()
    return float(np.mean(losses[-8:])), acts, model[0].weight.detach().cpu().numpy()


def arm_original(cfgs: list[Any], seeds: list[int], device: str) -> dict[str, Any]:
    import numpy as np

    runs = [_original_one(c, s, device) for c, s in zip(cfgs, seeds)]
    return _metrics([r[0] for r in runs], np.stack([r[1] for r in runs]),
                    np.stack([r[2] for r in runs]))


ARMS = {"a": ("(a) polysdk batched", arm_batched),
        "b": ("(b) original, one at a time", arm_original),
        "c": ("(c) polysdk K=1, K times", arm_single)}


def _child(arm: str, size: str, K: int, log2_steps: int | None, log2_batch: int | None,
           device: str, threads: int | None, queue: Any) -> None:
    import torch

    import torch_optimizer  # noqa: F401  (imports are not timed)

    import polysdk.detect.capacity  # noqa: F401
    import polysdk.train  # noqa: F401

    if threads:
        torch.set_num_threads(threads)
    cfgs, seeds = _configs(size, K, log2_steps, log2_batch)
    t0 = time.perf_counter()
    out = ARMS[arm][1](cfgs, seeds, device)
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = peak_rss_mb()
    queue.put(out)


def run_arm(arm: str, size: str, K: int, log2_steps: int | None, log2_batch: int | None,
            device: str, threads: int | None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(arm, size, K, log2_steps, log2_batch, device,
                                            threads, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", nargs="+", default=["quick"], choices=list(SIZES))
    parser.add_argument("--K", type=int, default=16, help="instances (>= 16 for the claim)")
    parser.add_argument("--log2-steps", type=int, default=None,
                        help="override the steps (default: 2**10 quick, 2**2 paper)")
    parser.add_argument("--log2-batch", type=int, default=None, help="override the batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every arm (default: torch's, or 1 at the "
                             "quick size when the load average exceeds the core count)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--arms", default="abc")
    args = parser.parse_args()
    import numpy as np
    import torch

    for size in args.size:
        # as ToyModelStudy's threads="auto": 1 thread for small models on a busy CPU
        busy = os.getloadavg()[0] > (os.cpu_count() or 1)
        threads = args.threads or (1 if size == "quick" and args.device == "cpu" and busy
                                   else None)
        cfgs, _ = _configs(size, args.K, args.log2_steps, args.log2_batch)
        stable = np.array([c.learning_rate <= 0.01 for c in cfgs])
        c = cfgs[0]
        print(f"\n== size {size}: N={c.N} m={c.m} k={c.k} batch 2^{c.log2_batch_size} "
              f"steps 2^{c.log2_training_steps}, K={args.K}, device {args.device}, torch "
              f"threads {threads or torch.get_num_threads()}, load average "
              f"{os.getloadavg()[0]:.1f} ==")
        best: dict[str, dict[str, Any]] = {}
        for _ in range(args.repeats):
            for arm in args.arms:
                out = run_arm(arm, size, args.K, args.log2_steps, args.log2_batch,
                              args.device, threads)
                if arm not in best or out["seconds"] < best[arm]["seconds"]:
                    best[arm] = out
        ref = best.get("a")
        print(f"{'arm':32s} {'seconds':>9s} {'vs (a)':>8s} {'peak RSS MB':>12s} "
              f"{'final loss':>11s} {'mono/N':>8s} {'max|dW1| lr<=.01':>17s} {'lr=.03':>9s}")
        for arm in args.arms:
            o = best[arm]
            ratio = o["seconds"] / ref["seconds"] if ref else float("nan")
            dw = np.abs(o["W1"] - ref["W1"]).reshape(len(cfgs), -1).max(1) if ref \
                else np.full(len(cfgs), np.nan)
            dw_hi = f"{dw[~stable].max():9.2e}" if (~stable).any() else f"{'-':>9s}"
            print(f"{ARMS[arm][0]:32s} {o['seconds']:9.2f} {ratio:7.2f}x "
                  f"{o['peak_rss_mb']:12.0f} {o['loss']:11.5f} {o['mono_per_feature']:8.4f} "
                  f"{dw[stable].max():17.2e} {dw_hi}")
        if ref:
            print(f"(a) chunks: {ref['chunks']}")


if __name__ == "__main__":
    main()
