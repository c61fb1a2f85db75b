"""A group of toy-model instances trained as one batched computation, a step at a time.

    group = InstanceGroup(configs, seeds, indices=range(len(configs)), device="cpu")
    while not group.done:
        group.advance()                       # one training step of every instance
    first, rest = group.split([0, 1])         # at any step: two groups that go on from here
    result = group.result()                   # a TrainResult (see polysdk.train._result)

Each step follows the original (``model3.py``): fresh features for every instance from
its own generator, the loss (sum of squared errors / batch, plus
``reg * sum|activations| / batch``), the gradients (written out by hand: two ``bmm``
forward, three backward, no autograd graph), LAMB (:class:`BatchedLamb`) at the cyclic
cosine rate, then during the first half of training the first-layer bias times
``1 - decay * learning_rate``. :meth:`InstanceGroup.split` moves each instance's whole
state (parameters, optimizer moments, generator, logs) into the new groups, so an
instance ends with the same model whichever groups it passed through.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from polysdk.models.toy import (
    FeatureSampler, ToyConfig, ToyModels, apply_nonlinearity, feature_probabilities,
    instance_generator, nonlinearity_grad,
)
from polysdk.train._result import TrainResult
from polysdk.train.lamb import BatchedLamb, FlatParams, lamb_update
from polysdk.train.schedule import cyclic_cosine_factors

log = logging.getLogger(__name__)

#: losses are logged every 16 steps, as in the original
LOSS_EVERY = 16
DATA_STREAM = 3
_PARAMS = ("W1", "b1", "W2")


def checkpoint_steps(training_steps: int) -> np.ndarray:
    """Steps i (0-based) where i + 1 is a power of two: 0, 1, 3, 7, ..., T - 1.

    >>> checkpoint_steps(16).tolist()
    [0, 1, 3, 7, 15]
    """
    return np.array([2 ** j - 1 for j in range(int(np.log2(training_steps)) + 1)
                     if 2 ** j <= training_steps], dtype=np.int64)


def _per_instance(values: Sequence[float], device: torch.device) -> Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)


class InstanceGroup:
    """The training state of instances that share shapes, advanced one step at a time.

    ``indices`` are the instances' positions in the caller's list (kept through splits,
    so results can be put back in order). ``models`` and ``generators`` continue an
    earlier state (used by :meth:`split`); by default each instance starts from its
    seed's initial weights and data stream.
    """

    def __init__(self, configs: Sequence[ToyConfig], seeds: Sequence[int],
                 indices: Sequence[int], device: str | torch.device,
                 models: ToyModels | None = None,
                 generators: Sequence[torch.Generator] | None = None) -> None:
        device = torch.device(device)
        self.configs, self.seeds = list(configs), [int(s) for s in seeds]
        self.indices = [int(i) for i in indices]
        self.device = device
        first = ToyModels.check_batchable(configs)
        K, B, T = len(configs), first.batch_size, first.training_steps
        N, m, k, out_dim = first.N, first.m, first.k, first.out_dim
        self.K, self.B, self.T, self.task, self.nl = K, B, T, first.task, first.nonlinearity
        self.step = 0

        init = models if models is not None else ToyModels.init(configs, seeds, device=device)
        self.flat = FlatParams(K, {"W1": (k, m), "b1": (k,), "W2": (out_dim, k)},
                               device=device)
        for name in _PARAMS:
            self.flat[name].copy_(getattr(init, name))
        self.models = ToyModels(configs, seeds, self.flat["W1"], self.flat["b1"],
                                self.flat["W2"], init.embed, init.target_embed)
        self.grad = self.flat.new_grad()
        self.opt = BatchedLamb(self.flat)

        # abs: two draws at eps / 2 each (the original halves eps to keep the density)
        eps_scale = 0.5 if self.task == "abs" else 1.0
        probs = torch.stack([feature_probabilities(N, c.eps * eps_scale, c.sample_kind)
                             for c in configs]).to(device=device, dtype=torch.float32)
        self.generators = list(generators) if generators is not None else [
            instance_generator(s, DATA_STREAM, device) for s in seeds]
        self.sampler = FeatureSampler(self.generators, probs, B,
                                      draws=2 if self.task == "abs" else 1)
        base_lr = _per_instance([c.learning_rate for c in configs], device)
        # the scheduled rate of every step, [T, K] (float32 products, as base_lr * factor)
        self.lr_table = base_lr * torch.from_numpy(cyclic_cosine_factors(T)).to(
            device=device, dtype=torch.float32)[:, None]
        self.decay_mult = (1.0 - _per_instance([c.decay for c in configs], device)
                           * base_lr)[:, None]
        self.any_decay = any(c.decay != 0 for c in configs)
        self.reg = _per_instance([c.reg for c in configs], device)[:, None, None] / B
        self.any_reg = any(c.reg != 0 for c in configs)

        self.ckpts = checkpoint_steps(T)
        self.ckpt_index = {int(s): j for j, s in enumerate(self.ckpts)}
        self.loss_steps = np.arange(0, T, LOSS_EVERY)
        self.loss_log = torch.zeros((K, len(self.loss_steps)), device=device)
        self.ck_acts = np.zeros((K, len(self.ckpts), k, N), dtype=np.float32)
        self.ck_bias = np.zeros((K, len(self.ckpts)), dtype=np.float64)

        # every per-step tensor is a buffer allocated once (no allocator traffic per step)
        def buf(*shape: int) -> Tensor:
            return torch.empty(shape, device=device)

        self.x, self.h, self.a, self.d_a = buf(K, B, m), buf(K, B, k), buf(K, B, k), buf(K, B, k)
        self.diff = buf(K, B, out_dim)
        self.proj = buf(K, B, out_dim) if self.task == "re-projector" else None
        # the views the matmuls read, made once (a view costs as much as a small op)
        models_ = self.models
        self.E_T = models_.embed.transpose(1, 2)                          # [K, N, m]
        self.P_T = (None if models_.target_embed is None
                    else models_.target_embed.transpose(1, 2))
        self.W1_T, self.W2_T = models_.W1.transpose(1, 2), models_.W2.transpose(1, 2)
        self.b1_row = models_.b1.unsqueeze(1)
        self.diff_T = self.diff.transpose(1, 2)
        # where d loss / d h is written: into h for ReLU (fused), into d_a otherwise
        self.d_h_T = (self.h if self.nl == "ReLU" else self.d_a).transpose(1, 2)
        self.g_W1, self.g_b1, self.g_W2 = (self.flat.view(self.grad, n) for n in _PARAMS)
        self._step = _step_function(device)
        self._fixed = (
            self.task, self.nl, B, self.E_T, self.P_T, self.proj, self.x, self.h,
            self.a, self.d_a, self.diff, self.diff_T, self.d_h_T, self.W1_T, models_.W2,
            self.W2_T, models_.b1, self.b1_row, self.g_W1, self.g_b1, self.g_W2, self.reg,
            self.any_reg, self.loss_log, self.decay_mult,
            *self.opt.update_arguments(self.grad))   # LAMB's buffers and settings

    @property
    def done(self) -> bool:
        return self.step >= self.T

    @property
    def steps_left(self) -> int:
        return self.T - self.step

    @torch.no_grad()
    def advance(self) -> None:
        """One training step of every instance in the group."""
        step = self.step
        v = self.sampler.draw()                                          # [K, B, N]
        loss_column = step // LOSS_EVERY if step % LOSS_EVERY == 0 else -1
        decay_now = self.any_decay and step < self.T / 2
        self._step(v, self.lr_table[step], loss_column, decay_now, *self._fixed)
        self.opt.n_steps += 1
        j = self.ckpt_index.get(step)
        if j is not None:
            self.ck_acts[:, j] = self.models.single_feature_activations().cpu().numpy()
            self.ck_bias[:, j] = self.models.b1.mean(1).double().cpu().numpy()
        self.step = step + 1

    def split(self, positions: Sequence[int]) -> tuple[InstanceGroup, InstanceGroup]:
        """Two groups, the instances at ``positions`` and the rest, that go on from here."""
        chosen = sorted({int(p) for p in positions})
        rest = [p for p in range(self.K) if p not in set(chosen)]
        if not chosen or not rest:
            raise ValueError(f"positions {list(positions)} must leave instances on both "
                             f"sides of a group of {self.K}.")
        return self._subgroup(chosen), self._subgroup(rest)

    @torch.no_grad()
    def _subgroup(self, positions: list[int]) -> InstanceGroup:
        idx = torch.tensor(positions, dtype=torch.long, device=self.device)
        models = self.models.select(positions)
        child = InstanceGroup([self.configs[p] for p in positions],
                              [self.seeds[p] for p in positions],
                              [self.indices[p] for p in positions], self.device,
                              models=models,
                              generators=[self.generators[p] for p in positions])
        for name in _PARAMS:
            for mine, theirs in ((child.opt.exp_avg, self.opt.exp_avg),
                                 (child.opt.exp_avg_sq, self.opt.exp_avg_sq)):
                child.flat.view(mine, name).copy_(self.flat.view(theirs, name)[idx])
        child.opt.n_steps = self.opt.n_steps
        child.loss_log.copy_(self.loss_log[idx])
        child.ck_acts[:] = self.ck_acts[positions]
        child.ck_bias[:] = self.ck_bias[positions]
        child.step = self.step
        return child

    def result(self) -> TrainResult:
        """What the group's training produced (see :class:`TrainResult`)."""
        return TrainResult(self.configs, self.seeds, self.models, self.loss_steps,
                           self.loss_log.cpu().numpy().astype(np.float64), self.ckpts,
                           self.ck_acts, self.ck_bias)


