"""Training: the generic loop for any network, and the toy models' batched trainer.

    from polysdk.train import fit, train_toy_models
    fit(model, loader, epochs=5, optimizer=opt, loss_fn=loss, checkpoint_dir="ckpt")
    res = train_toy_models(configs, seeds)     # see polysdk.train.trainer
"""

from polysdk.train.lamb import BatchedLamb, FlatParams
from polysdk.train.loop import FitResult, fit
from polysdk.train.schedule import cyclic_cosine_factors
from polysdk.train.trainer import (
    TrainingStopped, TrainResult, auto_chunk_size, checkpoint_steps, plan_chunks,
    train_toy_models,
)

__all__ = ["BatchedLamb", "FitResult", "FlatParams", "fit", "cyclic_cosine_factors", "TrainResult",
           "TrainingStopped", "auto_chunk_size", "checkpoint_steps", "plan_chunks",
           "train_toy_models"]
