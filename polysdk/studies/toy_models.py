"""The toy-models study (seed 002): sweeps of Table 1, trained many models at once.

    from polysdk.studies.toy_models import ToyModelStudy, ToyModelsConfig, PRESETS
    report = ToyModelStudy("LR1", quick=True).run(out="runs/demo")
    ToyModelStudy("K1", seeds=2, N=128, m=16).run(out="runs/k1")     # fields changed
    ToyModelStudy(PRESETS["B1"].quick(), sweep={"initial_bias": [-1, 0]}).run("runs/mine")

Every row of the seed's Table 1 is a preset (``PRESETS``, each a
:class:`ToyModelsConfig`; the second "B3", the GeLU row, is ``G3``) with the paper's
sizes (N=512, m=64, k=1024 or 2048, batch 2**13, 2**17 steps) and its swept values.
``ToyModelsConfig.quick()`` (``quick=True``, ``--quick``) scales a config for CPUs:
N=64, m=16, k / 8, batch 2**7, 2**12 steps, decays x 32 (so the bias decays as much
over the 32x shorter run); eps, rates and offsets unchanged. Settings (``--set``,
keywords) apply after that scaling, unscaled. Instances = every combination of the
swept values x ``seeds`` replicates (instance seed = seed + replicate, so the sweep
values of one replicate share embedding, init and data).

The resume unit is a chunk of instances trained as one batched computation
(:func:`~polysdk.train.plan_chunks`): result ``toy_models/chunk_NNN`` in
``<out>/results.zarr``; then ``toy_models/summary`` (one row per instance). The report
is :mod:`polysdk.studies.toy_models_report`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polysdk._util import jsonable, torch_threads
from polysdk.detect.capacity import PAPER_THRESHOLD
from polysdk.errors import ConfigError
from polysdk.models.toy import ToyConfig
from polysdk.studies.base import Study, Unit
from polysdk.studies.config import describe

__all__ = ["ToyModelStudy", "ToyModelsConfig", "PRESETS", "QUICK"]

log = logging.getLogger(__name__)

LEARNING_RATES = [0.001, 0.003, 0.005, 0.007, 0.01, 0.03]
BIAS_OFFSETS = [float(b) for b in np.round(np.linspace(-2, 1, 11), 10)]
EPSILONS = [float(e) for e in 2.0 ** -np.linspace(1, 5, 11)]
K_VALUES = [2 ** i for i in range(4, 12)]
POWERS = [10.0 ** -i for i in range(1, 8)]

#: the CPU scale of ``quick()`` (k and swept k values are divided by 8 = 512 / N)
QUICK = dict(N=64, m=16, log2_batch_size=7, log2_training_steps=12)
#: k (and swept k values) are divided by 512 / 64 at the quick scale
QUICK_K_DIVISOR = 8
#: the quick run has 2**5 fewer steps than the paper's: decays are multiplied by this so
#: the first-layer bias decays as much over the run as in the paper's 2**17 steps
QUICK_DECAY_SCALE = 2 ** (17 - 12)

_MODEL_FIELDS = [f.name for f in dataclasses.fields(ToyConfig)]
_MODEL_TYPES = {"N": int, "m": int, "k": int, "eps": float, "sample_kind": str, "task": str,
                "learning_rate": float, "decay": float, "initial_bias": float, "reg": float,
                "nonlinearity": str, "log2_batch_size": int, "log2_training_steps": int}


def _quick_k(k: Any) -> int:
    return max(1, int(k) // QUICK_K_DIVISOR)


@dataclass(frozen=True)
class ToyModelsConfig(ToyConfig):
    """A toy-models run: the :class:`~polysdk.models.toy.ToyConfig` fields (inherited,
    validated and canonicalised there) fixed for every instance, the ``sweep`` ({field: values}; several = a grid), ``seeds`` replicates from
    ``seed``, the monosemantic ``threshold``, and how to run it (``chunk_size``: instances
    per batched computation and per stored result, None = by size; ``threads``: torch
    threads while training, "auto" = 1 for small chunks on a busy CPU).

    >>> cfg = PRESETS["K1"].quick()
    >>> cfg.N, cfg.k, cfg.sweep["k"][:3]
    (64, 128, [2, 4, 8])
    """

    sweep: dict[str, list[Any]] = field(default_factory=dict)
    seeds: int = 1
    seed: int = 0
    threshold: float = PAPER_THRESHOLD
    chunk_size: int | None = None
    threads: int | str | None = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()   # validates; canonical spellings ("autoencoder" -> "decoder")
        if not isinstance(self.sweep, Mapping):
            raise ConfigError(f"sweep={self.sweep!r} must be a dict {{field: [values]}}.")
        sweep = {}
        for var, vals in self.sweep.items():
            if var not in _MODEL_FIELDS:
                raise ConfigError(f"cannot sweep {var!r}: not a toy-model parameter; "
                                  f"valid: {_MODEL_FIELDS}.")
            sweep[str(var)] = (list(vals) if isinstance(vals, (list, tuple, np.ndarray))
                               else [vals])
        object.__setattr__(self, "sweep", sweep)
        if isinstance(self.seeds, bool) or int(self.seeds) < 1:
            raise ConfigError(f"seeds={self.seeds} must be >= 1 (replicates per sweep value).")
        if self.chunk_size is not None and int(self.chunk_size) < 1:
            raise ConfigError(f"chunk_size={self.chunk_size} must be >= 1 (or None: by size).")
        if not (self.threads in (None, "auto") or isinstance(self.threads, int)):
            raise ConfigError(f"threads={self.threads!r} must be an int, 'auto' or None.")
        if not 0 < float(self.threshold) <= 1:
            raise ConfigError(f"threshold={self.threshold} is a max/sum ratio; use (0, 1].")
        object.__setattr__(self, "seeds", int(self.seeds))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "threshold", float(self.threshold))
        self.instances()   # every combination is a valid ToyConfig

    def quick(self) -> ToyModelsConfig:
        """The CPU scale (N=64, m=16, k / 8, batch 2**7, 2**12 steps, decays x 32)."""
        sweep = {k: list(v) for k, v in self.sweep.items()}
        if "k" in sweep:
            sweep["k"] = [_quick_k(k) for k in sweep["k"]]
        if "decay" in sweep:
            sweep["decay"] = [d * QUICK_DECAY_SCALE for d in sweep["decay"]]
        return dataclasses.replace(self, **QUICK, k=_quick_k(self.k), sweep=sweep,
                                   decay=self.decay * QUICK_DECAY_SCALE)

    def fixed(self) -> dict[str, Any]:
        """The ToyConfig fields every instance shares (before its sweep values)."""
        return {f: getattr(self, f) for f in _MODEL_FIELDS}

    def instances(self) -> list[tuple[ToyConfig, int]]:
        """(ToyConfig, seed) of every instance: sweep combinations x replicates."""
        names = list(self.sweep)
        combos = list(itertools.product(*[self.sweep[n] for n in names])) or [()]
        fixed = self.fixed()
        return [(ToyConfig(**{**fixed, **dict(zip(names, combo))}), self.seed + rep)
                for combo in combos for rep in range(self.seeds)]


def _row(task: str = "decoder", nl: str = "ReLU", dist: str = "equal",
         sweep: Mapping[str, list[Any]] | None = None, **rest: Any) -> ToyModelsConfig:
    return ToyModelsConfig(task=task, nonlinearity=nl, sample_kind=dist,
                           sweep=dict(sweep or {}), **rest)


_LR = {"learning_rate": LEARNING_RATES}
_BIAS = {"initial_bias": BIAS_OFFSETS}
_EPS = {"eps": EPSILONS}
#: Table 1 of the seed, one config per batch, at the paper's sizes.
PRESETS: dict[str, ToyModelsConfig] = {
    "LR1": _row(decay=0.0, initial_bias=0.0, sweep=_LR),
    "LR2": _row(dist="power_law", sweep=_LR),
    "LR3": _row(decay=0.03, initial_bias=-1.0, sweep=_LR),
    "B1": _row(eps=1 / 16, learning_rate=0.003, decay=0.03, sweep=_BIAS),
    "B2": _row(eps=1 / 32, learning_rate=0.003, decay=0.003, sweep=_BIAS),
    "B3": _row(eps=1 / 64, learning_rate=0.003, decay=0.003, sweep=_BIAS),
    "B4": _row(eps=1 / 128, learning_rate=0.003, decay=0.003, sweep=_BIAS),
    "B5": _row(eps=1 / 256, learning_rate=0.003, decay=0.003, sweep=_BIAS),
    "LR4": _row(dist="power_law", decay=0.03, initial_bias=-1.0, sweep=_LR),
    # the table's second "B3" (GeLU): both the rate and the offset are "Variable": a grid
    "G3": _row(nl="GeLU", decay=0.03, sweep={**_LR, **_BIAS}),
    "E1": _row(learning_rate=0.003, decay=0.03, initial_bias=-1.0, sweep=_EPS),
    "E2": _row(learning_rate=0.003, decay=0.01, initial_bias=-1.0, sweep=_EPS),
    "E3": _row(learning_rate=0.003, decay=0.003, initial_bias=-1.0, sweep=_EPS),
    "E4": _row(learning_rate=0.003, decay=0.001, initial_bias=-1.0, sweep=_EPS),
    "K0": _row(learning_rate=0.007, decay=0.0, initial_bias=0.0, sweep={"k": K_VALUES[:-1]}),
    "K1": _row(learning_rate=0.007, decay=0.03, initial_bias=-1.0, sweep={"k": K_VALUES}),
    "K2": _row(dist="power_law", learning_rate=0.007, decay=0.03, initial_bias=-1.0,
               sweep={"k": K_VALUES}),
    "RG1": _row(learning_rate=0.005, decay=0.03, initial_bias=-1.0, sweep={"reg": POWERS}),
    "RP1": _row(task="re-projector", decay=0.03, initial_bias=-1.0, sweep=_LR),
    "LR5": _row(task="abs", k=2048, decay=0.03, initial_bias=-1.0, sweep=_LR),
    "D1": _row(task="abs", k=2048, learning_rate=0.007, initial_bias=-1.0,
               sweep={"decay": POWERS}),
}


def _chunk_name(j: int) -> str:
    return f"toy_models/chunk_{j:03d}"


class ToyModelStudy(Study[ToyModelsConfig]):
    """Sweeps of toy models (seed 002); see the module docstring.

    ``ToyModelStudy(batch, quick=False, **settings)``: ``batch`` is a Table 1 preset
    ("LR1" ... "D1", "G3"), a :class:`ToyModelsConfig`, or None (the paper's defaults,
    no sweep); ``settings`` are :class:`ToyModelsConfig` fields.

    Examples
    --------
    >>> study = ToyModelStudy("LR1", quick=True, log2_training_steps=6)
    >>> len(study.config.instances()), study.config.instances()[0][0].N
    (6, 64)
    """

    name = "toy-models"
    description = "toy models of superposition (seed 002): Table 1 sweeps, monosemanticity"
    Config = ToyModelsConfig
    presets = PRESETS
    default_preset = "LR1"
    runtime_fields = ("chunk_size", "threads")

    def __init__(self, batch: ToyModelsConfig | str | None = "LR1", **kwargs: Any) -> None:
        super().__init__(batch, **kwargs)

    @classmethod
    def describe_config(cls, config: ToyModelsConfig) -> str:
        """One line: the sweep and the fixed values (what ``polysdk list`` prints)."""
        swept = "; ".join(f"sweep {v} {_short(vals)}" for v, vals in config.sweep.items())
        fixed = describe(dataclasses.replace(config, sweep={}), None,
                         skip=("sweep", "chunk_size", "threads", *config.sweep))
        return f"{swept}; {fixed}" if swept else fixed

    # ----------------------------------------------------------------- units
    def units(self) -> list[Unit]:
        """One unit per chunk of instances that train as one batched computation."""
        from polysdk.train import plan_chunks

        cfgs = [c for c, _ in self.config.instances()]
        plan = plan_chunks(cfgs, self.resolved_device(), self.config.chunk_size)
        return [Unit(_chunk_name(j), idx) for j, idx in enumerate(plan)]

    def _threads_for(self, cfg: ToyConfig, n: int) -> int | None:
        from polysdk.train.trainer import step_bytes

        threads = self.config.threads
        if threads != "auto":
            return None if threads in (None, 0) else int(threads)
        if self.resolved_device().type != "cpu":
            return None
        # Small chunks on a CPU that other processes keep busy: one thread. Measured on
        # a shared 2-core machine: 2 threads were ~30x slower than 1 under load (threads
        # wait on each other), but ~1.9x faster than 1 when the machine was idle.
        busy = os.getloadavg()[0] > (os.cpu_count() or 1)
        return 1 if busy and step_bytes(cfg) * n < 32 * 2 ** 20 else None

    def run_unit(self, unit: Unit) -> Any:
        from polysdk.train import train_toy_models

        insts = self.config.instances()
        idx = list(unit.spec)
        cfgs, seeds = [insts[i][0] for i in idx], [insts[i][1] for i in idx]
        t0 = time.perf_counter()
        with torch_threads(self._threads_for(cfgs[0], len(idx))):
            res = train_toy_models(cfgs, seeds, device=self.resolved_device(),
                                   progress=unit.name if self.progress else False)
        return chunk_dataset(res, idx, time.perf_counter() - t0, self.config.threshold,
                             list(self.config.sweep))

    def finish(self, store: Any, units: Sequence[Unit]) -> None:
        store.write_result("toy_models/summary", self.summarize(store, units))

    _SUMMARY_VARS = ("final_loss", "n_mono", "mono_per_feature", "mono_per_neuron",
                     "features_covered", "final_mean_bias")

    def summarize(self, store: Any, units: Sequence[Unit]) -> Any:
        """One row per instance (scalars and config coords), from the chunk results."""
        import xarray as xr

        parts = []
        for unit in units:
            ds = store.read_result(unit.name)
            keep = [v for v in self._SUMMARY_VARS if v in ds]
            parts.append(ds[keep].drop_vars([c for c in ds.coords if c not in
                                             ["instance", "seed", *_MODEL_FIELDS]],
                                            errors="ignore"))
        summary = xr.concat(parts, dim="instance").sortby("instance")
        summary.attrs.update(study_record=json.dumps(jsonable(self.record())),
                             swept=json.dumps(list(self.config.sweep)))
        return summary

    def make_report(self, out: str | Path) -> Path:
        from polysdk.studies.toy_models_report import make_report

        return make_report(self, Path(out))


def _short(values: Sequence[Any]) -> str:
    fmt = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in values]
    return f"[{', '.join(fmt)}]" if len(fmt) <= 4 else \
        f"[{fmt[0]} .. {fmt[-1]}] ({len(fmt)} values)"


def chunk_dataset(res: Any, index: Sequence[int], seconds: float, threshold: float,
                  swept: Sequence[str]) -> Any:
    """One chunk's results as a Dataset over ``instance`` (see the module docstring)."""
    import torch
    import xarray as xr

    from polysdk.detect.capacity import monosemanticity

    ck = monosemanticity(torch.from_numpy(res.checkpoint_activations), threshold)
    final = {k: v[:, -1] for k, v in ck.items()}
    models = res.models
    last = min(8, res.losses.shape[1])
    inst = ("instance",)
    data: dict[str, Any] = {
        "loss": (("instance", "log_step"), res.losses),
        "final_loss": (inst, res.losses[:, -last:].mean(1)),
        "checkpoint_activation": (("instance", "checkpoint", "unit", "feature"),
                                  res.checkpoint_activations),
        "checkpoint_mean_bias": (("instance", "checkpoint"), res.checkpoint_mean_bias),
        "checkpoint_mono_per_feature": (("instance", "checkpoint"),
                                        ck["mono_per_feature"].double().numpy()),
        "checkpoint_mono_per_neuron": (("instance", "checkpoint"),
                                       ck["mono_per_neuron"].double().numpy()),
        "checkpoint_features_covered": (("instance", "checkpoint"),
                                        ck["features_covered"].numpy()),
        "score": (("instance", "unit"), final["score"].double().numpy()),
        "monosemantic": (("instance", "unit"), final["monosemantic"].numpy()),
        "n_mono": (inst, final["n_mono"].numpy()),
        "mono_per_feature": (inst, final["mono_per_feature"].double().numpy()),
        "mono_per_neuron": (inst, final["mono_per_neuron"].double().numpy()),
        "features_covered": (inst, final["features_covered"].numpy()),
        "final_mean_bias": (inst, res.checkpoint_mean_bias[:, -1]),
        "W1": (("instance", "unit", "embed"), models.W1.cpu().numpy()),
        "b1": (("instance", "unit"), models.b1.cpu().numpy()),
        "W2": (("instance", "out", "unit"), models.W2.cpu().numpy()),
        "embedding": (("instance", "embed", "feature"), models.embed.cpu().numpy()),
    }
    if models.target_embed is not None:
        data["target_embedding"] = (("instance", "embed", "feature"),
                                    models.target_embed.cpu().numpy())
    coords: dict[str, Any] = {
        "instance": np.asarray(index, dtype=np.int64),
        "log_step": res.loss_steps, "checkpoint": res.checkpoint_steps,
        "seed": (inst, np.asarray(res.seeds, dtype=np.int64)),
    }
    for name in _MODEL_FIELDS:
        vals = [getattr(c, name) for c in res.configs]
        coords[name] = (inst, np.asarray(vals, dtype=str if isinstance(vals[0], str)
                                         else None))
    ds = xr.Dataset(data, coords=coords)
    ds["final_loss"].attrs["description"] = "mean of the last 8 logged losses (128 steps)"
    ds["features_covered"].attrs["description"] = (
        "distinct features with >= 1 monosemantic neuron (a polysdk metric, not the "
        "paper's)")
    ds.attrs.update(train_seconds=float(seconds), threshold=float(threshold),
                    swept=json.dumps(list(swept)))
    return ds
