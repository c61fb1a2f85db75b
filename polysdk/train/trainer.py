"""Train many toy models at once: one batched computation over an instance dimension.

    from polysdk.models.toy import ToyConfig
    from polysdk.train import train_toy_models
    cfgs = [ToyConfig(N=64, m=16, k=128, learning_rate=lr, log2_batch_size=8,
                      log2_training_steps=10) for lr in (1e-3, 3e-3, 1e-2)]
    res = train_toy_models(cfgs, seeds=[0, 0, 0])
    res.losses.shape, res.checkpoint_activations.shape    # (3, 64), (3, 11, 128, 64)

Each step follows the original (``model3.py``; see :mod:`polysdk.train._group`, where
the step is). Losses are kept every 16 steps and checkpoints (the single-feature
activation matrix and the mean bias) at steps where step + 1 is a power of two.
:func:`plan_chunks` splits a sweep into chunks whose instances share tensor
shapes, sized so the batched step stays fast on the device. On a CPU, the instances of
a chunk are shared between one worker thread per core, each running its share as one
batched computation on one torch thread (``workers`` of :func:`train_toy_models`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import torch
from torch import Tensor

from polysdk._util import progress_bar, torch_threads
from polysdk.errors import ConfigError
from polysdk.models.toy import ToyConfig, ToyModels
from polysdk.train._group import DATA_STREAM as _DATA_STREAM  # noqa: F401 (tests, benchmarks)
from polysdk.train._group import LOSS_EVERY, InstanceGroup, checkpoint_steps
from polysdk.train._result import TrainResult

__all__ = ["TrainResult", "train_toy_models", "checkpoint_steps", "plan_chunks",
           "auto_chunk_size", "TrainingStopped", "LOSS_EVERY"]


class TrainingStopped(RuntimeError):
    """A worker stopped early because another worker of the same run failed."""


def train_toy_models(configs: Sequence[ToyConfig], seeds: Sequence[int],
                     device: str | torch.device = "cpu", progress: bool | str = False,
                     step_callback: Callable[[int], None] | None = None,
                     workers: int | None = None) -> TrainResult:
    """Train ``len(configs)`` models as one batched computation (they must share shapes).

    ``seeds[i]`` alone fixes instance i's embedding, initial weights and data, so the
    result for an instance does not depend on what else is in the batch.
    ``progress``: False, True, or a description for the tqdm bar (the steps of the
    first instance). ``step_callback(step)`` is called after each of the first
    instance's steps.

    ``workers`` (CPU only): how many threads share the instances, each training its
    share as one batched computation on one torch thread. ``None`` picks as many as
    torch has threads (at most one per instance); ``1`` trains all instances together,
    each operation on torch's threads. Whole instances per core beat operations split
    across cores here: each instance's random numbers are drawn one at a time, and while
    one thread draws them, torch's other thread spins and slows it; small operations
    also pay torch's fork and join. A worker that finishes first takes half of the
    instances of the busiest one (at a step boundary, with their whole state), so the
    workers end together. No instance's arithmetic depends on another, so the results
    agree up to float rounding (MKL may block a matmul differently for another number
    of instances; at the quick sizes they are the same bits). torch's thread count is
    set to 1 while the workers run and restored after.
    """
    device = torch.device(device)
    ToyModels.check_batchable(configs)
    if len(seeds) != len(configs):
        raise ConfigError(f"got {len(seeds)} seeds for {len(configs)} configs; give one "
                          "seed per instance.")
    n_workers = _resolve_workers(workers, len(configs), device)
    shares = np.array_split(np.arange(len(configs)), n_workers)
    groups = [InstanceGroup([configs[i] for i in share], [seeds[i] for i in share], share,
                            device) for share in shares]
    bar = progress_bar(show=bool(progress), total=groups[0].T,
                       desc=progress if isinstance(progress, str) else "train",
                       leave=False, unit="step", mininterval=0.5)
    sharing = _WorkSharing(groups, bar, step_callback)
    try:
        if n_workers == 1:
            sharing.work()
        else:
            with torch_threads(1), ThreadPoolExecutor(n_workers, "polysdk-train") as pool:
                futures = [pool.submit(sharing.work) for _ in range(n_workers)]
                try:
                    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                    for f in done:
                        if f.exception() is not None and not isinstance(f.exception(),
                                                                        TrainingStopped):
                            raise f.exception()
                    for f in futures:
                        f.result()
                except BaseException:
                    sharing.fail()   # the others stop at their next step (also on Ctrl-C)
                    raise
    finally:
        bar.close()
    finished = sorted(sharing.finished, key=lambda g: g.indices[0])
    assert [i for g in finished for i in g.indices] == list(range(len(configs)))
    return _concatenate([g.result() for g in finished])


class _WorkSharing:
    """Workers that each train a group; one left without work takes half of another's.

    A worker asks the busiest group (most instance-steps left, at least two instances
    and ``MIN_STEPS_TO_SPLIT`` steps) to split; its owner splits it at the next step
    boundary and the asking worker trains the half it gets.
    """

    MIN_STEPS_TO_SPLIT = 32

    def __init__(self, groups: Sequence[InstanceGroup], bar: Any,
                 step_callback: Callable[[int], None] | None) -> None:
        self.pending: list[InstanceGroup] = list(groups)   # waiting for a worker
        self.active: list[InstanceGroup] = []               # being trained
        self.wanted: set[InstanceGroup] = set()             # asked to split
        self.finished: list[InstanceGroup] = []
        self.cond = threading.Condition()
        self.stopped = False
        self.bar, self.step_callback = bar, step_callback

    def fail(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def _take(self) -> InstanceGroup | None:
        with self.cond:
            while not self.stopped:
                if self.pending:
                    group = self.pending.pop(0)
                    self.active.append(group)
                    return group
                busy = [g for g in self.active if g.K >= 2 and g not in self.wanted
                        and g.steps_left >= self.MIN_STEPS_TO_SPLIT]
                if not busy and not self.wanted:
                    return None
                if busy:
                    self.wanted.add(max(busy, key=lambda g: g.K * g.steps_left))
                self.cond.wait()
            return None

    def _split(self, group: InstanceGroup) -> InstanceGroup:
        given, kept = group.split(range(group.K // 2))
        with self.cond:
            self.wanted.discard(group)
            self.active.remove(group)
            self.active.append(kept)
            self.pending.append(given)
            self.cond.notify_all()
        return kept

    def work(self) -> None:
        """Train groups until none is left (run by each worker thread)."""
        while (group := self._take()) is not None:
            while not group.done:
                if self.stopped:
                    raise TrainingStopped(f"stopped at step {group.step}: another worker "
                                          "failed")
                group.advance()
                if group.indices[0] == 0:   # the first instance's steps drive the bar
                    self.bar.update(1)
                    if self.step_callback is not None:
                        self.step_callback(group.step - 1)
                if group in self.wanted and group.steps_left >= self.MIN_STEPS_TO_SPLIT:
                    group = self._split(group)
            with self.cond:
                self.active.remove(group)
                self.wanted.discard(group)
                self.finished.append(group)
                self.cond.notify_all()


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
    """Join the results of instance groups trained apart (given in the caller's order)."""
    if len(parts) == 1:
        return parts[0]

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
