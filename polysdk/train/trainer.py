"""Train many toy models at once: one batched computation over an instance dimension.

    from polysdk.models.toy import ToyConfig
    from polysdk.train import train_toy_models
    cfgs = [ToyConfig(N=64, m=16, k=128, learning_rate=lr, log2_batch_size=8,
                      log2_training_steps=10) for lr in (1e-3, 3e-3, 1e-2)]
    res = train_toy_models(cfgs, seeds=[0, 0, 0])
    res.losses.shape, res.checkpoint_activations.shape    # (3, 64), (3, 11, 128, 64)

Each step follows the original (``model3.py``): fresh features for every instance
from its own generator, the loss (sum of squared errors / batch, plus
``reg * sum|activations| / batch``), the gradients (written out by hand: two ``bmm``
forward, three backward, no autograd graph), LAMB (:class:`BatchedLamb`) at the cyclic
cosine rate, then during the first half of training the first-layer bias times
``1 - decay * learning_rate``. Losses are kept every 16 steps and checkpoints (the
single-feature activation matrix and the mean bias) at steps where step + 1 is a power
of two. :func:`plan_chunks` splits a sweep into chunks whose instances share tensor
shapes, sized so the batched step stays fast on the device. On a CPU, the instances of
a chunk are shared between one worker thread per core, each running its share as one
batched computation on one torch thread (``workers`` of :func:`train_toy_models`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from polysdk.errors import ConfigError
from polysdk.models.toy import (
    FeatureSampler, ToyConfig, ToyModels, apply_nonlinearity, feature_probabilities,
    instance_generator, nonlinearity_grad,
)
from polysdk.train.lamb import BatchedLamb, FlatParams
from polysdk.train.schedule import cyclic_cosine_factors

__all__ = ["TrainResult", "train_toy_models", "checkpoint_steps", "plan_chunks",
           "auto_chunk_size", "torch_threads", "TrainingStopped", "LOSS_EVERY"]

#: losses are logged every 16 steps, as in the original
LOSS_EVERY = 16
_DATA_STREAM = 3


class TrainingStopped(RuntimeError):
    """A worker stopped early because another worker of the same run failed."""


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None: leave it); restored after."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def checkpoint_steps(training_steps: int) -> np.ndarray:
    """Steps i (0-based) where i + 1 is a power of two: 0, 1, 3, 7, ..., T - 1.

    >>> checkpoint_steps(16).tolist()
    [0, 1, 3, 7, 15]
    """
    return np.array([2 ** j - 1 for j in range(int(math.log2(training_steps)) + 1)
                     if 2 ** j <= training_steps], dtype=np.int64)


@dataclass
class TrainResult:
    """What one batched training run returns (arrays on CPU, leading dim = instance)."""

    configs: list[ToyConfig]
    seeds: list[int]
    models: ToyModels                   # final parameters (on the training device)
    loss_steps: np.ndarray              # [L] steps at which the loss was logged
    losses: np.ndarray                  # [K, L]
    checkpoint_steps: np.ndarray        # [C]
    checkpoint_activations: np.ndarray  # [K, C, k, N] single-feature activation matrices
    checkpoint_mean_bias: np.ndarray    # [K, C]


def _per_instance(values: Sequence[float], device: torch.device) -> Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)


def train_toy_models(configs: Sequence[ToyConfig], seeds: Sequence[int],
                     device: str | torch.device = "cpu", progress: bool | str = False,
                     step_callback: Callable[[int], None] | None = None,
                     workers: int | None = None) -> TrainResult:
    """Train ``len(configs)`` models as one batched computation (they must share shapes).

    ``seeds[i]`` alone fixes instance i's embedding, initial weights and data, so the
    result for an instance does not depend on what else is in the batch.
    ``progress``: False, True, or a description for the tqdm bar.

    ``workers`` (CPU only): how many threads share the instances, each training its
    share as one batched computation on one torch thread. ``None`` picks as many as
    torch has threads (at most one per instance); ``1`` trains all instances together,
    each operation on torch's threads. Whole instances per core beat operations split
    across cores here: each instance's random numbers are drawn one at a time, and while
    one thread draws them, torch's other thread spins and slows it; small operations
    also pay torch's fork and join. No instance's arithmetic depends on another, so the
    results agree up to float rounding (MKL may block a matmul differently for another
    number of instances; at the quick sizes they are the same bits). torch's thread count is set to 1 while
    the workers run and restored after. ``step_callback(step)`` is called after each
    step (with several workers, by the first one's thread); its progress bar is the
    first worker's.
    """
    device = torch.device(device)
    ToyModels.check_batchable(configs)
    if len(seeds) != len(configs):
        raise ConfigError(f"got {len(seeds)} seeds for {len(configs)} configs; give one "
                          "seed per instance.")
    n_workers = _resolve_workers(workers, len(configs), device)
    if n_workers == 1:
        return _train_together(configs, seeds, device, progress, step_callback, None)
    groups = np.array_split(np.arange(len(configs)), n_workers)
    stop = threading.Event()
    with torch_threads(1), ThreadPoolExecutor(n_workers, "polysdk-train") as pool:
        futures = [pool.submit(_train_together, [configs[i] for i in g],
                               [seeds[i] for i in g], device, progress if w == 0 else False,
                               step_callback if w == 0 else None, stop)
                   for w, g in enumerate(groups)]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None and not isinstance(f.exception(), TrainingStopped):
                    raise f.exception()
            parts = [f.result() for f in futures]
        except BaseException:
            stop.set()   # the other workers stop at their next step (also on Ctrl-C)
            raise
    return _concatenate(parts)


def _resolve_workers(workers: int | None, n_instances: int, device: torch.device) -> int:
    if workers is None:
        if device.type != "cpu":
            return 1
        return max(1, min(torch.get_num_threads(), n_instances))
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be a positive integer (or None: one "
                          "per torch thread).")
    if workers > 1 and device.type != "cpu":
        raise ConfigError(f"workers={workers} splits instances across CPU threads; on "
                          f"{device.type} train them together (workers=1 or None).")
    return min(int(workers), n_instances)


def _concatenate(parts: Sequence[TrainResult]) -> TrainResult:
    """Join the results of instance groups trained apart, in their order."""
    def cat(name: str) -> Tensor:
        return torch.cat([getattr(p.models, name) for p in parts])

    first = parts[0]
    target = None if first.models.target_embed is None else cat("target_embed")
    configs = [c for p in parts for c in p.configs]
    seeds = [s for p in parts for s in p.seeds]
    models = ToyModels(configs, seeds, cat("W1"), cat("b1"), cat("W2"), cat("embed"), target)
    return TrainResult(configs, seeds, models, first.loss_steps,
                       np.concatenate([p.losses for p in parts]), first.checkpoint_steps,
                       np.concatenate([p.checkpoint_activations for p in parts]),
                       np.concatenate([p.checkpoint_mean_bias for p in parts]))


def _train_together(configs: Sequence[ToyConfig], seeds: Sequence[int], device: torch.device,
                    progress: bool | str, step_callback: Callable[[int], None] | None,
                    stop: threading.Event | None) -> TrainResult:
    """One batched computation over all of ``configs`` (see :func:`train_toy_models`)."""
    first = configs[0]
    K, B, T = len(configs), first.batch_size, first.training_steps
    N, m, k, out_dim = first.N, first.m, first.k, first.out_dim
    task, nl = first.task, first.nonlinearity

    init = ToyModels.init(configs, seeds, device=device)
    flat = FlatParams(K, {"W1": (k, m), "b1": (k,), "W2": (out_dim, k)}, device=device)
    flat["W1"].copy_(init.W1)
    flat["b1"].copy_(init.b1)
    flat["W2"].copy_(init.W2)
    models = ToyModels(configs, seeds, flat["W1"], flat["b1"], flat["W2"], init.embed,
                       init.target_embed)
    grad = flat.new_grad()
    g_W1, g_b1, g_W2 = flat.view(grad, "W1"), flat.view(grad, "b1"), flat.view(grad, "W2")
    opt = BatchedLamb(flat)

    # abs: two draws at eps / 2 each (the original halves eps to keep the density)
    eps_scale = 0.5 if task == "abs" else 1.0
    probs = torch.stack([feature_probabilities(N, c.eps * eps_scale, c.sample_kind)
                         for c in configs]).to(device=device, dtype=torch.float32)
    gens = [instance_generator(s, _DATA_STREAM, device) for s in seeds]
    base_lr = _per_instance([c.learning_rate for c in configs], device)
    # the scheduled rate of every step, [T, K] (float32 products, as base_lr * factor)
    lr_table = base_lr * torch.from_numpy(cyclic_cosine_factors(T)).to(
        device=device, dtype=torch.float32)[:, None]
    decay_mult = (1.0 - _per_instance([c.decay for c in configs], device) * base_lr)[:, None]
    any_decay = any(c.decay != 0 for c in configs)
    reg = _per_instance([c.reg for c in configs], device)[:, None, None] / B
    any_reg = any(c.reg != 0 for c in configs)

    ckpts = checkpoint_steps(T)
    ckpt_index = {int(s): j for j, s in enumerate(ckpts)}
    loss_steps = np.arange(0, T, LOSS_EVERY)
    loss_log = torch.zeros((K, len(loss_steps)), device=device)
    ck_acts = np.zeros((K, len(ckpts), k, N), dtype=np.float32)
    ck_bias = np.zeros((K, len(ckpts)), dtype=np.float64)

    # every per-step tensor is a buffer allocated once (no allocator traffic per step)
    def buf(*shape: int) -> Tensor:
        return torch.empty(shape, device=device)

    sampler = FeatureSampler(gens, probs, B, draws=2 if task == "abs" else 1)
    x, h, a, d_a = buf(K, B, m), buf(K, B, k), buf(K, B, k), buf(K, B, k)
    diff, proj = buf(K, B, out_dim), (buf(K, B, out_dim) if task == "re-projector" else None)
    E_T = models.embed.transpose(1, 2)                                   # [K, N, m]
    P_T = None if models.target_embed is None else models.target_embed.transpose(1, 2)
    W1, b1, W2 = models.W1, models.b1, models.W2
    # the transposed views the matmuls read, made once (views cost as much as small ops)
    W1_T, W2_T, b1_row = W1.transpose(1, 2), W2.transpose(1, 2), b1.unsqueeze(1)
    diff_T = diff.transpose(1, 2)
    d_h_T = (h if nl == "ReLU" else d_a).transpose(1, 2)   # where d loss / d h is written
    relu_backward = torch.ops.aten.threshold_backward.grad_input

    bar = tqdm(range(T), desc=progress if isinstance(progress, str) else "train",
               disable=not progress, leave=False, unit="step", mininterval=0.5)
    with torch.no_grad():
        for step in bar:
            v = sampler.draw()                                           # [K, B, N]
            torch.bmm(v, E_T, out=x)                                     # [K, B, m]
            if task == "decoder":
                target = v
            elif task == "re-projector":
                target = torch.bmm(v, P_T, out=proj)
            else:
                target = v.abs_()
            torch.baddbmm(b1_row, x, W1_T, out=h)                        # [K, B, k]
            apply_nonlinearity(nl, h, out=a)
            torch.bmm(a, W2_T, out=diff).sub_(target)                    # [K, B, out]
            if step % LOSS_EVERY == 0:
                loss_log[:, step // LOSS_EVERY] = torch.mul(diff, diff).sum((1, 2)) / B
            # d loss / d out = diff * 2 / B, folded into the two matmuls that use it (a
            # power of two, so the same bits as scaling diff first)
            torch.baddbmm(g_W2, diff_T, a, beta=0.0, alpha=2.0 / B, out=g_W2)
            torch.baddbmm(d_a, diff, W2, beta=0.0, alpha=2.0 / B, out=d_a)  # [K, B, k]
            if any_reg:
                d_a.add_(torch.sign(a) * reg)
            if nl == "ReLU":   # d_a * (a > 0), fused, as autograd does for ReLU
                d_h = relu_backward(d_a, a, 0.0, grad_input=h)
            else:
                d_h = d_a.mul_(nonlinearity_grad(nl, h))
            torch.bmm(d_h_T, x, out=g_W1)
            torch.sum(d_h, 1, out=g_b1)
            opt.step(grad, lr_table[step])
            if any_decay and step < T / 2:
                b1.mul_(decay_mult)
            j = ckpt_index.get(step)
            if j is not None:
                ck_acts[:, j] = models.single_feature_activations().cpu().numpy()
                ck_bias[:, j] = b1.mean(1).double().cpu().numpy()
            if step_callback is not None:
                step_callback(step)
            if stop is not None and stop.is_set():
                raise TrainingStopped(f"stopped at step {step}: another worker failed")
    bar.close()
    return TrainResult(list(configs), [int(s) for s in seeds], models, loss_steps,
                       loss_log.cpu().numpy().astype(np.float64), ckpts, ck_acts, ck_bias)


# ----------------------------------------------------------------------------- chunking
#: bytes of per-step working tensors per chunk that the batched step handles well; past
#: it, one instance per step is as fast (measured in benchmarks/toy_sweep.py).
CPU_CHUNK_BYTES = 48 * 2 ** 20
GPU_CHUNK_BYTES = 4 * 2 ** 30


def step_bytes(cfg: ToyConfig) -> int:
    """Bytes of the per-step working tensors of one instance (float32)."""
    B = cfg.batch_size
    feats = (3 if cfg.task == "abs" else 2) * B * cfg.N
    return 4 * (feats + B * (cfg.m + 4 * cfg.k + 2 * cfg.out_dim))


def auto_chunk_size(cfg: ToyConfig, device: str | torch.device = "cpu") -> int:
    """How many instances of this shape to train in one batched computation.

    On CPU, batching pays while the step's tensors stay small (loop overheads dominate);
    at the paper's sizes it does not, so the chunk falls to 1 there. On a GPU, as many
    as fit in a few GiB.
    """
    budget = GPU_CHUNK_BYTES if torch.device(device).type == "cuda" else CPU_CHUNK_BYTES
    return max(1, budget // step_bytes(cfg))


def plan_chunks(configs: Sequence[ToyConfig], device: str | torch.device = "cpu",
                chunk_size: int | None = None) -> list[list[int]]:
    """Split instance indices into chunks: same shape within a chunk, in input order.

    >>> cfgs = [ToyConfig(N=8, m=4, k=k) for k in (4, 8, 4)]
    >>> plan_chunks(cfgs, chunk_size=5)
    [[0, 2], [1]]
    """
    if chunk_size is not None and int(chunk_size) < 1:
        raise ConfigError(f"chunk_size={chunk_size} must be >= 1 (or None for automatic).")
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(cfg.shape_key(), []).append(i)
    chunks: list[list[int]] = []
    for idx in groups.values():
        size = int(chunk_size) if chunk_size else auto_chunk_size(configs[idx[0]], device)
        n = math.ceil(len(idx) / size)
        # even chunks (e.g. 10 -> 5 + 5, not 8 + 2)
        per = math.ceil(len(idx) / n)
        chunks += [idx[i:i + per] for i in range(0, len(idx), per)]
    return chunks
