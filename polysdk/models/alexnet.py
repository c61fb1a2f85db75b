"""AlexNet for the subnetworks study (seed 000): a narrow one to train on the CPU, the
torchvision one, receptive fields, and receptive-field inputs.

    from polysdk.models.alexnet import small_alexnet, torchvision_alexnet, receptive_field
    net = small_alexnet(n_classes=6, widths=(32, 64, 96, 64, 64))   # features.6/8/10 = conv3/4/5
    net = torchvision_alexnet("IMAGENET1K_V1")                      # or None: random weights
    box = receptive_field(net, "features.10", 224)                  # centre unit's input box
    x_rf = rf_inputs(images, box)            # each image shrunk into the box, mean canvas
    conv_layers(net)                         # {"features.0": Conv2d, ...}

Both models have torchvision's layer names and kernels, strides and paddings
(``features`` = conv 11/4/2, pool 3/2, conv 5/1/2, pool 3/2, conv 3/1/1 x 3, pool 3/2;
``avgpool``; ``classifier`` = dropout, fc, relu, dropout, fc, relu, fc). The small one
is narrower, its ``avgpool`` is 1x1 and its ReLUs are not in place.

The receptive field of a site's centre position (``size // 2`` per axis, as
:mod:`polysdk.dims` takes the centre) is computed from the kernels, strides and
paddings of every ``features`` module up to the site (checked in the tests against
the support of the input gradient); the box is clipped to the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polysdk.errors import ConfigError

__all__ = ["RFBox", "small_alexnet", "torchvision_alexnet", "conv_layers", "receptive_field",
           "rf_inputs", "feature_size"]


def small_alexnet(n_classes: int, widths: Sequence[int] = (32, 64, 96, 64, 64),
                  hidden: int = 256, dropout: float = 0.5) -> nn.Module:
    """An AlexNet-topology CNN (5 conv + 3 FC) with torchvision's names, narrowed."""
    if len(widths) != 5 or min(widths) < 1:
        raise ConfigError(f"widths={tuple(widths)} must be five positive conv widths.")
    c1, c2, c3, c4, c5 = (int(w) for w in widths)
    features = nn.Sequential(
        nn.Conv2d(3, c1, 11, stride=4, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, stride=2))
    return _AlexNet(features, nn.AdaptiveAvgPool2d((1, 1)), nn.Sequential(
        nn.Dropout(dropout), nn.Linear(c5, hidden), nn.ReLU(),
        nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, int(n_classes))))


