"""What one batched toy-model training run returns (shared by the trainer and its groups)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polysdk.models.toy import ToyConfig, ToyModels

__all__ = ["TrainResult"]


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
