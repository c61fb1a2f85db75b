"""The MLP of seed 001: ``n_in -> 256 -> 256 -> 256 -> 256 -> 10`` with ReLU hidden layers.

    from polysdk.models.mlp import MLP
    net = MLP(64, [256] * 4, 10)           # digits; MLP(784, ...) for MNIST
    [n for n, _ in net.named_children()]   # fc1, relu1, ..., fc4, relu4, out
    net.hidden_sites                       # ['relu1', 'relu2', 'relu3', 'relu4']

The output layer ``out`` gives logits (the original's softmax is in the loss). Hidden
activations are read at ``relu<i>`` (after the ReLU, as Keras' ``Dense(activation=
"relu")`` outputs): those are the sites the penalty and the firing analysis use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """``Linear`` + ``ReLU`` blocks named ``fc<i>`` / ``relu<i>``, then ``out`` (logits).

    >>> net = MLP(4, [3, 3], 2)
    >>> net(torch.zeros(5, 4)).shape, net.hidden_sites
    (torch.Size([5, 2]), ['relu1', 'relu2'])
    """

    def __init__(self, n_in: int, hidden: Sequence[int] = (256, 256, 256, 256),
                 n_out: int = 10) -> None:
        layers: list[tuple[str, nn.Module]] = []
        width = int(n_in)
        for i, h in enumerate(hidden, start=1):
            layers += [(f"fc{i}", nn.Linear(width, int(h))), (f"relu{i}", nn.ReLU())]
            width = int(h)
        layers.append(("out", nn.Linear(width, int(n_out))))
        from collections import OrderedDict

        super().__init__(OrderedDict(layers))
        self.hidden_sites = [f"relu{i}" for i in range(1, len(hidden) + 1)]