class _AlexNet(nn.Module):
    def __init__(self, features: nn.Module, avgpool: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features, self.avgpool, self.classifier = features, avgpool, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def torchvision_alexnet(weights: str | None = None) -> nn.Module:
    """torchvision's ``alexnet(weights=...)`` (``None``/"none": random weights)."""
    from torchvision.models import AlexNet_Weights, alexnet

    if weights in (None, "", "none", "None", "random"):
        return alexnet(weights=None)
    try:
        w = AlexNet_Weights[str(weights)] if str(weights) != "DEFAULT" else AlexNet_Weights.DEFAULT
    except KeyError:
        raise ConfigError(f"weights={weights!r} is not an AlexNet_Weights name; use "
                          f"{[w.name for w in AlexNet_Weights]} or 'none'.") from None
    return alexnet(weights=w)


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """The model's ``Conv2d`` modules by name, in order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _geometry(m: nn.Module) -> tuple[int, int, int] | None:
    """(kernel, stride, padding) of a module that moves the grid; None for one that
    does not (ReLU, dropout, normalisation)."""
    if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p = m.kernel_size, m.stride, m.padding
        k, s, p = (v[0] if isinstance(v, tuple) else v for v in (k, s, p))
        if isinstance(m, nn.Conv2d) and m.dilation not in (1, (1, 1)):
            raise ConfigError("receptive fields of dilated convolutions are not supported.")
        return int(k), int(s), int(p)
    return None


@dataclass(frozen=True)
class RFBox:
    """The receptive field of a site's centre position: rows ``y0..y1`` and columns
    ``x0..x1`` (inclusive, clipped to the image); ``size`` the unclipped extent and
    ``grid`` the site's map size."""

    y0: int
    y1: int
    x0: int
    x1: int
    size: int
    grid: int
    image: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0 + 1

    @property
    def width(self) -> int:
        return self.x1 - self.x0 + 1

    @property
    def whole_image(self) -> bool:
        return self.height == self.image and self.width == self.image


def _chain(model: nn.Module, site: str) -> list[nn.Module]:
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ConfigError("receptive fields are computed for AlexNet-like models with a "
                          "'features' Sequential.")
    names = [f"features.{i}" for i in range(len(features))]
    if site not in names:
        raise ConfigError(f"site {site!r} is not a module of model.features; use one of "
                          f"{names}.")
    return list(features)[: names.index(site) + 1]


def feature_size(model: nn.Module, site: str, image: int) -> int:
    """The spatial size of ``site``'s map for a square ``image`` input."""
    n = int(image)
    for m in _chain(model, site):
        g = _geometry(m)
        if g is not None:
            k, s, p = g
            n = (n + 2 * p - k) // s + 1
    return n


def receptive_field(model: nn.Module, site: str, image: int) -> RFBox:
    """The input box seen by ``site``'s centre position (``size // 2``) for a square
    ``image`` x ``image`` input (the usual recursion: jump ``j *= s``, size
    ``r += (k - 1) j``, first centre ``c += ((k - 1) / 2 - p) j``).

    >>> box = receptive_field(small_alexnet(2), "features.0", 64)
    >>> (box.y0, box.y1, box.size, box.grid)
    (26, 36, 11, 15)
    """
    j, r, c, n = 1, 1, 0.0, int(image)
    for m in _chain(model, site):
        g = _geometry(m)
        if g is None:
            continue
        k, s, p = g
        c += ((k - 1) / 2 - p) * j
        r += (k - 1) * j
        j *= s
        n = (n + 2 * p - k) // s + 1
    if n < 1:
        raise ConfigError(f"a {image}px input gives {site!r} no positions; use larger images.")
    centre = c + (n // 2) * j
    lo, hi = int(round(centre - (r - 1) / 2)), int(round(centre + (r - 1) / 2))
    lo_c, hi_c = max(0, lo), min(int(image) - 1, hi)
    return RFBox(lo_c, hi_c, lo_c, hi_c, r, n, int(image))


def rf_inputs(x: torch.Tensor, box: RFBox, fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Each image of ``x`` (sample, 3, H, W) shrunk (bilinear, antialiased) into ``box``
    on a canvas of colour ``fill`` (per channel; 0 = the mean colour of normalised
    inputs), the rest of the canvas that colour. A box covering the whole image returns
    ``x`` itself."""
    if box.whole_image and x.shape[-1] == box.image:
        return x
    small = F.interpolate(x, size=(box.height, box.width), mode="bilinear",
                          antialias=True, align_corners=False)
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    canvas = fill_t.expand(x.shape[1], box.image, box.image).repeat(len(x), 1, 1, 1)
    canvas[:, :, box.y0: box.y1 + 1, box.x0: box.x1 + 1] = small
    return canvas


def check_unit(model: nn.Module, layer: str, unit: int) -> nn.Conv2d:
    """The conv ``layer`` (ConfigError for a layer that is not a conv, or a unit index
    outside its width)."""
    convs = conv_layers(model)
    modules = dict(model.named_modules())
    if layer not in convs:
        what = type(modules[layer]).__name__ if layer in modules else "no module"
        raise ConfigError(f"layer {layer!r} is {what}, not a Conv2d; the study's units are "
                          f"channels of the convs {list(convs)} (conv3/4/5 = features.6/8/"
                          "10).")
    width = convs[layer].out_channels
    if not 0 <= int(unit) < width:
        raise ConfigError(f"unit {unit} is out of range for {layer!r}, which has {width} "
                          f"channels (0..{width - 1}).")
    return convs[layer]


def describe_model(model: nn.Module) -> dict[str, Any]:
    """Widths of the convs and the parameter count (for the report)."""
    return {"convs": {n: int(m.out_channels) for n, m in conv_layers(model).items()},
            "parameters": int(sum(p.numel() for p in model.parameters()))}
