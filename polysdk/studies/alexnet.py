"""The AlexNet-subnetworks study (seed 000): polysemantic channels found by clustering,
then one sparse subnetwork per meaning.

    from polysdk.studies.alexnet import AlexNetStudy
    AlexNetStudy(quick=True).run(out="runs/alexnet")             # embedded shapes set
    AlexNetStudy(quick=True, units=("features.10:12", "features.8:3")).run(out="runs/u")
    AlexNetStudy(root="~/imagenet/train", weights="IMAGENET1K_V1").run(out="runs/real")

    polysdk run alexnet-subnetworks --quick [--set units=features.10:12,features.8:3]
        [--set root=PATH --set weights=IMAGENET1K_V1]

Embedded default (no download): :mod:`polysdk.data.shapes` (shapes x textures x
colours on varied backgrounds, some classes merged concepts: ``merge``) and a narrow
AlexNet (:func:`polysdk.models.alexnet.small_alexnet`, torchvision's layer names:
``features.6/8/10`` are conv3/4/5) trained through :func:`polysdk.train.fit`. Real path:
``root`` (an ImageFolder) and torchvision ``alexnet(weights=weights)`` (``weights=none``:
random weights). ``weights=PATH.pt`` reuses a trained small model (``<out>/model.pt``).

Resume units (results in ``<out>/results.zarr``), each redone alone after a kill:

* ``alexnet/model``: train (checkpoints per epoch in ``<out>/checkpoints``) or load;
* ``alexnet/record``: every image shrunk into the receptive field of each layer's
  centre position on a mean-colour canvas, the pre-ReLU centre activation of every
  channel of ``layers`` recorded by ``Probe(reduce="centre")`` into
  ``<out>/activations/box<i>.zarr``, one pass per distinct box;
* ``alexnet/clusters/<layer>``: ``HDBSCANClusters`` (top ``top_k`` images per unit,
  the whole layer's centre vector, ``min_cluster_size``) and the ground truth;
* per candidate ``i`` (``units``, or the ``n_candidates`` with the most balanced two
  largest clusters): ``alexnet/cand<i>/a`` and ``/b`` (continuous sparsification,
  contrastive, labels as they are and swapped), ``/control`` (cluster A again, another
  seed) and ``/compare`` (ActGrad / SNIP / FORCE at the same kept count, the unit's
  activations through every circuit, AUCs, mask overlaps, the preservation ladder);
* then ``alexnet/summary``. The report is :mod:`polysdk.studies.alexnet_report`; it
  also maps the detector agreement atlas (:mod:`polysdk.atlas`) on the recorded centre
  activations of ``layers`` (``atlas=false`` leaves it out; ``atlas_pages``: neuron
  pages per layer), with the merged-class units as the truth.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from polysdk._util import seed_everything, torch_threads, threads_for
from polysdk.data.shapes import DEFAULT_LOOKS, DEFAULT_MERGE, class_groups, parse_look
from polysdk.errors import ConfigError
from polysdk.studies.base import Study, Unit

__all__ = ["AlexNetStudy", "AlexNetConfig", "PRESETS", "parse_units"]

log = logging.getLogger(__name__)

LADDER = (0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.001)
METHODS = ("actgrad", "snip", "force")
#: the smallest image the AlexNet topology takes (conv5 3 x 3 before the last 3/2 pool)
MIN_IMAGE = 63


def parse_units(items: Any) -> list[tuple[str, int]]:
    """``("features.10:12", ...)`` -> ``[("features.10", 12), ...]``.

    >>> parse_units(["features.10:12", "features.8:3"])
    [('features.10', 12), ('features.8', 3)]
    """
    out = []
    for item in items or ():
        text = str(item)
        layer, sep, idx = text.rpartition(":")
        try:
            unit = int(idx)
        except ValueError:
            unit = None
        if not sep or not layer or unit is None:
            raise ConfigError(f"units item {text!r} is not LAYER:UNIT (e.g. features.10:12).")
        out.append((layer, unit))
    return out


@dataclass(frozen=True)
class AlexNetConfig:
    """An AlexNet-subnetworks run (see the module docstring; sizes of the seed in the
    comments). ``top_k``/``min_cluster_size`` are the seed's 1000/50 of ImageNet scaled
    to the embedded set (k is about a class's worth of images)."""

    # data: the embedded shapes set, or an ImageFolder root (real path)
    root: str = ""
    weights: str = ""              # real path: AlexNet_Weights name or "none"; or a .pt file
    image_size: int = 64           # embedded images (the real path uses 224)
    n_per_class: int = 600
    n_test_per_class: int = 100
    looks: tuple[str, ...] = DEFAULT_LOOKS
    merge: tuple[str, ...] = DEFAULT_MERGE
    max_images: int = 0            # real path: a seeded subset of the folder (0: all)
    # the embedded model and its training (polysdk.train.fit, Adam)
    widths: tuple[int, ...] = (32, 64, 96, 64, 64)
    hidden: int = 256
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    # detection
    layers: tuple[str, ...] = ("features.6", "features.8", "features.10")
    top_k: int = 400               # seed: 1000 of ImageNet's 1.28M
    min_cluster_size: int = 20     # seed: 50
    # subnetworks (methods.md: lr 0.1, x0.1 at 130 and 150 of 160, batch 32, lam 1e-6)
    units: tuple[str, ...] = ()    # "features.10:12"; empty: automatic candidates
    n_candidates: int = 2
    cs_epochs: int = 160
    cs_lr: float = 0.1
    cs_batch_size: int = 32
    lam: float = 1e-6
    milestones: tuple[int, ...] = (130, 150)
    temperature_end: float = 200.0
    holdout: float = 0.2
    control: bool = True
    methods: tuple[str, ...] = METHODS
    ladder: tuple[float, ...] = LADDER
    ladder_images: int = 128
    seed: int = 0
    threads: int | str | None = "auto"
    trace: str = ""                # runtime: a file each unit's start is appended to
    # report only (they change no result): the detector agreement atlas on the recorded
    # centre activations, and its neuron pages per layer (the most disputed units)
    atlas: bool = True
    atlas_pages: int = 10

    def __post_init__(self) -> None:
        def setter(k: str, v: Any) -> None:
            object.__setattr__(self, k, v)

        for name in ("looks", "merge", "layers", "units", "methods"):
            setter(name, tuple(str(v) for v in getattr(self, name)))
        setter("widths", tuple(int(w) for w in self.widths))
        setter("milestones", tuple(int(m) for m in self.milestones))
        setter("ladder", tuple(float(d) for d in self.ladder))
        if not self.root:
            for look in self.looks:
                parse_look(look)
            class_groups(len(self.looks), self.merge)
            if int(self.image_size) < MIN_IMAGE:
                raise ConfigError(
                    f"image_size={self.image_size} is too small for the AlexNet topology: "
                    f"the last pool needs conv5 maps of 3 x 3, i.e. images of >= "
                    f"{MIN_IMAGE} px.")
        parse_units(self.units)
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"methods={list(self.methods)}: unknown {bad}; use {METHODS}.")
        if not all(0 < d <= 1 for d in self.ladder):
            raise ConfigError(f"ladder={list(self.ladder)}: densities must be in (0, 1].")
        if int(self.min_cluster_size) < 2:
            raise ConfigError(f"min_cluster_size={self.min_cluster_size} must be >= 2.")
        if int(self.top_k) < 2 * int(self.min_cluster_size):
            raise ConfigError(
                f"top_k={self.top_k} images cannot hold two clusters of min_cluster_size="
                f"{self.min_cluster_size}; raise top_k to >= {2 * self.min_cluster_size} or "
                "lower min_cluster_size.")
        n = self.n_images()
        if n is not None and n < self.top_k:
            raise ConfigError(
                f"too few images for top_k={self.top_k} (min_cluster_size="
                f"{self.min_cluster_size}): the embedded set has {n} "
                f"({self.n_per_class} per class x {n // self.n_per_class} classes); raise "
                "n_per_class or lower top_k and min_cluster_size.")
        if not 0 <= float(self.holdout) < 0.9:
            raise ConfigError(f"holdout={self.holdout} must be in [0, 0.9).")
        if int(self.n_candidates) < 0 or int(self.cs_epochs) < 1:
            raise ConfigError("need n_candidates >= 0 and cs_epochs >= 1.")
        if int(self.atlas_pages) < 0:
            raise ConfigError(f"atlas_pages={self.atlas_pages} must be >= 0.")

    def n_images(self) -> int | None:
        """Images of the embedded set (None on the real path)."""
        if self.root:
            return None
        return int(self.n_per_class) * len(class_groups(len(self.looks), self.merge))

    def quick(self) -> AlexNetConfig:
        """The CPU scale: 400 images per class, 6 epochs, top 200, clusters >= 15, 40
        mask epochs (milestones at the same fractions), a shorter ladder."""
        e = 40
        return dataclasses.replace(
            self, n_per_class=400, n_test_per_class=60, epochs=6, top_k=200,
            min_cluster_size=15, cs_epochs=e, milestones=(int(e * 130 / 160), int(e * 150 / 160)),
            ladder=(0.9, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.001), ladder_images=96)


