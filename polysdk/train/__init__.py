"""Training toy models many at once: batched LAMB, the cyclic cosine schedule, chunking.

    from polysdk.train import train_toy_models
    res = train_toy_models(configs, seeds)     # see polysdk.train.trainer
"""

from polysdk.train.lamb import BatchedLamb, FlatParams
from polysdk.train.schedule import cyclic_cosine_factors
from polysdk.train.trainer import (
    TrainingStopped, TrainResult, auto_chunk_size, checkpoint_steps, plan_chunks,
    train_toy_models,
)

__all__ = ["BatchedLamb", "FlatParams", "cyclic_cosine_factors", "TrainResult",
           "TrainingStopped", "auto_chunk_size", "checkpoint_steps", "plan_chunks",
           "train_toy_models"]
