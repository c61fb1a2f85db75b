"""The toy-models study (seed 002): sweeps of Table 1, trained many models at once.

    from polysdk.studies.toy_models import ToyModelStudy
    report = ToyModelStudy(batch="LR1", quick=True).run(out="runs/demo")
    ToyModelStudy(batch="K1", seeds=2, N=128, m=16).run(out="runs/k1")   # overrides
    ToyModelStudy(sweep={"initial_bias": [-1, 0]}, quick=True).run("runs/mine")

Every row of the seed's Table 1 is a preset (``PRESETS``; the second "B3", the GeLU
row, is ``G3``) with the paper's sizes (N=512, m=64, k=1024 or 2048, batch 2**13,
2**17 steps) and its swept values. ``quick=True`` scales a preset for CPUs: N=64,
m=16, k / 8, batch 2**7, 2**12 steps, decays x 32 (so the bias decays as much over the
32x shorter run); eps, rates and offsets unchanged. ``--set``/keyword overrides apply
after that scaling, unscaled. Instances = every
combination of the swept values x ``seeds`` replicates (instance seed = seed +
replicate, so the sweep values of one replicate share embedding, init and data).

Results go into ``<out>/results.zarr`` (an :class:`~polysdk.store.ActivationStore`):
one result ``toy_models/chunk_NNN`` per trained chunk of instances (the resume unit),
then ``toy_models/summary`` (one row per instance). A killed run restarted with the
same config trains only the chunks that have no result yet.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from polysdk.detect.capacity import PAPER_THRESHOLD, monosemanticity
from polysdk.errors import ConfigError, closest_names
from polysdk.models.toy import ToyConfig
from polysdk.studies.base import Study, jsonable, register_study, torch_threads
from polysdk.train.trainer import TrainResult, plan_chunks, step_bytes, train_toy_models

__all__ = ["ToyModelStudy", "PRESETS", "preset_config", "QUICK"]

log = logging.getLogger(__name__)

LEARNING_RATES = [0.001, 0.003, 0.005, 0.007, 0.01, 0.03]
BIAS_OFFSETS = [float(b) for b in np.round(np.linspace(-2, 1, 11), 10)]
EPSILONS = [float(e) for e in 2.0 ** -np.linspace(1, 5, 11)]
K_VALUES = [2 ** i for i in range(4, 12)]
POWERS = [10.0 ** -i for i in range(1, 8)]

_PAPER = dict(N=512, m=64, k=1024, eps=1 / 64, log2_batch_size=13, log2_training_steps=17)


def _row(task: str = "decoder", nl: str = "ReLU", dist: str = "equal", **rest: Any
         ) -> dict[str, Any]:
    return {**_PAPER, "task": task, "nonlinearity": nl, "sample_kind": dist, **rest}


#: Table 1 of the seed: preset -> (fixed settings, {swept variable: values}).
PRESETS: dict[str, tuple[dict[str, Any], dict[str, list[Any]]]] = {
    "LR1": (_row(decay=0.0, initial_bias=0.0), {"learning_rate": LEARNING_RATES}),
    "LR2": (_row(dist="power_law"), {"learning_rate": LEARNING_RATES}),
    "LR3": (_row(decay=0.03, initial_bias=-1.0), {"learning_rate": LEARNING_RATES}),
    "B1": (_row(eps=1 / 16, learning_rate=0.003, decay=0.03), {"initial_bias": BIAS_OFFSETS}),
    "B2": (_row(eps=1 / 32, learning_rate=0.003, decay=0.003), {"initial_bias": BIAS_OFFSETS}),
    "B3": (_row(eps=1 / 64, learning_rate=0.003, decay=0.003), {"initial_bias": BIAS_OFFSETS}),
    "B4": (_row(eps=1 / 128, learning_rate=0.003, decay=0.003), {"initial_bias": BIAS_OFFSETS}),
    "B5": (_row(eps=1 / 256, learning_rate=0.003, decay=0.003), {"initial_bias": BIAS_OFFSETS}),
    "LR4": (_row(dist="power_law", decay=0.03, initial_bias=-1.0),
            {"learning_rate": LEARNING_RATES}),
    # the table's second "B3" (GeLU): both the rate and the offset are "Variable": a grid
    "G3": (_row(nl="GeLU", decay=0.03),
           {"learning_rate": LEARNING_RATES, "initial_bias": BIAS_OFFSETS}),
    "E1": (_row(learning_rate=0.003, decay=0.03, initial_bias=-1.0), {"eps": EPSILONS}),
    "E2": (_row(learning_rate=0.003, decay=0.01, initial_bias=-1.0), {"eps": EPSILONS}),
    "E3": (_row(learning_rate=0.003, decay=0.003, initial_bias=-1.0), {"eps": EPSILONS}),
    "E4": (_row(learning_rate=0.003, decay=0.001, initial_bias=-1.0), {"eps": EPSILONS}),
    "K0": (_row(learning_rate=0.007, decay=0.0, initial_bias=0.0), {"k": K_VALUES[:-1]}),
    "K1": (_row(learning_rate=0.007, decay=0.03, initial_bias=-1.0), {"k": K_VALUES}),
    "K2": (_row(dist="power_law", learning_rate=0.007, decay=0.03, initial_bias=-1.0),
           {"k": K_VALUES}),
    "RG1": (_row(learning_rate=0.005, decay=0.03, initial_bias=-1.0), {"reg": POWERS}),
    "RP1": (_row(task="re-projector", decay=0.03, initial_bias=-1.0),
            {"learning_rate": LEARNING_RATES}),
    "LR5": (_row(task="abs", k=2048, decay=0.03, initial_bias=-1.0),
            {"learning_rate": LEARNING_RATES}),
    "D1": (_row(task="abs", k=2048, learning_rate=0.007, initial_bias=-1.0),
           {"decay": POWERS}),
}

#: the CPU scale of ``quick=True`` (k and swept k values are divided by 8 = 512 / N)
QUICK = dict(N=64, m=16, log2_batch_size=7, log2_training_steps=12)
#: k (and swept k values) are divided by 512 / 64 at the quick scale
QUICK_K_DIVISOR = 8
#: the quick run has 2**5 fewer steps than the paper's: decays are multiplied by this so
#: the first-layer bias decays as much over the run as in the paper's 2**17 steps
QUICK_DECAY_SCALE = 2 ** (17 - 12)


def _apply_quick(fixed: dict[str, Any], sweep: dict[str, list]) -> None:
    fixed.update(QUICK)
    fixed["k"] = _quick_k(fixed["k"])
    fixed["decay"] = fixed.get("decay", 0.0) * QUICK_DECAY_SCALE
    if "k" in sweep:
        sweep["k"] = [_quick_k(k) for k in sweep["k"]]
    if "decay" in sweep:
        sweep["decay"] = [d * QUICK_DECAY_SCALE for d in sweep["decay"]]


def _quick_k(k: Any) -> int:
    return max(1, int(k) // QUICK_K_DIVISOR)


def preset_config(batch: str, quick: bool = False) -> tuple[dict[str, Any], dict[str, list]]:
    """(fixed ToyConfig settings, sweep) of a Table 1 preset, at the paper's or quick scale.

    >>> fixed, sweep = preset_config("K1", quick=True)
    >>> fixed["N"], sweep["k"][:3]
    (64, [2, 4, 8])
    """
    key = str(batch).upper()
    if key not in PRESETS:
        close = closest_names(key, list(PRESETS), n=3)
        raise ConfigError(f"unknown toy-models batch {batch!r}"
                          f"{' (did you mean ' + ', '.join(close) + '?)' if close else ''}; "
                          f"presets: {', '.join(PRESETS)}.")
    fixed, sweep = PRESETS[key]
    fixed, sweep = dict(fixed), {k: list(v) for k, v in sweep.items()}
    if quick:
        _apply_quick(fixed, sweep)
    return fixed, sweep


_CONFIG_FIELDS = [f for f in ToyConfig.__dataclass_fields__]


def _describe(fixed: Mapping[str, Any], sweep: Mapping[str, list]) -> str:
    fixed = {**ToyConfig().to_dict(), **fixed}
    shown = {"task": "", "nonlinearity": "", "sample_kind": "", "k": "k=", "eps": "eps=",
             "learning_rate": "lr=", "decay": "decay=", "initial_bias": "bias=", "reg": "reg="}
    parts = [f"{pre}{fixed[key]:.4g}" if isinstance(fixed[key], float) else f"{pre}{fixed[key]}"
             for key, pre in shown.items() if key not in sweep and key in fixed]
    swept = "; ".join(f"sweep {v} ({len(vals)} values)" for v, vals in sweep.items())
    return f"{swept}; " + " ".join(parts)


@register_study
class ToyModelStudy(Study):
    """Sweeps of toy models (seed 002); see the module docstring.

    Parameters
    ----------
    batch : str or None
        A Table 1 preset ("LR1" ... "D1", "G3"); None starts from the paper's defaults.
    quick : bool
        CPU scale (N=64, m=16, k/8, batch 2**7, 2**12 steps, decays x 32).
    sweep : dict, optional
        ``{variable: values}`` replacing the preset's sweep (several = a grid).
    seeds : int
        Replicates per sweep value (instance seed = ``seed`` + replicate).
    chunk_size : int, optional
        Instances per batched computation (and per stored result); None = by size.
    threads : int, "auto" or None
        torch threads while training; "auto": 1 for small chunks when the machine is
        busy (load average above the core count; extra threads then wait on each
        other), torch's default otherwise.
    **params
        Any :class:`~polysdk.models.toy.ToyConfig` field, fixed for every instance.

    Examples
    --------
    >>> study = ToyModelStudy(batch="LR1", quick=True, log2_training_steps=6)
    >>> len(study.instances()), study.instances()[0][0].N
    (6, 64)
    """

    name = "toy-models"
    description = "toy models of superposition (seed 002): Table 1 sweeps, monosemanticity"
    presets = {k: _describe(f, s) for k, (f, s) in PRESETS.items()}

    def __init__(self, batch: str | None = "LR1", *, quick: bool = False,
                 sweep: Mapping[str, Sequence[Any]] | None = None, seeds: int = 1,
                 seed: int = 0, device: str = "auto", chunk_size: int | None = None,
                 threads: int | str | None = "auto", threshold: float = PAPER_THRESHOLD,
                 progress: bool = True, **params: Any) -> None:
        super().__init__(seed=seed, device=device, progress=progress)
        bad = [p for p in params if p not in _CONFIG_FIELDS]
        if bad:
            raise ConfigError(f"unknown toy-model parameter(s) {bad}; valid: {_CONFIG_FIELDS}.")
        self.batch = None if batch is None else str(batch).upper()
        self.quick = bool(quick)
        if self.batch is not None:
            fixed, preset_sweep = preset_config(self.batch, self.quick)
        else:
            fixed, preset_sweep = dict(_PAPER), {}
            if self.quick:
                _apply_quick(fixed, preset_sweep)
        fixed.update(params)
        self.sweep = {str(k): list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]
                      for k, v in (sweep if sweep is not None else preset_sweep).items()}
        for var in self.sweep:
            if var not in _CONFIG_FIELDS:
                raise ConfigError(f"cannot sweep {var!r}: not a toy-model parameter; "
                                  f"valid: {_CONFIG_FIELDS}.")
        self.fixed = ToyConfig(**fixed).to_dict()   # validates
        if int(seeds) < 1:
            raise ConfigError(f"seeds={seeds} must be >= 1 (replicates per sweep value).")
        self.seeds = int(seeds)
        self.chunk_size = chunk_size
        self.threads = threads
        self.threshold = float(threshold)
        self.instances()   # validate every combination now

    # ----------------------------------------------------------------- config
    def config(self) -> dict[str, Any]:
        return {"study": self.name, "batch": self.batch, "quick": self.quick,
                "fixed": self.fixed, "sweep": self.sweep, "seeds": self.seeds,
                "seed": self.seed, "threshold": self.threshold}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **kwargs: Any) -> "ToyModelStudy":
        """Rebuild from :meth:`config` (e.g. the ``config.json`` of a run folder)."""
        fixed = dict(cfg["fixed"])
        return cls(None, quick=False, sweep=cfg["sweep"], seeds=cfg["seeds"],
                   seed=cfg["seed"], threshold=cfg.get("threshold", PAPER_THRESHOLD),
                   **fixed, **kwargs)._with_label(cfg.get("batch"), cfg.get("quick", False))

    def _with_label(self, batch: str | None, quick: bool) -> "ToyModelStudy":
        self.batch, self.quick = batch, quick
        return self

    @classmethod
    def from_options(cls, preset: str | None = None, quick: bool = False,
                     device: str = "auto", overrides: Mapping[str, Any] | None = None,
                     **kwargs: Any) -> "ToyModelStudy":
        overrides = dict(overrides or {})
        study_keys = {"seeds", "seed", "chunk_size", "threads", "threshold"}
        study_kw = {k: overrides.pop(k) for k in list(overrides) if k in study_keys}
        sweep = overrides.pop("sweep", None)
        return cls(preset or "LR1", quick=quick, device=device, sweep=sweep,
                   **study_kw, **overrides, **kwargs)

    def swept_variables(self) -> list[str]:
        return list(self.sweep)

    def instances(self) -> list[tuple[ToyConfig, int]]:
        """(config, seed) of every instance: sweep combinations x replicates."""
        names = list(self.sweep)
        combos = list(itertools.product(*[self.sweep[n] for n in names])) or [()]
        out = []
        for combo in combos:
            for rep in range(self.seeds):
                cfg = ToyConfig(**{**self.fixed, **dict(zip(names, combo))})
                out.append((cfg, self.seed + rep))
        return out

    # ----------------------------------------------------------------- running
    def _threads_for(self, cfg: ToyConfig, n: int) -> int | None:
        if self.threads != "auto":
            return None if self.threads in (None, 0) else int(self.threads)
        if self.resolved_device().type != "cpu":
            return None
        # Small chunks on a CPU that other processes keep busy: one thread. Measured on
        # a shared 2-core machine: 2 threads were ~30x slower than 1 under load (threads
        # wait on each other), but ~1.9x faster than 1 when the machine was idle.
        busy = os.getloadavg()[0] > (os.cpu_count() or 1)
        return 1 if busy and step_bytes(cfg) * n < 32 * 2 ** 20 else None

    def _run(self, out: Path, resume: bool) -> None:
        device = self.resolved_device()
        insts = self.instances()
        new_plan = plan_chunks([c for c, _ in insts], device, self.chunk_size)
        store = self.open_store(out, resume, attrs={"toy_plan": json.dumps(new_plan)})
        try:
            # a resumed run keeps the plan it started with (the chunk is the resume unit)
            plan = json.loads(store.attrs.get("toy_plan") or json.dumps(new_plan))
            done = set(store.list_results())
            todo = [j for j in range(len(plan)) if _chunk_name(j) not in done]
            log.info("toy-models: %d instances in %d chunks, %d to train", len(insts),
                     len(plan), len(todo))
            bar = tqdm(total=len(insts), desc=f"toy-models {self.batch or 'custom'}",
                       unit="model", disable=not self.progress,
                       initial=sum(len(plan[j]) for j in range(len(plan)) if j not in todo))
            for j in todo:
                idx = plan[j]
                cfgs, seeds = [insts[i][0] for i in idx], [insts[i][1] for i in idx]
                t0 = time.perf_counter()
                with torch_threads(self._threads_for(cfgs[0], len(idx))):
                    res = train_toy_models(cfgs, seeds, device=device,
                                           progress=f"chunk {j + 1}/{len(plan)}"
                                           if self.progress else False)
                ds = self.chunk_dataset(res, idx, time.perf_counter() - t0)
                store.write_result(_chunk_name(j), ds, attrs={"chunk": j})
                bar.update(len(idx))
            bar.close()
            summary = self.summarize(store, plan)
            store.write_result("toy_models/summary", summary)
        finally:
            store.close()

    def chunk_dataset(self, res: TrainResult, index: Sequence[int], seconds: float
                      ) -> xr.Dataset:
        """One chunk's results as a Dataset over ``instance`` (see the module docstring)."""
        ck = monosemanticity(torch.from_numpy(res.checkpoint_activations), self.threshold)
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
        for field in _CONFIG_FIELDS:
            vals = [getattr(c, field) for c in res.configs]
            coords[field] = (inst, np.asarray(vals, dtype=str if isinstance(vals[0], str)
                                              else None))
        ds = xr.Dataset(data, coords=coords)
        ds["final_loss"].attrs["description"] = "mean of the last 8 logged losses (128 steps)"
        ds["features_covered"].attrs["description"] = (
            "distinct features with >= 1 monosemantic neuron (a polysdk metric, not the "
            "paper's)")
        ds.attrs.update(train_seconds=float(seconds), threshold=self.threshold,
                        swept=json.dumps(self.swept_variables()))
        return ds

    _SUMMARY_VARS = ("final_loss", "n_mono", "mono_per_feature", "mono_per_neuron",
                     "features_covered", "final_mean_bias")

    def summarize(self, store: Any, plan: Sequence[Sequence[int]]) -> xr.Dataset:
        """One row per instance (scalars and config coords), from the chunk results."""
        parts = []
        for j in range(len(plan)):
            ds = store.read_result(_chunk_name(j))
            keep = [v for v in self._SUMMARY_VARS if v in ds]
            parts.append(ds[keep].drop_vars([c for c in ds.coords if c not in
                                             ["instance", "seed", *_CONFIG_FIELDS]],
                                            errors="ignore"))
        summary = xr.concat(parts, dim="instance").sortby("instance")
        summary.attrs.update(study_config=json.dumps(jsonable(self.config())),
                             swept=json.dumps(self.swept_variables()))
        return summary

    def make_report(self, out: str | Path) -> Path:
        from polysdk.report import toy_models_report

        return toy_models_report(self, Path(out))


def _chunk_name(j: int) -> str:
    return f"toy_models/chunk_{j:03d}"
