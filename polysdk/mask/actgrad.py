"""ActGrad saliency (circuit pruning's activation-times-gradient) per kernel or filter.

See :mod:`polysdk.mask.saliency` for the target, the data and the densities (shared
with SNIP and FORCE through :class:`~polysdk.mask.saliency.SaliencyMasker`).

* kernel ``(o, i)``: ``sum_images mean_positions |c_oi * dT/dz_o|`` with ``c_oi`` the
  map kernel ``(o, i)`` adds to output channel ``o``;
* filter ``o``: ``sum_images mean_positions |z_o * dT/dz_o|``.

The layers' inputs and outputs are read with one :class:`polysdk.trace.Trace` each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from polysdk import dims as D
from polysdk._util import progress_bar
from polysdk.errors import ConfigError
from polysdk.mask._core import eval_mode, model_device
from polysdk.mask._data import iter_batches
from polysdk.mask.io import layer_of
from polysdk.mask.saliency import SaliencyMasker
from polysdk.params import Interval, Options
from polysdk.sites import SiteSpec, TensorKey, unwrap_model
from polysdk.trace import Trace

__all__ = ["ActGrad"]


class ActGrad(SaliencyMasker):
    """ActGrad saliency per kernel (``structure="kernel"``) or per filter.

    Scored layers must be ``nn.Conv2d`` (``groups=1``) or ``nn.Linear``; for a
    linear layer a kernel is one weight. ``density`` as for
    :class:`~polysdk.mask.SNIP`; ``max_chunk_elements`` bounds the per-kernel maps
    computed at once.
    """

    _constraints = {
        **SaliencyMasker._constraints,
        "structure": Options("kernel", "filter"),
        "max_chunk_elements": Interval(1, None, integer=True),
    }

    def __init__(
        self,
        model: Any,
        target: SiteSpec,
        unit: int | None = None,
        *,
        position: Any = None,
        dims: Sequence[str] | None = None,
        params: SiteSpec | Sequence[SiteSpec] = "**",
        structure: Literal["kernel", "filter"] = "kernel",
        density: float | None = None,
        reduce: Literal["sum_abs", "max"] = "sum_abs",
        batch_size: int = 32,
        max_chunk_elements: int = 2**25,
        stop_at_target: bool = True,
        capture: Literal["output", "input"] = "output",
        key: TensorKey = None,
        progress: bool = False,
    ) -> None:
        self._store(locals())

    def fit(self, x: Any) -> ActGrad:
        self._validate_params()
        self._reset()
        device = model_device(self.model)
        params = self._params()
        named = dict(unwrap_model(self.model).named_modules())
        layers = {layer_of(n): named[layer_of(n)] for n in params}
        for name, mod in layers.items():
            conv_ok = isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.padding_mode == "zeros"
            if not (isinstance(mod, nn.Linear) or conv_ok):
                raise ConfigError(
                    f"ActGrad scores nn.Conv2d (groups=1, zero padding) and nn.Linear layers; {name!r} is "
                    f"{type(mod).__name__}: narrow params= to such layers"
                )
        raw: dict[str, torch.Tensor | None] = {f"{n}.weight": None for n in layers}
        # a Trace hands later layers a copy, so in-place ops (ReLU(inplace=True)) cannot
        # rebase the outputs kept here
        ins = Trace(self.model, list(layers), keep_grad=False, capture="input")
        outs = Trace(self.model, list(layers))
        with eval_mode(self.model), ins, outs, self._reader() as reader:
            for batch in progress_bar(iter_batches(x, self.batch_size), show=self.progress,
                                      desc="ActGrad"):
                b = batch.to(device)
                act = reader.run(lambda: b.call(self.model))
                inputs, outputs = ins.values, outs.values
                target = self._target(reader, act, b)
                ran = [n for n in layers if n in outputs]
                grads = torch.autograd.grad(target, [outputs[n] for n in ran], allow_unused=True)
                for name, g in zip(ran, grads):
                    if g is None:
                        continue
                    score = self._layer_score(layers[name], inputs[name], outputs[name].detach(), g, b.mask)
                    key = f"{name}.weight"
                    raw[key] = score if raw[key] is None else raw[key] + score
        self._finish({n: s for n, s in raw.items() if s is not None})
        self._keep_top()
        return self

    def _layer_score(self, mod: nn.Module, xin: torch.Tensor, z: torch.Tensor, g: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
        """Summed over the batch: kernel scores ``[O, I]`` or filter scores ``[O]``; the
        mean over positions counts real tokens only (``mask``)."""
        names = _layer_dims(mod, z)
        keep = _fitting_mask(mask, names, z)
        if self.structure == "filter":
            per_input, _, _ = D.select((z * g).abs(), names, "mean", mask=keep)  # (sample, unit)
            return per_input.sum(0)
        w = mod.weight.detach()
        if isinstance(mod, nn.Linear):
            # contribution of weight (o, i) at row r (an input, or one position of it) is
            # x_ri w_oi with gradient g_ro; rows weigh 1 / (real positions of their input)
            if keep is not None:
                rows = keep.float() / keep.sum(1, keepdim=True).clamp(min=1)
            else:
                rows = torch.full(z.shape[:-1], 1.0 / max(1, math.prod(z.shape[1:-1])), device=z.device)
            xin2, g2 = xin.reshape(-1, xin.shape[-1]), g.reshape(-1, g.shape[-1])
            return w.abs() * ((g2.abs() * rows.reshape(-1, 1).to(g2.dtype)).t() @ xin2.abs())
        out_c, in_c = w.shape[:2]
        # every kernel's own map: a grouped conv, output channel i * O + o = conv(x_i, w_oi)
        w_edges = w.transpose(0, 1).reshape(in_c * out_c, 1, *w.shape[2:])
        per_item = in_c * out_c * z.shape[2] * z.shape[3]
        chunk = max(1, self.max_chunk_elements // max(per_item, 1))
        total = torch.zeros(out_c, in_c, device=w.device, dtype=torch.float32)
        for start in range(0, xin.shape[0], chunk):
            xc, gc = xin[start : start + chunk], g[start : start + chunk]
            edges = F.conv2d(xc, w_edges, None, mod.stride, mod.padding, mod.dilation, groups=in_c)
            edges = edges.reshape(len(xc), in_c, out_c, *edges.shape[2:])
            prod = (edges * gc[:, None]).abs().mean(dim=(3, 4)).sum(0)  # [I, O]
            total += prod.t().float()
        return total


def _layer_dims(mod: nn.Module, z: torch.Tensor) -> tuple[str, ...]:
    """Dim names of a scored layer's output: a conv map by the dims rule; a linear
    layer's units are its last axis by construction (``(sample, position, unit)`` on 3-D)."""
    if isinstance(mod, nn.Linear) and z.ndim > 3:
        return (D.SAMPLE, *(f"dim_{i}" for i in range(1, z.ndim - 1)), D.UNIT)
    return D.default_dims(z.ndim)


def _fitting_mask(mask: torch.Tensor | None, names: tuple[str, ...], z: torch.Tensor) -> torch.Tensor | None:
    """The batch's attention mask when it lines up with this layer's positions."""
    if mask is None or D.POSITION not in names:
        return None
    if tuple(mask.shape) != (z.shape[0], z.shape[names.index(D.POSITION)]):
        return None
    return mask.to(z.device).bool()
