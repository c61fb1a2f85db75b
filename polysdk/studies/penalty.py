"""The polysemanticity-penalty study (seed 001): penalise or encourage polysemantic neurons.

    from polysdk.studies.penalty import PenaltyStudy
    PenaltyStudy("soft", quick=True).run(out="runs/penalty")          # digits, no download
    PenaltyStudy("hard", dataset="mnist", root="~/data").run("runs/penalty-mnist-hard")
    # polysdk run penalty --preset soft|hard|both [--quick] [--set dataset=mnist --set root=PATH]

An MLP (``n_in -> 256 x 4 -> 10``, ReLU; :class:`~polysdk.models.mlp.MLP`) is trained
with Adam (lr 1e-3, batch 128) on cross-entropy + ``alpha`` x
:class:`~polysdk.regularize.PolysemanticityPenalty` over the four hidden ReLU outputs,
for each ``alpha`` (0 control, 1 penalise, -1 encourage) and ``trials`` replicates
(each one resume unit). ``modes``: the seed's ``soft`` penalty, its proposed ``hard``
(binarised) one, or both in one run (alpha 0 is trained once: the penalty is then 0).
Trial ``t`` starts from the same initial weights and sees the same batches for every
alpha and mode (paired; the original drew each run afresh).

Per trial, on the test set: top-1 accuracy and the seed's element-wise accuracy (Keras
``binary_accuracy`` over the 10 softmax outputs; a network that always predicts one class
scores 0.82 on it); per hidden layer, the class x neuron firing frequency (fires when
``> threshold`` = 0), polysemantic neurons by
:class:`~polysdk.detect.ClassSelectivity` (fires for >= 2 classes), neurons firing for
all classes, dead neurons, and the mean firing rate of each neuron on its non-preferred
classes; clusterability (:class:`~polysdk.detect.Clusterability`: n-cut, Z, left p of
the |W| graph with the input pixels, k = 12, ``n_shuffles`` within-layer shuffles).

Epochs: 20 on MNIST / Fashion-MNIST (the original). On digits 100: the control (alpha 0)
converges by about 50 epochs (train cross-entropy ~1e-3, test top-1 flat at 0.97 from
epoch 50 to 200, 600 steps), and the penalised network needs about 100 (its
cross-entropy is still 0.19 at epoch 50 and 0.006 at 100); 100 epochs (1200 steps)
compares converged networks, not a slower-converging one. ``quick()``: 3 trials per
alpha and 20 shuffles (MNIST: also 10,000 training images and 5 epochs).

Results: ``penalty/<group>/trial_<t>`` per unit (``group`` = ``alpha_0`` or
``soft_alpha_+1`` ...; each holds its trained ``weights``), then ``penalty/summary`` (one
row per trial) in ``<out>/results.zarr``; report :mod:`polysdk.studies.penalty_report`.

For the detector agreement atlas (:mod:`polysdk.atlas`), ``finish`` also records, through
:class:`~polysdk.Probe` into the same store, the test-set activations of every hidden
layer of one representative network per group (trial :data:`ATLAS_TRIAL`, rebuilt from
its stored weights), with the labels: site ``<group>.<layer>`` (``alpha_0.relu1``,
``soft_alpha_+1.relu4``; :func:`atlas_site`). One trial per group keeps it cheap (the
test set once per group: 360 x 1024 floats on digits); the report fits the atlas on
those sites (``add_atlas``). The recording is resumed like the units: a run that is cut
while recording re-records only what was not committed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polysdk.errors import ConfigError
from polysdk.studies.base import Study, Unit

__all__ = ["PenaltyStudy", "PenaltyConfig", "PRESETS", "DEFAULT_EPOCHS", "group_name",
           "atlas_site", "ATLAS_TRIAL"]

log = logging.getLogger(__name__)

#: epochs when ``epochs`` is None (see the module docstring for digits' 100)
DEFAULT_EPOCHS = {"digits": 100, "mnist": 20, "fashion_mnist": 20}
#: the trial of each group whose test-set activations are recorded for the atlas
ATLAS_TRIAL = 1


def group_name(alpha: float, mode: str) -> str:
    """``alpha_0`` for the control, else ``<mode>_alpha_<+g>`` (``soft_alpha_+1``)."""
    return "alpha_0" if alpha == 0 else f"{mode}_alpha_{alpha:+g}"


def atlas_site(group: str, layer: str) -> str:
    """The store site of ``layer``'s test-set activations in ``group``'s atlas network
    (a store site name has no '/'): ``atlas_site("soft_alpha_+1", "relu1")`` is
    ``'soft_alpha_+1.relu1'``."""
    return f"{group}.{layer}"


@dataclass(frozen=True)
class PenaltyConfig:
    """A penalty run (see the module docstring). ``epochs`` None: per dataset
    (:data:`DEFAULT_EPOCHS`); ``train_samples``: use only the first n training images
    (None: all); ``layers``: the MLP sites penalised and analysed; ``jobs``: threads for
    the clusterability shuffles (None: one per core; does not change results);
    ``atlas``: map the detector agreement atlas in the report (the recording for it is
    always made: it is cheap) and ``atlas_pages``: neuron pages per site on its page
    (both report-only: they do not change results).

    >>> PenaltyConfig().quick().trials, PenaltyConfig(dataset="mnist").resolved_epochs()
    (3, 20)
    """

    dataset: str = "digits"
    root: str | None = None
    modes: list[str] = field(default_factory=lambda: ["soft"])
    alphas: list[float] = field(default_factory=lambda: [0.0, 1.0, -1.0])
    trials: int = 5
    epochs: int | None = None
    batch_size: int = 128
    learning_rate: float = 1e-3
    hidden: list[int] = field(default_factory=lambda: [256, 256, 256, 256])
    layers: list[str] = field(default_factory=lambda: ["relu1", "relu2", "relu3", "relu4"])
    threshold: float = 0.0
    n_clusters: int = 12
    n_shuffles: int = 50
    n_init: int = 25
    train_samples: int | None = None
    seed: int = 0
    jobs: int | None = None
    atlas: bool = True
    atlas_pages: int = 10

    def __post_init__(self) -> None:
        from polysdk.data.digits import check_dataset

        object.__setattr__(self, "dataset", check_dataset(self.dataset))
        alphas = []
        for a in (self.alphas if isinstance(self.alphas, (list, tuple)) else [self.alphas]):
            try:
                v = float(a)
            except (TypeError, ValueError):
                raise ConfigError(f"alpha {a!r} is not a number; give alphas as numbers, "
                                  "e.g. alphas=0,1,-1.") from None
            if not math.isfinite(v):
                raise ConfigError(f"alpha {a!r} is not a finite number.")
            alphas.append(v)
        if not alphas or len(set(alphas)) != len(alphas):
            raise ConfigError(f"alphas={self.alphas!r} must be distinct numbers (at least one).")
        object.__setattr__(self, "alphas", alphas)
        modes = list(self.modes) if isinstance(self.modes, (list, tuple)) else [self.modes]
        for m in modes:
            if m not in ("soft", "hard"):
                raise ConfigError(f"mode {m!r} must be 'soft' or 'hard'.")
        if not modes or len(set(modes)) != len(modes):
            raise ConfigError(f"modes={self.modes!r} must be 'soft', 'hard' or both.")
        object.__setattr__(self, "modes", modes)
        for name, lo in (("trials", 1), ("batch_size", 2), ("n_clusters", 2),
                         ("n_shuffles", 0), ("n_init", 1), ("atlas_pages", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < lo:
                raise ConfigError(f"{name}={v!r} must be an integer >= {lo}.")
        if self.epochs is not None and (int(self.epochs) != self.epochs or self.epochs < 0):
            raise ConfigError(f"epochs={self.epochs!r} must be an integer >= 0 or None.")
        if self.train_samples is not None and self.train_samples < 2:
            raise ConfigError(f"train_samples={self.train_samples!r} must be >= 2 or None.")
        if not self.layers:
            raise ConfigError("layers must name at least one MLP site, e.g. relu1.")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate={self.learning_rate!r} must be > 0.")

    def resolved_epochs(self) -> int:
        return int(DEFAULT_EPOCHS[self.dataset] if self.epochs is None else self.epochs)

    def quick(self) -> PenaltyConfig:
        """3 trials per alpha, 20 shuffles; MNIST / Fashion-MNIST also 10,000 training
        images and 5 epochs (digits keeps its epochs: the control must converge)."""
        extra: dict[str, Any] = {}
        if self.dataset != "digits":
            extra = {"train_samples": self.train_samples or 10000,
                     "epochs": self.epochs if self.epochs is not None else 5}
        return dataclasses.replace(self, trials=min(self.trials, 3),
                                   n_shuffles=min(self.n_shuffles, 20), **extra)

    def groups(self) -> list[tuple[float, str]]:
        """(alpha, mode) of every trained group; alpha 0 once (the penalty is 0 there)."""
        out = []
        for a in self.alphas:
            if a == 0:
                out.append((0.0, self.modes[0]))
            else:
                out += [(a, m) for m in self.modes]
        return out


PRESETS: dict[str, PenaltyConfig] = {
    "soft": PenaltyConfig(modes=["soft"]),
    "hard": PenaltyConfig(modes=["hard"]),
    "both": PenaltyConfig(modes=["soft", "hard"]),
}


def trial_seed(seed: int, trial: int) -> int:
    """The seed of trial ``trial`` (initial weights, batch order, clustering): shared by
    every alpha and mode, so the groups are paired."""
    return int(np.random.SeedSequence([int(seed), 1001, int(trial)]).generate_state(1)[0])


class PenaltyStudy(Study[PenaltyConfig]):
    """Seed 001's polysemanticity penalty (module docstring).

    Examples
    --------
    >>> s = PenaltyStudy("both", quick=True)
    >>> [u.name for u in s.units()][:2], len(s.units())
    (['penalty/alpha_0/trial_1', 'penalty/alpha_0/trial_2'], 15)
    """

    name = "penalty"
    description = "polysemanticity penalty (seed 001): MLP firing and clusterability"
    Config = PenaltyConfig
    presets = PRESETS
    default_preset = "soft"
    runtime_fields = ("jobs", "atlas", "atlas_pages")

    def __init__(self, config: PenaltyConfig | str | None = "soft", **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._data: Any = None
        self.check_layers()

    # ----------------------------------------------------------------- inputs
    def data(self) -> Any:
        """The dataset (loaded once; training images cut to ``train_samples``)."""
        if self._data is None:
            from polysdk.data.digits import load_images

            d = load_images(self.config.dataset, self.config.root)
            n = self.config.train_samples
            if n is not None:
                d = dataclasses.replace(d, x_train=d.x_train[:n], y_train=d.y_train[:n])
            self._data = d
        return self._data

    def build_model(self, n_in: int | None = None) -> Any:
        from polysdk.models.mlp import MLP

        if n_in is None:
            n_in = 64 if self.config.dataset == "digits" else 784
        return MLP(n_in, self.config.hidden, 10)

    def check_layers(self) -> None:
        """A layer name the MLP lacks raises ConfigError naming the MLP's sites."""
        net = self.build_model()
        names = [n for n, _ in net.named_children()]
        bad = [s for s in self.config.layers if s not in names]
        if bad:
            from polysdk.errors import closest_names

            hint = "; ".join(f"{b!r}: closest {closest_names(b, names, n=2)}" for b in bad)
            raise ConfigError(f"the MLP has no layer {', '.join(map(repr, bad))} ({hint}). "
                              f"Its layers: {', '.join(names)}.")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_data"] = None
        return state

    # ----------------------------------------------------------------- units
    def units(self) -> list[Unit]:
        return [Unit(f"penalty/{group_name(a, m)}/trial_{t}",
                     {"alpha": a, "mode": m, "trial": t})
                for a, m in self.config.groups() for t in range(1, self.config.trials + 1)]

    def run_unit(self, unit: Unit) -> Any:
        from polysdk.studies.penalty_trial import run_trial

        return run_trial(self, float(unit.spec["alpha"]), str(unit.spec["mode"]),
                         int(unit.spec["trial"]), progress=unit.name if self.progress
                         else False)

    def finish(self, store: Any, units: Sequence[Unit]) -> None:
        store.write_result("penalty/summary", self.summarize(store, units))
        self.record_atlas_sites(store, units)

    # ----------------------------------------------------------------- atlas
    def atlas_units(self, units: Sequence[Unit]) -> dict[str, Unit]:
        """{group: its representative unit} (trial :data:`ATLAS_TRIAL`), in unit order."""
        out: dict[str, Unit] = {}
        for u in units:
            if int(u.spec["trial"]) == ATLAS_TRIAL:
                out.setdefault(group_name(float(u.spec["alpha"]), str(u.spec["mode"])), u)
        return out

    def atlas_sites(self, groups: Sequence[str]) -> list[str]:
        """Every recorded site of ``groups``: group by group, layer by layer."""
        return [atlas_site(g, layer) for g in groups for layer in self.config.layers]

    def trained_model(self, ds: Any) -> Any:
        """The network of a stored trial (its ``weights``), on the CPU, in eval mode."""
        import torch

        if "weights" not in ds:
            raise ConfigError("this trial's result has no 'weights' (a run stored before the "
                              "penalty study kept them); re-run it with --fresh to record it.")
        model = self.build_model(int(ds.attrs.get("n_features", 0)) or None)
        vec = torch.as_tensor(np.asarray(ds["weights"].values, dtype=np.float32))
        n = sum(p.numel() for p in model.parameters())
        if vec.numel() != n:
            raise ConfigError(f"the stored weights have {vec.numel()} values but the MLP "
                              f"{self.config.hidden} has {n} parameters.")
        torch.nn.utils.vector_to_parameters(vec, model.parameters())
        return model.eval()

    def record_atlas_sites(self, store: Any, units: Sequence[Unit]) -> list[str]:
        """Record the test-set activations of each group's representative network at
        every hidden layer (sites :func:`atlas_site`, with ``label``) through
        :class:`~polysdk.Probe`; returns the sites. A store that holds them all is left
        as it is; one cut while recording is resumed (Probe checks each committed
        batch's fingerprint). Groups stored without weights (older runs) are skipped."""
        import torch

        from polysdk.probe import Probe

        chosen = {}
        for g, u in self.atlas_units(units).items():
            ds = store.read_result(u.name)
            if "weights" in ds:
                chosen[g] = ds
            else:
                log.warning("penalty: %s has no stored weights; its group is left out of "
                            "the atlas", u.name)
        sites = self.atlas_sites(list(chosen))
        if not sites:
            return []
        data = self.data()
        n = int(data.x_test.shape[0])
        have = list(store.sites)
        if have and set(have) != set(sites):
            log.warning("penalty: the store's sites %s are not the atlas sites %s; left "
                        "as they are", have, sites)
            return [s for s in have if s in sites]
        if have and store.n_samples >= n:
            return sites
        class SideBySide(torch.nn.ModuleDict):   # the groups' networks on the same inputs
            def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
                return [net(x) for net in self.values()]

        nets = SideBySide({g: self.trained_model(ds) for g, ds in chosen.items()})
        step = 512
        batches = [(data.x_test[s:s + step], data.y_test[s:s + step])
                   for s in range(0, n, step)]
        Probe(nets, sites, store=store).run(batches, progress=False)
        return sites

    _SCALARS = ("top1_accuracy", "elementwise_accuracy", "test_loss", "final_train_loss",
                "n_cut", "z_score", "left_p_value", "train_seconds", "cluster_seconds")
    _PER_LAYER = ("frac_polysemantic", "frac_all_classes", "frac_dead", "other_class_rate",
                  "mean_classes")

    def summarize(self, store: Any, units: Sequence[Unit]) -> Any:
        """One row per trial: scalars, and per-layer means over the hidden layers."""
        import xarray as xr

        rows: dict[str, list[Any]] = {k: [] for k in ("alpha", "mode", "group", "trial",
                                                       *self._SCALARS, *self._PER_LAYER)}
        for u in units:
            ds = store.read_result(u.name)
            rows["alpha"].append(float(u.spec["alpha"]))
            rows["mode"].append("none" if u.spec["alpha"] == 0 else str(u.spec["mode"]))
            rows["group"].append(group_name(float(u.spec["alpha"]), str(u.spec["mode"])))
            rows["trial"].append(int(u.spec["trial"]))
            for k in self._SCALARS:
                rows[k].append(float(ds[k]))
            for k in self._PER_LAYER:
                rows[k].append(float(ds[k].mean()))
        data = {k: ("run", np.asarray(v)) for k, v in rows.items()}
        out = xr.Dataset(data, coords={"run": [u.name for u in units]})
        out.attrs["study_record"] = json.dumps(self.record())
        return out

    def make_report(self, out: str | Path) -> Path:
        from polysdk.studies.penalty_report import make_report

        return make_report(self, Path(out))