def toy_step(v: Tensor, step_scale: Tensor, loss_column: int, decay_now: bool, task: str,
             nl: str, batch: int, E_T: Tensor, P_T: Optional[Tensor], proj: Optional[Tensor],
             x: Tensor, h: Tensor, a: Tensor, d_a: Tensor, diff: Tensor, diff_T: Tensor,
             d_h_T: Tensor, W1_T: Tensor, W2: Tensor, W2_T: Tensor, b1: Tensor,
             b1_row: Tensor, g_W1: Tensor, g_b1: Tensor, g_W2: Tensor, reg: Tensor,
             any_reg: bool, loss_log: Tensor, decay_mult: Tensor, theta: Tensor,
             grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, adam_step: Tensor,
             w_segments: list[Tensor], a_segments: list[Tensor], w_norm: Tensor,
             a_norm: Tensor, min_norm: Tensor, scale: Tensor, scale_columns: list[Tensor],
             beta1: float, beta2: float, eps: float, floor: float, weight_decay: float,
             clamp_value: float, adam: bool) -> None:
    """One step after sampling ``v``: loss, gradients (by hand), LAMB, bias decay.

    Every buffer is given (see :class:`InstanceGroup`); ``loss_column`` is where this
    step's loss goes in ``loss_log`` (-1: not logged). Written so that TorchScript
    compiles it (:func:`_step_function`).
    """
    torch.bmm(v, E_T, out=x)                                             # [K, B, m]
    if task == "decoder":
        target = v
    elif task == "re-projector":
        assert P_T is not None and proj is not None
        target = torch.bmm(v, P_T, out=proj)
    else:
        target = v.abs_()
    torch.baddbmm(b1_row, x, W1_T, out=h)                                # [K, B, k]
    apply_nonlinearity(nl, h, a)
    torch.bmm(a, W2_T, out=diff).sub_(target)                            # [K, B, out]
    if loss_column >= 0:
        loss_log.select(1, loss_column).copy_(torch.mul(diff, diff).sum([1, 2]) / batch)
    # d loss / d out = diff * 2 / B, folded into the two matmuls that use it (a power of
    # two, so the same bits as scaling diff first)
    torch.baddbmm(g_W2, diff_T, a, beta=0.0, alpha=2.0 / batch, out=g_W2)
    torch.baddbmm(d_a, diff, W2, beta=0.0, alpha=2.0 / batch, out=d_a)   # [K, B, k]
    if any_reg:
        d_a.add_(torch.sign(a) * reg)
    if nl == "ReLU":   # d_a * (a > 0) into h, fused, as autograd does for ReLU
        d_h = torch.ops.aten.threshold_backward(d_a, a, 0.0, grad_input=h)
    else:
        d_h = d_a.mul_(nonlinearity_grad(nl, h))
    torch.bmm(d_h_T, x, out=g_W1)
    torch.sum(d_h, [1], out=g_b1)
    lamb_update(step_scale, theta, grad, exp_avg, exp_avg_sq, adam_step, w_segments,
                a_segments, w_norm, a_norm, min_norm, scale, scale_columns, beta1, beta2,
                eps, floor, weight_decay, clamp_value, adam)
    if decay_now:
        b1.mul_(decay_mult)