#: ``full``: sized for a GPU (the seed's top 1000 / min 50 and 160 mask epochs)
PRESETS: dict[str, AlexNetConfig] = {
    "default": AlexNetConfig(),
    "full": AlexNetConfig(n_per_class=2500, epochs=15, top_k=1000, min_cluster_size=50,
                          n_candidates=6, ladder_images=256),
}


def _name(*parts: Any) -> str:
    return "alexnet/" + "/".join(str(p) for p in parts)


class AlexNetStudy(Study[AlexNetConfig]):
    """Polysemantic AlexNet channels by clustering, one subnetwork per cluster (seed
    000); see the module docstring.

    Examples
    --------
    >>> study = AlexNetStudy(quick=True, units=("features.10:3",), control=False)
    >>> [u.name for u in study.units()][-3:]
    ['alexnet/cand0/a', 'alexnet/cand0/b', 'alexnet/cand0/compare']
    """

    name = "alexnet-subnetworks"
    description = ("AlexNet subnetworks (seed 000): polysemantic channels by HDBSCAN, "
                   "one continuous-sparsification subnetwork per cluster")
    Config = AlexNetConfig
    presets = PRESETS
    default_preset = "default"
    runtime_fields = ("threads", "trace", "atlas", "atlas_pages")

    def __init__(self, config: AlexNetConfig | str | None = "default", **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._cache: dict[str, Any] = {}
        self._out: Path | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_cache"] = {}
        return state

    # ----------------------------------------------------------------- model skeleton
    @property
    def real(self) -> bool:
        return bool(self.config.root)

    def new_model(self) -> Any:
        """The model with fresh (or torchvision's) weights, in eval mode."""
        from polysdk.models.alexnet import small_alexnet, torchvision_alexnet

        cfg = self.config
        if self.real:
            if cfg.weights.endswith(".pt"):
                raise ConfigError("with root= the model is torchvision's AlexNet: weights= is "
                                  "an AlexNet_Weights name (IMAGENET1K_V1) or 'none'.")
            return torchvision_alexnet(cfg.weights or None).eval()
        n_classes = len(class_groups(len(cfg.looks), cfg.merge))
        return small_alexnet(n_classes, cfg.widths, cfg.hidden).eval()

    def check_units(self, model: Any = None) -> list[tuple[str, int]]:
        """The explicit ``units``, checked (a conv layer among ``layers``, an index in
        range)."""
        from polysdk.models.alexnet import check_unit

        model = model if model is not None else self._skeleton()
        cfg = self.config
        for layer in cfg.layers:
            check_unit(model, layer, 0)
        chosen = parse_units(cfg.units)
        for layer, unit in chosen:
            check_unit(model, layer, unit)
            if layer not in cfg.layers:
                raise ConfigError(f"unit {layer}:{unit} is in a layer that is not clustered; "
                                  f"add it to layers (now {list(cfg.layers)}).")
        return chosen

    def _skeleton(self) -> Any:
        if "skeleton" not in self._cache:
            if self.real:
                from torchvision.models import alexnet

                self._cache["skeleton"] = alexnet(weights=None)
            else:
                self._cache["skeleton"] = self.new_model()
        return self._cache["skeleton"]

    # ----------------------------------------------------------------- units
    def n_slots(self) -> int:
        return len(self.config.units) if self.config.units else int(self.config.n_candidates)

    def units(self) -> list[Unit]:
        """model, record, one clustering per layer, then per candidate a, b, control,
        compare (see the module docstring)."""
        cfg = self.config
        if self.real:
            from polysdk.studies.alexnet_pipeline import check_image_folder

            check_image_folder(cfg.root)
        self.check_units()
        out = [Unit(_name("model"), "model"), Unit(_name("record"), "record")]
        out += [Unit(_name("clusters", layer), {"stage": "clusters", "layer": layer})
                for layer in cfg.layers]
        for i in range(self.n_slots()):
            sides = ["a", "b"] + (["control"] if cfg.control else []) + ["compare"]
            out += [Unit(_name(f"cand{i}", s), {"stage": s, "slot": i}) for s in sides]
        return out

    # ----------------------------------------------------------------- running
    def run(self, out: str | Path | None = None, **kwargs: Any) -> Path:
        self._out = Path(out) if out is not None else self.default_out()
        return super().run(self._out, **kwargs)

    def results(self, out: str | Path) -> dict[str, Any]:
        """Every stored unit's Dataset (and ``out`` becomes where :meth:`need` reads)."""
        if self._out is None:
            self._out = Path(out)
        return super().results(out)

    def execute_unit(self, unit: Unit) -> Any:
        if self.config.trace:
            with open(self.config.trace, "a") as f:
                f.write(f"start {unit.name} pid {os.getpid()}\n")
        t0 = time.perf_counter()
        with torch_threads(self._threads()):
            ds = super().execute_unit(unit)
        ds.attrs["seconds"] = float(time.perf_counter() - t0)
        self._cache[unit.name] = ds
        return ds

    def _threads(self) -> int | None:
        return threads_for(self.config.threads, self.resolved_device())

    def _store_path(self) -> Path:
        if self._out is None:
            raise ConfigError("this study's units read earlier results; run it with "
                              "study.run(out=...).")
        return self.paths(self._out)["store"]

    def need(self, name: str) -> xr.Dataset:
        """An earlier unit's result: from this process, the run's store, or computed
        now (deterministic: the same as when the loop runs it)."""
        if name in self._cache:
            return self._cache[name]
        from polysdk.store import ActivationStore

        path = self._store_path()
        if (path / "zarr.json").exists():
            store = ActivationStore(path, mode="r")
            if name in store.list_results():
                ds = store.read_result(name)
                self._cache[name] = ds
                return ds
        units = {u.name: u for u in self._seeded_units()}
        if name not in units:
            raise ConfigError(f"no unit {name!r} in this study.")
        return self.execute_unit(units[name])

    def _seeded_units(self) -> list[Unit]:
        from polysdk.studies.base import _unit_seed

        return [dataclasses.replace(u, seed=_unit_seed(self.seed, i))
                for i, u in enumerate(self.units())]

    def run_unit(self, unit: Unit) -> Any:
        spec = unit.spec
        stage = spec if isinstance(spec, str) else spec["stage"]
        if stage == "model":
            return self._unit_model(unit)
        if stage == "record":
            return self._unit_record(unit)
        if stage == "clusters":
            return self._unit_clusters(unit, spec["layer"])
        if stage in ("a", "b", "control"):
            return self._unit_subnetwork(unit, int(spec["slot"]), stage)
        return self._unit_compare(unit, int(spec["slot"]))

    # ----------------------------------------------------------------- shared state
    def data(self) -> Any:
        """The images (built once per process)."""
        if "data" not in self._cache:
            from polysdk.studies import alexnet_pipeline as P

            cfg = self.config
            if self.real:
                self._cache["data"] = P.folder_data(cfg.root, cfg.max_images, cfg.seed)
            else:
                self._cache["data"] = P.embedded_data(
                    cfg.n_per_class, cfg.n_test_per_class, cfg.image_size, cfg.looks,
                    cfg.merge, cfg.seed)
            n = len(self._cache["data"])
            if n < cfg.top_k:
                raise ConfigError(
                    f"too few images for top_k={cfg.top_k} (min_cluster_size="
                    f"{cfg.min_cluster_size}): {n} images; add images, or lower top_k "
                    "and min_cluster_size.")
        return self._cache["data"]

    def model(self) -> Any:
        """The trained (or loaded) model, eval mode, weights frozen by the maskers."""
        if "model_obj" not in self._cache:
            from polysdk.studies import alexnet_pipeline as P

            ds = self.need(_name("model"))
            model = self.new_model()
            if "weights" in ds:
                P.load_flat_weights(model, ds["weights"].values, json.loads(ds.attrs["spec"]))
            self._cache["model_obj"] = model.to(self.resolved_device()).eval()
        return self._cache["model_obj"]

    def clusters(self, layer: str) -> xr.Dataset:
        return self.need(_name("clusters", layer))

    def candidates(self) -> list[tuple[str, int]]:
        """The units that get subnetworks: ``units`` (each checked to have two
        clusters), else the ``n_candidates`` candidates whose two largest clusters are
        the most balanced (ties: later layer, lower index) among the live ones (the
        unit's pre-ReLU centre value is positive on all its top images: a unit that
        never fires has no meaning to split; all candidates when none is live); no
        ground truth is used."""
        cfg = self.config
        if cfg.units:
            chosen = self.check_units(self.model())
            for layer, unit in chosen:
                ds = self.clusters(layer)
                n = int(ds["n_clusters"].values[unit])
                if n < 2:
                    poly = np.flatnonzero(ds["n_clusters"].values >= 2)
                    best = sorted(poly, key=lambda u: -_balance(ds, u))[:8]
                    hint = (f"candidates in {layer} (>= 2 clusters, most balanced first): "
                            f"{', '.join(map(str, best))}" if len(best) else
                            f"{layer} has no unit with two clusters; try another layer or a "
                            "smaller min_cluster_size")
                    raise ConfigError(
                        f"unit {layer}:{unit} has {n} cluster(s) among its top {cfg.top_k} "
                        f"images (min_cluster_size={cfg.min_cluster_size}), so it has no two "
                        f"meanings to give subnetworks; {hint}. Changing units makes a new "
                        "run: use another --out (or --fresh), and --set weights=<out>/model.pt "
                        "to reuse the trained model.")
            return chosen
        rows = []
        for live_only in (True, False):
            for li, layer in enumerate(cfg.layers):
                ds = self.clusters(layer)
                live = ds["top_activation"].values[:, -1] > 0
                for u in np.flatnonzero(ds["n_clusters"].values >= 2):
                    if live[u] or not live_only:
                        rows.append((-_balance(ds, int(u)), -li, int(u), layer))
            if rows:
                break
        rows.sort()
        return [(layer, u) for _, _, u, layer in rows[: int(cfg.n_candidates)]]

    def candidate(self, slot: int) -> tuple[str, int] | None:
        key = "candidates"
        if key not in self._cache:
            self._cache[key] = self.candidates()
        cands = self._cache[key]
        return cands[slot] if slot < len(cands) else None

    def split(self, slot: int) -> dict[str, np.ndarray]:
        from polysdk.studies import alexnet_pipeline as P

        layer, unit = self.candidate(slot)  # type: ignore[misc]
        return P.split_clusters(self.clusters(layer), unit, self.config.holdout,
                                self.config.seed + slot)

    # ----------------------------------------------------------------- stages
    def _unit_model(self, unit: Unit) -> xr.Dataset:
        import torch

        from polysdk.studies import alexnet_pipeline as P

        cfg = self.config
        model = self.new_model()
        attrs: dict[str, Any] = {"source": "torchvision" if self.real else "trained"}
        data_vars: dict[str, Any] = {}
        if self.real:
            attrs["weights"] = cfg.weights or "none"
        elif cfg.weights:
            state = torch.load(cfg.weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            attrs.update(source="loaded", weights=cfg.weights)
        else:
            data = self.data()
            seed_everything(unit.seed)
            res = P.train_model(model, data, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                lr=cfg.lr, checkpoint_dir=self._out / "checkpoints" / "model"
                                if self._out else None, progress=self.progress)
            hist = res["history"]
            data_vars["loss"] = ("epoch", np.array([h["loss"] for h in hist]))
            if hist and "test_accuracy" in hist[0]:
                data_vars["epoch_test_accuracy"] = ("epoch", np.array(
                    [h["test_accuracy"] for h in hist]))
            if "class_accuracy" in res:
                data_vars["class_accuracy"] = ("class", np.array(res["class_accuracy"]))
            attrs.update(test_accuracy=res.get("test_accuracy", float("nan")),
                         train_accuracy=res["train_accuracy"], train_seconds=res["seconds"],
                         resumed_from_epoch=res["start_epoch"])
        if not self.real:
            flat, spec = P.flat_weights(model)
            data_vars["weights"] = ("flat", flat)
            attrs["spec"] = json.dumps(spec)
            if self._out is not None:
                tmp = self._out / "model.pt.tmp"
                torch.save(model.state_dict(), tmp)
                os.replace(tmp, self._out / "model.pt")
        from polysdk.models.alexnet import describe_model

        info = describe_model(model)
        attrs.update(parameters=info["parameters"], convs=json.dumps(info["convs"]))
        self._cache["model_obj"] = model.to(self.resolved_device()).eval()
        return xr.Dataset(data_vars, attrs=attrs)

    def _unit_record(self, unit: Unit) -> xr.Dataset:
        from polysdk.studies import alexnet_pipeline as P

        model, data = self.model(), self.data()
        folder = (self._out or Path(".")) / "activations"
        groups = P.record_centres(model, data, self.config.layers, folder,
                                  progress=self.progress)
        return xr.Dataset({"label": ("sample", data.labels)},
                          attrs={"groups": json.dumps(groups), "n_images": len(data)})

    def _unit_clusters(self, unit: Unit, layer: str) -> xr.Dataset:
        from polysdk.studies import alexnet_pipeline as P

        cfg = self.config
        groups = json.loads(self.need(_name("record")).attrs["groups"])
        acts = P.open_centres(groups, layer)
        t0 = time.perf_counter()
        ds = P.cluster_layer(acts, self.data(), cfg.top_k, cfg.min_cluster_size)
        ds.attrs.update(layer=layer, cluster_seconds=time.perf_counter() - t0)
        return ds

    def _unit_subnetwork(self, unit: Unit, slot: int, side: str) -> xr.Dataset:
        import torch

        from polysdk.studies import alexnet_pipeline as P

        cand = self.candidate(slot)
        if cand is None:
            return _empty(slot)
        layer, u = cand
        cfg = self.config
        sp = self.split(slot)
        data, model = self.data(), self.model()
        idx = np.concatenate([sp["a_train"], sp["b_train"]])
        y = np.concatenate([np.ones(len(sp["a_train"])), np.zeros(len(sp["b_train"]))])
        seed_everything(unit.seed)
        cs = P.fit_subnetwork(model, layer, u, data.x[torch.as_tensor(idx)], y,
                              swap=side == "b", seed=cfg.seed + slot + (1 if side == "control"
                                                                        else 0),
                              epochs=cfg.cs_epochs, lr=cfg.cs_lr,
                              batch_size=cfg.cs_batch_size, lam=cfg.lam,
                              milestones=cfg.milestones, temperature_end=cfg.temperature_end,
                              progress=self.progress)
        ds = cs.result_.copy()
        for key in ("objective", "density", "temperature", "seconds"):
            ds[f"history_{key}"] = ("cs_epoch", np.array([h[key] for h in cs.history_]))
        w = P.weight_masks(cs.masks_)
        kept = int(sum(int(m.sum()) for m in w.values()))
        size = int(sum(m.numel() for m in w.values()))
        ds.attrs.update(layer=layer, unit=int(u), side=side, slot=slot, kept_weights=kept,
                        n_weights=size, weight_density=kept / size,
                        n_train=len(idx), unused=json.dumps(list(cs.unused_)))
        return ds

    def _unit_compare(self, unit: Unit, slot: int) -> xr.Dataset:
        from polysdk.studies.alexnet_compare import compare_candidate

        cand = self.candidate(slot)
        if cand is None:
            return _empty(slot)
        subs = {s: self.need(_name(f"cand{slot}", s))
                for s in (["a", "b"] + (["control"] if self.config.control else []))}
        seed_everything(unit.seed)
        return compare_candidate(self, slot, cand, subs)

    # ----------------------------------------------------------------- end
    def finish(self, store: Any, units: Any) -> None:
        from polysdk.studies.alexnet_report import summarize

        store.write_result(_name("summary"), summarize(self, store))

    def make_report(self, out: str | Path) -> Path:
        from polysdk.studies.alexnet_report import make_report

        return make_report(self, Path(out))


def _balance(ds: xr.Dataset, unit: int) -> float:
    """Size of the second-largest cluster over top_k (0 without two clusters)."""
    lab = ds["cluster"].values[unit]
    counts = np.sort(np.bincount(lab[lab >= 0])) if (lab >= 0).any() else np.zeros(1)
    return float(counts[-2]) / len(lab) if len(counts) >= 2 else 0.0


def _empty(slot: int) -> xr.Dataset:
    return xr.Dataset({"empty": ((), True)},
                      attrs={"slot": slot, "note": "no candidate for this slot (fewer units "
                             "with two clusters than n_candidates)"})
