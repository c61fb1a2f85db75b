"""LAMB vectorised over instances, step for step as ``torch_optimizer.Lamb`` (0.3).

    from polysdk.train.lamb import BatchedLamb, FlatParams
    flat = FlatParams(K=8, shapes={"W1": (128, 16), "b1": (128,), "W2": (64, 128)})
    opt = BatchedLamb(flat)
    opt.step(grad=flat.new_grad(), lr=torch.full((8,), 3e-3))   # one update of 8 models

The K instances' parameters live in one flat buffer (each tensor a ``[K, *shape]`` view
into it), so every element-wise part of the update is one operation for all instances
and all tensors. The trust ratio is taken per instance *and* per parameter tensor, as
``torch_optimizer.Lamb`` does per tensor: ``clamp(|w|, 0, 10) / |adam_step|`` (1 when
either norm is 0); defaults betas (0.9, 0.999), eps 1e-6, no weight decay, no debias.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from polysdk.errors import ConfigError

__all__ = ["FlatParams", "BatchedLamb", "lamb_update"]


class FlatParams:
    """Several ``[K, *shape]`` parameter tensors stored as views of one flat buffer.

    Each tensor's K instances form one contiguous block (``[W1 of all K | b1 of all K |
    ...]``), so a batched matmul writes a gradient straight into its place and an
    element-wise optimizer step is one operation over the whole buffer.

    >>> fp = FlatParams(K=2, shapes={"w": (3, 4), "b": (3,)})
    >>> fp["w"].shape, fp.data.shape
    (torch.Size([2, 3, 4]), torch.Size([30]))
    """

    def __init__(self, K: int, shapes: Mapping[str, tuple[int, ...]],
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.K = int(K)
        self.names = list(shapes)
        self.shapes = {n: tuple(int(s) for s in shapes[n]) for n in self.names}
        self.sizes = [math.prod(self.shapes[n]) for n in self.names]
        self.offsets = [self.K * sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.data = torch.zeros(self.K * sum(self.sizes), device=device, dtype=dtype)

    def view(self, buffer: Tensor, name: str) -> Tensor:
        """Tensor ``name`` of every instance, ``[K, *shape]``, as a view of ``buffer``."""
        i = self.names.index(name)
        return self.segments(buffer)[i].view(self.K, *self.shapes[name])

    def __getitem__(self, name: str) -> Tensor:
        return self.view(self.data, name)

    def new_grad(self) -> Tensor:
        return torch.zeros_like(self.data)

    def segments(self, buffer: Tensor) -> list[Tensor]:
        """Each tensor's block of ``buffer`` (same layout as data) as ``[K, size]``."""
        return [buffer[o:o + self.K * s].view(self.K, s)
                for o, s in zip(self.offsets, self.sizes)]


