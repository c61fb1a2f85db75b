"""The pruning-and-relearning study (seed 004; Lo, Cohen & Barez 2024, "Large Language
Models Relearn Removed Concepts"): prune a concept's neurons, retrain, watch where the
concept goes.

    from polysdk.studies.relearning import RelearningStudy
    RelearningStudy(quick=True).run(out="runs/relearning")      # MiniLM + faker, offline
    RelearningStudy(concept="person", arms=["zero", "random"]).run("runs/rl-person")
    RelearningStudy(model="distilbert-base-cased", data="path/to/conll2003").run("runs/x")
    # polysdk run relearning [--set concept=location --set prune_fraction=0.56
    #                         --set arms=zero,regrow,random] [--quick]

Pipeline (each step a resume unit, results in ``<out>/results.zarr``):

1. ``relearning/base``: fine-tune the model as a token classifier (AdamW, lr 2e-5,
   weight decay 0.01, batch 8, 3 epochs: the seed's settings); F1 by ``seqeval``
   (entity level, overall and per type) on validation and test; the residual stream
   (embeddings + every block) on the concept split, averaged over each word's pieces,
   ranked per entity type by :class:`~polysdk.detect.ConceptRanking`: probe-free
   (``mean_diff``, the seed's released ranking) and the elastic-net probe.
2. ``relearning/<arm>/round_0``: prune ``prune_fraction`` of the neurons (seed: 3000 of
   5376) and measure again. Arms: ``zero`` (the concept's top neurons, kept at zero
   while retraining: the method's intent), ``regrow`` (the same neurons zeroed once and
   left to regrow: what the original code did), ``random`` (as many random neurons,
   kept at zero: the control the original lacked). ``mechanism="layernorm"`` zeroes the
   gain of the LayerNorm that writes each dimension (the seed's; ``zero_bias=True``
   zeroes its bias too); ``mechanism="activation"`` puts a
   :class:`~polysdk.mask.UnitMask` on the LayerNorm's output (exactly zero).
3. ``relearning/<arm>/round_<k>``, k = 1..``rounds``: retrain ``epochs_per_round``
   epochs (seed: 4 x 2) and measure again.

Each measurement holds F1, the concept ranking of every neuron (rank, the seed's
saliency, top sets of the ``poly_top_fraction`` best per concept) and every neuron's
top words; ``finish`` derives ``relearning/summary``: per-layer saliency means, where
the concept's top neurons are (pruned ones regrown, or new), concept similarity of
their top words before and after (cosine of the base model's word embeddings), and
polysemantic counts (concept top neurons also in another concept's top set) per layer
and round. Model checkpoints go to ``<out>/checkpoints`` (the base and each arm's
latest round are kept). Units depend on the one before, so they run here in order (a
dask client is refused). The report is :mod:`polysdk.studies.relearning_report`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from polysdk.errors import ConfigError
from polysdk.studies.base import Study, Unit

__all__ = ["RelearningStudy", "RelearningConfig", "PRESETS", "ARMS", "SEED_NUMBERS"]

log = logging.getLogger(__name__)

ARMS = ("zero", "regrow", "random")
#: the seed's numbers (DistilBERT, location, CoNLL-2003 validation F1; methods.md)
SEED_NUMBERS = {"f1_base": 0.936, "f1_pruned": 0.028, "f1_after_2": 0.914,
                "f1_after_8": 0.929, "saliency_before": (0.33, 0.60),
                "saliency_after": (0.67, 0.30), "pruned": 3000, "neurons": 5376}


@dataclass(frozen=True)
class RelearningConfig:
    """A relearning run (see the module docstring). Data: ``data="faker"`` generates
    ``n_train``/``n_val``/``n_test`` sentences in ``locales``; anything else is a
    CoNLL-style source for :func:`polysdk.data.ner.load_ner_dataset` (columns
    ``tokens_column``/``tags_column``). ``base_epochs=0`` takes ``model`` as an
    already fine-tuned token classifier. ``prune_count`` (when set) overrides
    ``prune_fraction``. ``threads`` (torch threads, None: torch's default) and
    ``keep_checkpoints`` (every round's, not only the latest) do not change results;
    nor do ``atlas`` (the report maps the detector agreement atlas on the residual
    stream of the base and of one arm's last round, recorded from the checkpoints) and
    ``atlas_pages`` (neuron pages per site on the atlas page);
    ``threads="auto"`` is 1 when the CPU is busier than its cores (measured here: two
    torch threads on a shared 2-core machine ran a MiniLM step ~10x slower than one).

    >>> RelearningConfig().quick().n_train
    600
    """

    model: str = "minilm"
    data: str = "faker"
    tokens_column: str = "tokens"
    tags_column: str = "ner_tags"
    n_train: int = 4000
    n_val: int = 500
    n_test: int = 500
    locales: tuple[str, ...] = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL")
    concept: str = "location"
    ranking: Literal["mean_diff", "probe"] = "mean_diff"
    probe_ranking: bool = True
    prune_fraction: float = 3000 / 5376
    prune_count: int | None = None
    mechanism: Literal["layernorm", "activation"] = "layernorm"
    zero_bias: bool = False
    arms: tuple[str, ...] = ARMS
    base_epochs: int = 3
    rounds: int = 4
    epochs_per_round: int = 2
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    batch_size: int = 8
    max_length: int = 128
    concept_split: str = "validation"
    poly_top_fraction: float = 0.1
    top_k_words: int = 5
    probe_C: float = 0.1
    probe_max_iter: int = 100
    seed: int = 0
    threads: int | str | None = "auto"
    keep_checkpoints: bool = False
    atlas: bool = True
    atlas_pages: int = 10

    def __post_init__(self) -> None:
        arms = tuple(self.arms) if not isinstance(self.arms, str) else \
            tuple(a.strip() for a in self.arms.split(","))
        bad = [a for a in arms if a not in ARMS]
        if bad or not arms:
            raise ConfigError(f"arms={list(arms)}: each arm is one of {list(ARMS)} (got "
                              f"{bad or 'none'}); e.g. arms=zero,regrow,random.")
        if len(set(arms)) != len(arms):
            raise ConfigError(f"arms={list(arms)} repeats an arm.")
        object.__setattr__(self, "arms", arms)
        object.__setattr__(self, "locales", tuple(self.locales))
        if self.mechanism not in ("layernorm", "activation"):
            raise ConfigError(f"mechanism={self.mechanism!r} must be 'layernorm' (the seed's: "
                              "the LayerNorm gain) or 'activation' (a UnitMask on the output).")
        if self.mechanism == "activation" and "regrow" in arms:
            raise ConfigError("the regrow arm zeroes LayerNorm weights once and lets them "
                              "train; with mechanism='activation' nothing can regrow. Use "
                              "mechanism='layernorm' or drop 'regrow' from arms.")
        if self.ranking not in ("mean_diff", "probe"):
            raise ConfigError(f"ranking={self.ranking!r} must be 'mean_diff' or 'probe'.")
        if not 0.0 < float(self.prune_fraction) <= 1.0:
            raise ConfigError(f"prune_fraction={self.prune_fraction} must be in (0, 1] (seed: "
                              "3000/5376 = 0.558).")
        if self.prune_count is not None and int(self.prune_count) < 1:
            raise ConfigError(f"prune_count={self.prune_count} must be >= 1 (or None).")
        if not 0.0 < float(self.poly_top_fraction) <= 1.0:
            raise ConfigError(f"poly_top_fraction={self.poly_top_fraction} must be in (0, 1].")
        for name in ("n_train", "n_val", "n_test", "batch_size", "max_length",
                     "epochs_per_round", "top_k_words"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1.")
        for name in ("base_epochs", "rounds"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0.")
        if not (self.threads in (None, "auto") or isinstance(self.threads, int)):
            raise ConfigError(f"threads={self.threads!r} must be an int, 'auto' or None.")
        if self.concept_split not in ("train", "validation", "test"):
            raise ConfigError(f"concept_split={self.concept_split!r} must be train, "
                              "validation or test.")

    def quick(self) -> RelearningConfig:
        """The CPU scale: 600 / 200 / 200 sentences, batch 16 at lr 1e-4 (fewer, larger
        steps than the seed's), 3 base epochs; the seed's 4 x 2 retraining epochs."""
        return dataclasses.replace(self, n_train=600, n_val=200, n_test=200, batch_size=16,
                                   learning_rate=1e-4, max_length=64, probe_max_iter=30)


PRESETS: dict[str, RelearningConfig] = {
    "location": RelearningConfig(concept="location"),
    "person": RelearningConfig(concept="person"),
    "organisation": RelearningConfig(concept="organisation"),
}


def base_unit() -> str:
    return "relearning/base"


def round_unit(arm: str, k: int) -> str:
    return f"relearning/{arm}/round_{k}"


class RelearningStudy(Study[RelearningConfig]):
    """Prune a concept's neurons, retrain, watch the concept return (seed 004).

    ``RelearningStudy(preset="location", quick=False, **settings)``: presets
    ``location`` (default), ``person``, ``organisation``; settings are
    :class:`RelearningConfig` fields.

    Examples
    --------
    >>> study = RelearningStudy(quick=True, arms="zero,random", rounds=2)
    >>> [u.name for u in study.units()][:3]
    ['relearning/base', 'relearning/zero/round_0', 'relearning/zero/round_1']
    """

    name = "relearning"
    description = ("pruning and relearning (seed 004): prune a concept's neurons, retrain, "
                   "watch where it returns")
    Config = RelearningConfig
    presets = PRESETS
    default_preset = "location"
    runtime_fields = ("threads", "keep_checkpoints", "atlas", "atlas_pages")

    def __init__(self, config: RelearningConfig | str | None = "location", **kwargs: Any
                 ) -> None:
        super().__init__(config, **kwargs)
        self._out: Path | None = None
        self._cache: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_cache"] = {}
        return state

    # ----------------------------------------------------------------- units
    def units(self) -> list[Unit]:
        """The base, then per arm its pruned model (round 0) and each retraining round."""
        units = [Unit(base_unit(), {"stage": "base"})]
        for arm in self.config.arms:
            units += [Unit(round_unit(arm, k), {"stage": "round", "arm": arm, "round": k})
                      for k in range(self.config.rounds + 1)]
        return units

    def run(self, out: str | Path | None = None, resume: bool = True, report: bool = True,
            client: Any = None) -> Path:
        """See :meth:`Study.run`; the units run here in order (each needs the one before)."""
        if client is not None or self.client is not None:
            raise ConfigError("the relearning study's units depend on each other (a round "
                              "retrains the model of the round before); run it without a "
                              "dask client / --scheduler.")
        self._out = Path(out) if out is not None else self.default_out()
        return super().run(self._out, resume=resume, report=report)

    @property
    def out(self) -> Path:
        if self._out is None:
            raise ConfigError("the study has no output folder yet; call run(out=...).")
        return self._out

    def run_unit(self, unit: Unit) -> Any:
        from polysdk._util import torch_threads
        from polysdk.studies import relearning_run as rr

        log.info("relearning: unit %s start", unit.name)
        with torch_threads(self._threads()):
            if unit.spec["stage"] == "base":
                return rr.run_base(self, unit)
            return rr.run_round(self, unit, unit.spec["arm"], int(unit.spec["round"]))

    def _threads(self) -> int | None:
        import os

        threads = self.config.threads
        if threads != "auto":
            return threads or None
        if self.resolved_device().type != "cpu":
            return None
        return 1 if os.getloadavg()[0] > (os.cpu_count() or 1) else None

    def finish(self, store: Any, units: Sequence[Unit]) -> None:
        from polysdk.studies.relearning_run import summarize

        store.write_result("relearning/summary", summarize(self, store, units))

    def make_report(self, out: str | Path) -> Path:
        from polysdk.studies.relearning_report import make_report

        return make_report(self, Path(out))

