"""A generic training loop: epochs, attached components, regularizers, checkpoints, resume.

    from polysdk.train.loop import fit
    result = fit(model, loader, epochs=5, optimizer=opt, loss_fn=F.cross_entropy,
                 components=[mask],                 # attached for the loop, then detached
                 regularizers=[ActivationL1(model, "1", lam=1e-3)],   # .loss() is added
                 evaluate=lambda model, epoch: {"acc": accuracy(model)},
                 checkpoint_dir="runs/x/checkpoints")   # one file per epoch; resumes
    result.history        # [{"epoch": 0, "loss": ..., "acc": ...}, ...]

A batch is ``(inputs, targets)`` (the model gets ``inputs``), or a dict of model keyword
arguments whose ``"labels"`` entry is the target (Hugging Face style); pass ``forward``
to do anything else (``forward(model, batch) -> (outputs, targets)``).

Components are anything with ``attach()``/``detach()`` (every polysdk hooked component)
or a context manager; they are attached in order before the first batch and detached
in reverse order however the loop ends. Regularizers are attached the same way (when
they have either) and
their ``loss()`` (``loss(labels=targets)`` when it takes labels) is added to
``loss_fn(outputs, targets)``.

With ``checkpoint_dir``, the model, optimizer, scheduler, history and every random
generator's state (Python, NumPy, torch, CUDA) are saved after each epoch
(``epoch_0003.pt``, written whole or not at all), and a later call with the same
arguments continues after the last saved epoch: with the same seed it ends with the
same weights as a run never interrupted (tested). The toy models' batched trainer
(:mod:`polysdk.train.trainer`) is the toy study's own; this loop is for every study
that trains an ordinary network.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polysdk._util import progress_bar
from polysdk.errors import ConfigError

__all__ = ["fit", "FitResult", "last_checkpoint"]

log = logging.getLogger(__name__)
_CKPT = re.compile(r"^epoch_(\d{4,})\.pt$")


@dataclass
class FitResult:
    """What :func:`fit` returns: per-epoch records and where it started."""

    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0          # the first epoch this call trained (> 0: resumed)
    checkpoint: Path | None = None  # the last checkpoint written


def last_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint of the latest epoch in ``folder`` (None when there is none)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir()
                   if (m := _CKPT.match(p.name)))
    return found[-1][1] if found else None


def _default_forward(model: torch.nn.Module, batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, Mapping):
        kwargs = {k: v for k, v in batch.items() if k != "labels"}
        return model(**kwargs), batch.get("labels")
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return model(batch[0]), batch[1]
    raise ConfigError(f"a batch of type {type(batch).__name__} is neither (inputs, targets) "
                      "nor a dict of model arguments; pass forward=fn(model, batch) -> "
                      "(outputs, targets).")


def _to(batch: Any, device: torch.device | None) -> Any:
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _enter(stack: ExitStack, component: Any, required: bool = True) -> None:
    if hasattr(component, "attach") and hasattr(component, "detach"):
        component.attach()
        stack.callback(component.detach)
    elif hasattr(component, "__enter__") and hasattr(component, "__exit__"):
        stack.enter_context(component)
    elif required:
        raise ConfigError(f"{type(component).__name__} is neither a component (attach/"
                          "detach) nor a context manager; fit cannot attach it.")


def _regularizer_loss(reg: Any, targets: Any) -> torch.Tensor:
    try:
        takes_labels = "labels" in inspect.signature(reg.loss).parameters
    except (TypeError, ValueError):
        takes_labels = False
    return reg.loss(labels=targets) if takes_labels else reg.loss()


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)   # whole or absent


def fit(model: torch.nn.Module, loader: Iterable[Any], *, epochs: int,
        optimizer: torch.optim.Optimizer, loss_fn: Callable[[Any, Any], torch.Tensor],
        components: Sequence[Any] = (), regularizers: Sequence[Any] = (),
        evaluate: Callable[[torch.nn.Module, int], Mapping[str, Any]] | None = None,
        checkpoint_dir: str | Path | None = None, resume: bool = True,
        scheduler: Any = None, forward: Callable[[torch.nn.Module, Any], tuple[Any, Any]]
        | None = None, device: str | torch.device | None = None,
        progress: bool | str = True) -> FitResult:
    """Train ``model`` for ``epochs`` over ``loader`` (see the module docstring).

    ``scheduler`` (e.g. a ``torch.optim.lr_scheduler``) steps once per epoch;
    ``device`` moves each batch's tensors there; ``progress``: False, True or the bar's
    description. ``evaluate(model, epoch)`` runs after each epoch (the model in eval
    mode) and its numbers join that epoch's record. ``resume=False`` ignores existing
    checkpoints (and overwrites them).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs={epochs!r} must be a non-negative integer.")
    forward = forward or _default_forward
    dev = torch.device(device) if device is not None else None
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    result = FitResult()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        last = last_checkpoint(folder) if resume else None
        if last is not None:
            state = torch.load(last, map_location="cpu", weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler") is not None:
                scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            result.history = list(state["history"])
            result.start_epoch = int(state["epoch"]) + 1
            result.checkpoint = last
            log.info("fit: resumed after epoch %d from %s", state["epoch"], last)
    desc = progress if isinstance(progress, str) else "train"
    with ExitStack() as stack:
        for component in components:
            _enter(stack, component)
        for reg in regularizers:   # one with neither attach nor a context: loss() only
            if not callable(getattr(reg, "loss", None)):
                raise ConfigError(f"regularizer {type(reg).__name__} has no loss() method.")
            _enter(stack, reg, required=False)
        for epoch in range(result.start_epoch, epochs):
            model.train()
            total, n = 0.0, 0
            try:
                n_batches = len(loader)  # type: ignore[arg-type]
            except TypeError:
                n_batches = None
            bar = progress_bar(loader, show=bool(progress), total=n_batches,
                               desc=f"{desc} {epoch + 1}/{epochs}", leave=False, unit="batch")
            for batch in bar:
                outputs, targets = forward(model, _to(batch, dev))
                loss = loss_fn(outputs, targets)
                for reg in regularizers:
                    loss = loss + _regularizer_loss(reg, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                n += 1
                bar.set_postfix(loss=f"{total / n:.4g}", refresh=False)
            bar.close()
            if scheduler is not None:
                scheduler.step()
            record: dict[str, Any] = {"epoch": epoch, "loss": total / max(n, 1)}
            if evaluate is not None:
                model.eval()
                with torch.no_grad():
                    record.update(evaluate(model, epoch) or {})
            result.history.append(record)
            if folder is not None:
                path = folder / f"epoch_{epoch:04d}.pt"
                _save(path, {"epoch": epoch, "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(),
                             "scheduler": None if scheduler is None else
                             scheduler.state_dict(),
                             "history": result.history, "rng": _rng_state()})
                result.checkpoint = path
    return result