_COMPILED: list[Callable[..., None]] = []
_COMPILE_LOCK = threading.Lock()


def _step_function(device: torch.device) -> Callable[..., None]:
    """:func:`toy_step` compiled by TorchScript on CPU, else the Python function.

    Compiled, a step is one call that runs without the GIL, so worker threads do not
    queue for it between operations (~50 per step): ~10 % faster with two workers at the
    quick size (docs/benchmarks/toy_sweep.md), for ~85 ms of compiling once per process.
    The compiled step runs the same operations in the same order (the same bits; CPU
    fusion is off in TorchScript). Not used on GPUs (TorchScript fuses there, which
    could change rounding), on Python 3.14+ (unsupported there), where compiling fails,
    or with ``POLYSDK_TORCHSCRIPT=0``.
    """
    if device.type != "cpu":
        return toy_step
    with _COMPILE_LOCK:   # workers start together; warnings filters are process-wide
        if not _COMPILED:
            fn: Callable[..., None] = toy_step
            if os.environ.get("POLYSDK_TORCHSCRIPT", "1") != "0" and sys.version_info < (3, 14):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")   # its deprecation notice
                        fn = torch.jit.script(toy_step)
                except Exception as exc:  # noqa: BLE001 - any failure: the Python step
                    log.info("toy step runs as Python (TorchScript failed: %s)", exc)
            _COMPILED.append(fn)
        return _COMPILED[0]
