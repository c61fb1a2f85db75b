"""The original's learning-rate schedule: ``CosineAnnealingLR(T_max=2**9, eta_min=0)``
stepped every step and never restarted, hence cyclic with period ``2 * T_max``.

    from polysdk.train.schedule import cyclic_cosine_factors
    lr_at_step = base_lr * cyclic_cosine_factors(steps)    # float64, one per step

The factors are computed with PyTorch's own recursive update (the chainable form of
``CosineAnnealingLR.get_lr``), so they equal what the original used step by step, not
only the closed form ``(1 + cos(pi * t / T_max)) / 2``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["cyclic_cosine_factors", "cosine_closed_form", "T_MAX"]

#: the original's ``T_max``: 0 at step 512, back to the base rate at step 1024.
T_MAX = 2 ** 9


def cyclic_cosine_factors(steps: int, t_max: int = T_MAX) -> np.ndarray:
    """lr / base_lr for steps 0 .. steps-1 (the rate the optimizer uses at that step).

    >>> f = cyclic_cosine_factors(1025)
    >>> round(float(f[0]), 6), round(float(f[512]), 6), round(float(f[1024]), 6)
    (1.0, 0.0, 1.0)
    """
    out = np.empty(int(steps), dtype=np.float64)
    lr = 1.0
    for epoch in range(int(steps)):
        if epoch == 0:
            lr = 1.0
        elif (epoch - 1 - t_max) % (2 * t_max) == 0:
            lr = lr + (1.0 - math.cos(math.pi / t_max)) / 2
        else:
            lr = ((1 + math.cos(math.pi * epoch / t_max))
                  / (1 + math.cos(math.pi * (epoch - 1) / t_max)) * lr)
        out[epoch] = lr
    return out


def cosine_closed_form(step: np.ndarray | int, t_max: int = T_MAX) -> np.ndarray:
    """The closed form ``(1 + cos(pi * step / t_max)) / 2`` (for checks and plots)."""
    return (1 + np.cos(np.pi * np.asarray(step, dtype=np.float64) / t_max)) / 2
