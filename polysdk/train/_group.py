"""A group of toy-model instances trained as one batched computation, a step at a time.

    group = InstanceGroup(configs, seeds, indices=range(len(configs)), device="cpu")
    while not group.done:
        group.advance()                       # one training step of every instance
    first, rest = group.split([0, 1])         # at any step: two groups that go on from here
    result = group.result()                   # a TrainResult (see polysdk.train.trainer)

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

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from polysdk.models.toy import (
    FeatureSampler, ToyConfig, ToyModels, apply_nonlinearity, feature_probabilities,
    instance_generator, nonlinearity_grad,
)
from polysdk.train.lamb import BatchedLamb, FlatParams
from polysdk.train.schedule import cyclic_cosine_factors

if TYPE_CHECKING:
    from polysdk.train.trainer import TrainResult

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

    @property
    def done(self) -> bool:
        return self.step >= self.T

    @property
    def steps_left(self) -> int:
        return self.T - self.step

    @torch.no_grad()
    def advance(self) -> None:
        """One training step of every instance in the group."""
        step, B, task, nl = self.step, self.B, self.task, self.nl
        x, h, a, d_a, diff = self.x, self.h, self.a, self.d_a, self.diff
        W2, b1 = self.models.W2, self.models.b1
        v = self.sampler.draw()                                          # [K, B, N]
        torch.bmm(v, self.E_T, out=x)                                    # [K, B, m]
        if task == "decoder":
            target = v
        elif task == "re-projector":
            target = torch.bmm(v, self.P_T, out=self.proj)
        else:
            target = v.abs_()
        torch.baddbmm(self.b1_row, x, self.W1_T, out=h)                  # [K, B, k]
        apply_nonlinearity(nl, h, out=a)
        torch.bmm(a, self.W2_T, out=diff).sub_(target)                   # [K, B, out]
        if step % LOSS_EVERY == 0:
            self.loss_log[:, step // LOSS_EVERY] = torch.mul(diff, diff).sum((1, 2)) / B
        # d loss / d out = diff * 2 / B, folded into the two matmuls that use it (a
        # power of two, so the same bits as scaling diff first)
        torch.baddbmm(self.g_W2, self.diff_T, a, beta=0.0, alpha=2.0 / B, out=self.g_W2)
        torch.baddbmm(d_a, diff, W2, beta=0.0, alpha=2.0 / B, out=d_a)  # [K, B, k]
        if self.any_reg:
            d_a.add_(torch.sign(a) * self.reg)
        if nl == "ReLU":   # d_a * (a > 0), fused, as autograd does for ReLU
            d_h = torch.ops.aten.threshold_backward.grad_input(d_a, a, 0.0, grad_input=h)
        else:
            d_h = d_a.mul_(nonlinearity_grad(nl, h))
        torch.bmm(self.d_h_T, x, out=self.g_W1)
        torch.sum(d_h, 1, out=self.g_b1)
        self.opt.step(self.grad, self.lr_table[step])
        if self.any_decay and step < self.T / 2:
            b1.mul_(self.decay_mult)
        j = self.ckpt_index.get(step)
        if j is not None:
            self.ck_acts[:, j] = self.models.single_feature_activations().cpu().numpy()
            self.ck_bias[:, j] = b1.mean(1).double().cpu().numpy()
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
        from polysdk.train.trainer import TrainResult

        return TrainResult(self.configs, self.seeds, self.models, self.loss_steps,
                           self.loss_log.cpu().numpy().astype(np.float64), self.ckpts,
                           self.ck_acts, self.ck_bias)