class BatchedLamb:
    """LAMB over the K instances of a :class:`FlatParams` (see the module docstring).

    ``step(grad, lr)`` takes the flat gradient ``[K, P]`` and one learning rate per
    instance (a ``[K]`` tensor: the scheduled rate of this step).
    """

    def __init__(self, params: FlatParams, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, clamp_value: float = 10.0,
                 adam: bool = False, debias: bool = False) -> None:
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ConfigError(f"betas={betas} must each be in [0, 1).")
        if eps < 0 or weight_decay < 0 or clamp_value < 0:
            raise ConfigError(f"eps={eps}, weight_decay={weight_decay} and "
                              f"clamp_value={clamp_value} must be >= 0.")
        self.params = params
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.clamp_value, self.adam, self.debias = clamp_value, adam, debias
        self.exp_avg = torch.zeros_like(params.data)
        self.exp_avg_sq = torch.zeros_like(params.data)
        self.n_steps = 0
        # scratch reused every step, and the views of it that the update needs
        self._adam_step = torch.empty_like(params.data)
        n = len(params.sizes)
        self._w_norm = torch.empty((n, params.K), device=params.data.device)
        self._a_norm = torch.empty_like(self._w_norm)
        self._min_norm = torch.empty_like(self._w_norm)
        self._scale = torch.empty_like(self._w_norm)                     # [tensor, K]
        self._scale_columns = [row.unsqueeze(1) for row in self._scale]  # [K, 1] each
        self._w_segments = params.segments(params.data)
        self._a_segments = params.segments(self._adam_step)
        floor = (eps * 1e-9) ** 2
        self._floor = floor if floor >= torch.finfo(params.data.dtype).tiny else 0.0

    @torch.no_grad()
    def step(self, grad: Tensor, lr: Tensor) -> None:
        self.n_steps += 1
        step_scale = lr
        if self.debias:
            beta1, beta2 = self.betas
            corr = math.sqrt(1 - beta2 ** self.n_steps) / (1 - beta1 ** self.n_steps)
            step_scale = lr * corr
        lamb_update(step_scale, *self.update_arguments(grad))

    def update_arguments(self, grad: Tensor) -> tuple:
        """:func:`lamb_update`'s arguments after the rate: the buffers, ``grad``, settings.

        For callers that run the update themselves (a compiled training step); they
        count ``n_steps``.
        """
        return (self.params.data, grad, self.exp_avg, self.exp_avg_sq, self._adam_step,
                self._w_segments, self._a_segments, self._w_norm, self._a_norm,
                self._min_norm, self._scale, self._scale_columns, self.betas[0],
                self.betas[1], self.eps, self._floor, self.weight_decay, self.clamp_value,
                self.adam)


def lamb_update(step_scale: Tensor, theta: Tensor, grad: Tensor, exp_avg: Tensor,
                exp_avg_sq: Tensor, adam_step: Tensor, w_segments: list[Tensor],
                a_segments: list[Tensor], w_norm: Tensor, a_norm: Tensor, min_norm: Tensor,
                scale: Tensor, scale_columns: list[Tensor], beta1: float, beta2: float,
                eps: float, floor: float, weight_decay: float, clamp_value: float,
                adam: bool) -> None:
    """One LAMB update of :class:`BatchedLamb`'s buffers, in place.

    A plain function of tensors and numbers, so that TorchScript can compile it into a
    training step (see :mod:`polysdk.train._group`); ``step_scale`` is the learning rate
    per instance, ``[K]``; ``scale`` is ``[tensor, K]`` scratch with ``scale_columns``
    its ``[K, 1]`` rows.
    """
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    if floor > 0:
        # sqrt of exact zeros takes a slow path on CPU (~7x); a floor far below eps
        # changes nothing once eps is added (sqrt(floor) < eps * 1e-9 < half an ulp)
        torch.clamp_min(exp_avg_sq, floor, out=adam_step)
        adam_step.sqrt_().add_(eps)
    else:
        torch.sqrt(exp_avg_sq, out=adam_step).add_(eps)
    torch.div(exp_avg, adam_step, out=adam_step)
    if weight_decay != 0:
        adam_step.add_(theta, alpha=weight_decay)
    if adam:
        scale.copy_(step_scale.expand_as(scale))
    else:
        for i, seg in enumerate(w_segments):
            torch.linalg.vector_norm(seg, 2.0, [1], False, out=w_norm[i])
        w_norm.clamp_(0.0, clamp_value)
        for i, seg in enumerate(a_segments):
            torch.linalg.vector_norm(seg, 2.0, [1], False, out=a_norm[i])
        # trust = |w| / |adam_step|, or 1 where either norm is 0 (both are >= 0)
        torch.div(w_norm, a_norm, out=scale)
        scale.masked_fill_(torch.minimum(w_norm, a_norm, out=min_norm) == 0, 1.0)
        scale.mul_(step_scale)
    for w_seg, a_seg, column in zip(w_segments, a_segments, scale_columns):
        w_seg.addcmul_(a_seg, column, value=-1.0)
