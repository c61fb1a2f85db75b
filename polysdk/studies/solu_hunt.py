"""The SoLU neuron-hunt study (seed 003): neurons active on exactly two concept sets,
per-token heat maps, and shallow causes ruled out token type by token type.

    from polysdk.studies.solu_hunt import SoLUHuntStudy
    SoLUHuntStudy(quick=True).run(out="runs/solu")                 # twins + MiniLM
    SoLUHuntStudy("seed-run-1", quick=True, model="minilm").run(out="runs/solu1")
    SoLUHuntStudy(model="solu-4l").run(out="runs/solu4l")          # the seed's model (hub)

    polysdk run solu-hunt [--preset seed-run-2|seed-run-1] [--set model=minilm|solu|gelu]
        [--quick]

Models (``model``): ``all`` (default: ``solu``, ``gelu``, ``minilm``), one of them, a
comma list, or any other name/folder for TransformerLens's Hugging Face loading
(:func:`polysdk.models.text.load_tl_model`: ``solu-4l`` = NeelNanda/SoLU_4L512W_C4_Code;
needs the network or the HF cache). ``solu``/``gelu`` are the embedded twins
(:mod:`polysdk.models.text`): the same size, init seed, tokenizer
(:mod:`polysdk.data.tokenizer`, trained on the corpus) and batches, trained on
:func:`polysdk.data.corpora.training_corpus` (all nine topics, held out from the sets).

Concept sets (``corpus``): :func:`polysdk.data.corpora.concept_sets` (seed-run-2:
Fortran, Spanish, medical, gibberish, 10 texts of <= 400 characters; seed-run-1: nine
topics x 5 sentences). Active = in the set's top ``top_k`` (100, the seed's; 50 in the
first run) of all the model's neurons, scaled by ``n_neurons / top_k_reference``
(8192, solu-4l's count; ``top_k_reference=none`` uses ``top_k`` as given).
Pipeline and verdicts: :mod:`polysdk.studies.solu_hunt_pipeline`.

Resume units (results in ``<out>/results.zarr``; per-token stores in
``<out>/tokens/<model>.zarr``): ``twins/tokenizer``, ``twins/<act>/train`` (weights and
loss curve), ``<model>/record``, ``<model>/analyse``, ``planted/analyse`` (the SoLU
twin with two planted neurons: one on Fortran and medical content tokens, one on "."
only), then ``solu_hunt/summary``. The report: :mod:`polysdk.studies.solu_hunt_report`;
it maps each model's per-token store with the detector agreement atlas
(:mod:`polysdk.studies.solu_hunt_atlas`; ``atlas=false`` leaves it out, ``atlas_pages``
sets the neuron pages per site, ``atlas_dictionary_width`` caps the dictionary's size).
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

from polysdk._util import torch_threads, threads_for
from polysdk.errors import ConfigError
from polysdk.studies.base import Study, Unit

__all__ = ["SoLUHuntStudy", "SoLUHuntConfig", "PRESETS", "TWINS"]

log = logging.getLogger(__name__)
TWINS = ("solu", "gelu")
BUILTIN_MODELS = ("solu", "gelu", "minilm")
PLANT_SITE_LAYER, PLANT_UNITS = 1, (0, 1)   # planted/analyse: units of blocks.1
PLANT_VALUE = 20.0   # what a planted neuron outputs at its tokens (SoLU-LN values ~ N(0, 1))


@dataclass(frozen=True)
class SoLUHuntConfig:
    """A neuron hunt (see the module docstring for every field's meaning)."""

    corpus: str = "seed-run-2"
    n_texts: int | None = None
    max_chars: int | None = None
    model: str = "all"
    top_k: int = 100
    top_k_reference: int | None = 8192
    exactly: int = 2
    narrow_require: tuple[str, ...] = ("fortran",)
    narrow_exclude: tuple[str, ...] = ("gibberish",)
    count_special: bool = False
    shallow_share: float = 0.5
    # the embedded twins
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 256
    vocab_size: int = 2048
    chars_per_topic: int = 300_000
    train_steps: int = 3000
    batch_size: int = 16
    lr: float = 3e-3
    plant_check: bool = True
    seed: int = 0
    # how to run (results do not depend on these)
    batch_texts: int = 8
    threads: int | str | None = "auto"
    trace: str | None = None
    pause: float = 0.0
    # the report's detector agreement atlas (report only; :mod:`.solu_hunt_atlas`)
    atlas: bool = True
    atlas_pages: int = 5
    atlas_dictionary_width: int | None = 1536

    def __post_init__(self) -> None:
        from polysdk.data.corpora import PRESET_TOPICS

        if self.corpus not in PRESET_TOPICS:
            raise ConfigError(f"corpus={self.corpus!r}; use one of {list(PRESET_TOPICS)}.")
        if int(self.top_k) < 1:
            raise ConfigError(f"top_k={self.top_k} must be >= 1.")
        if self.n_texts is not None and int(self.n_texts) < 1:
            raise ConfigError(f"n_texts={self.n_texts}: a set with no texts cannot be ranked; "
                              "use n_texts >= 1 (or none for the preset's).")
        if int(self.exactly) < 1:
            raise ConfigError(f"exactly={self.exactly} must be >= 1 (the seed used 2).")
        if int(self.atlas_pages) < 0:
            raise ConfigError(f"atlas_pages={self.atlas_pages} must be >= 0 (neuron pages "
                              "per site on each atlas page).")
        if self.atlas_dictionary_width is not None and int(self.atlas_dictionary_width) < 1:
            raise ConfigError(f"atlas_dictionary_width={self.atlas_dictionary_width} must be "
                              ">= 1 (or none: 4 x the site's units).")
        if not 0 < float(self.shallow_share) <= 1:
            raise ConfigError(f"shallow_share={self.shallow_share} must be in (0, 1].")
        for name in ("narrow_require", "narrow_exclude"):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple([value] if isinstance(value, str) else value))
        topics = PRESET_TOPICS[self.corpus]
        for s in self.narrow_require + self.narrow_exclude:
            if s not in topics:
                raise ConfigError(f"the narrow filter names {s!r}, not a set of corpus "
                                  f"{self.corpus!r} ({list(topics)}).")
        self.models()

    def models(self) -> list[str]:
        """The models of the run, in order (twins first)."""
        names = [m.strip() for m in str(self.model).split(",") if m.strip()]
        if names == ["all"]:
            return list(BUILTIN_MODELS)
        if not names:
            raise ConfigError("model= is empty; use all, solu, gelu, minilm or a "
                              "TransformerLens model name/folder.")
        return names

    def quick(self) -> SoLUHuntConfig:
        """The CPU scale: twins of 4 x 256 neurons (d_model 64), 400 steps of 8 x 256
        tokens on 100k characters per topic."""
        return dataclasses.replace(self, d_model=64, d_mlp=256, train_steps=400,
                                   batch_size=8, chars_per_topic=100_000)


#: seed-run-2 = the seed's second run (4 sets x 10 texts, top 100, narrow filter
#: Fortran and not gibberish); seed-run-1 = its first (9 topics x 5 sentences, top 50)
PRESETS: dict[str, SoLUHuntConfig] = {
    "seed-run-2": SoLUHuntConfig(),
    "seed-run-1": SoLUHuntConfig(corpus="seed-run-1", top_k=50),
}


def _is_tl(name: str) -> bool:
    return name not in BUILTIN_MODELS


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


class SoLUHuntStudy(Study[SoLUHuntConfig]):
    """The SoLU neuron hunt (seed 003); see the module docstring.

    Examples
    --------
    >>> study = SoLUHuntStudy(quick=True, model="minilm")
    >>> [u.name for u in study.units()]
    ['minilm/record', 'minilm/analyse']
    """

    name = "solu-hunt"
    description = ("SoLU neuron hunt (seed 003): neurons active on exactly two concept "
                   "sets, token heat maps, shallow causes")
    Config = SoLUHuntConfig
    presets = PRESETS
    default_preset = "seed-run-2"
    runtime_fields = ("batch_texts", "threads", "trace", "pause", "atlas", "atlas_pages",
                      "atlas_dictionary_width")

    def __init__(self, config: SoLUHuntConfig | str | None = "seed-run-2", **kw: Any) -> None:
        super().__init__(config, **kw)
        self._out: Path | None = None
        self._cache: dict[str, Any] = {}

    # ----------------------------------------------------------------- units
    def units(self) -> list[Unit]:
        cfg = self.config
        models = cfg.models()
        twins = [m for m in models if m in TWINS]
        if cfg.plant_check and twins and "solu" not in twins:
            twins = ["solu", *twins]
        plant = cfg.plant_check and "solu" in models
        out = []
        if twins or plant:
            out.append(Unit("twins/tokenizer", "tokenizer"))
            out += [Unit(f"twins/{t}/train", t) for t in twins]
        out += [Unit(f"{_safe(m)}/record", m) for m in models]
        out += [Unit(f"{_safe(m)}/analyse", m) for m in models]
        if plant:
            out.append(Unit("planted/analyse", "solu"))
        return out

    def run(self, out: str | Path | None = None, **kwargs: Any) -> Path:
        self._out = Path(out) if out is not None else self.default_out()
        return super().run(self._out, **kwargs)

    def execute_unit(self, unit: Unit) -> Any:
        if self.config.trace:
            with open(self.config.trace, "a") as f:
                f.write(f"start {unit.name} pid {os.getpid()}\n")
        if self.config.pause:
            time.sleep(float(self.config.pause))
        t0 = time.perf_counter()
        with torch_threads(self._threads()):
            ds = super().execute_unit(unit)
        ds.attrs["seconds"] = float(time.perf_counter() - t0)
        self._cache[unit.name] = ds
        return ds

    def _threads(self) -> int | None:
        return threads_for(self.config.threads, self.resolved_device())

    def need(self, name: str) -> xr.Dataset:
        """An earlier unit's result: this process's, the run's store's, or computed now
        (deterministic: the same as when the loop runs it)."""
        if name in self._cache:
            return self._cache[name]
        if self._out is not None:
            from polysdk.store import ActivationStore

            path = self.paths(self._out)["store"]
            if (path / "zarr.json").exists():
                store = ActivationStore(path, mode="r")
                if name in store.list_results():
                    self._cache[name] = store.read_result(name)
                    return self._cache[name]
        from polysdk.studies.base import _unit_seed

        units = {u.name: dataclasses.replace(u, seed=_unit_seed(self.seed, i))
                 for i, u in enumerate(self.units())}
        if name not in units:
            raise ConfigError(f"no unit {name!r} in this study; units: {list(units)}.")
        return self.execute_unit(units[name])

    def corpus(self) -> Any:
        from polysdk.data.corpora import concept_sets

        c = self.config
        return concept_sets(c.corpus, n_texts=c.n_texts, max_chars=c.max_chars, seed=c.seed)

    def _folder(self, *parts: str) -> Path:
        return (self._out or Path(".")).joinpath(*parts)

    # ----------------------------------------------------------------- the work
    def run_unit(self, unit: Unit) -> Any:
        kind, _, step = unit.name.rpartition("/")
        if unit.name == "twins/tokenizer":
            return self._tokenizer_unit()
        if unit.name.startswith("twins/"):
            return self._train_unit(unit.spec)
        if unit.name == "planted/analyse":
            return self._planted_unit()
        if step == "record":
            return self._record_unit(unit.spec)
        if step == "analyse":
            return self._analyse_unit(unit.spec)
        raise ConfigError(f"unknown unit {unit.name!r}")

    def twin_config(self, vocab: int) -> Any:
        from polysdk.models.text import TwinConfig

        c = self.config
        return TwinConfig(d_model=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads,
                          d_mlp=c.d_mlp, n_ctx=c.n_ctx, d_vocab=vocab)

    def _training_docs(self) -> list[str]:
        from polysdk.data.corpora import training_corpus

        return training_corpus(chars_per_topic=self.config.chars_per_topic, seed=self.config.seed)

    def _tokenizer_unit(self) -> xr.Dataset:
        from polysdk.data.tokenizer import train_tokenizer

        docs = self._training_docs()
        tok = train_tokenizer(docs, self.config.vocab_size)
        ds = xr.Dataset({"doc_chars": ("doc", np.asarray([len(d) for d in docs]))})
        ds.attrs.update(tokenizer=tok.backend_tokenizer.to_str(), vocab=len(tok),
                        n_docs=len(docs), n_chars=int(sum(map(len, docs))))
        return ds

    def tokenizer(self) -> Any:
        from polysdk.data.tokenizer import tokenizer_from_json

        return tokenizer_from_json(self.need("twins/tokenizer").attrs["tokenizer"])

    def _train_unit(self, act: str) -> xr.Dataset:
        from polysdk.models.text import build_twin, pack_tokens, train_twin, twin_state

        tok = self.tokenizer()
        stream = pack_tokens(tok, self._training_docs())
        cfg = self.twin_config(len(tok))
        model = build_twin(cfg, act, seed=self.config.seed)
        t0 = time.perf_counter()
        losses = train_twin(model, stream, steps=self.config.train_steps,
                            batch_size=self.config.batch_size, lr=self.config.lr,
                            seed=self.config.seed,
                            progress=f"train {act}" if self.progress else False)
        state = twin_state(model)
        names = list(state)
        flat = np.concatenate([state[k].ravel() for k in names]).astype(np.float32)
        ds = xr.Dataset({"loss": ("log_step", losses), "params": ("param", flat)},
                        coords={"log_step": np.arange(len(losses)) * 10})
        ds.attrs.update(act=act, param_names=json.dumps(names),
                        param_shapes=json.dumps([list(state[k].shape) for k in names]),
                        train_seconds=float(time.perf_counter() - t0),
                        stream_tokens=int(stream.size), n_neurons=cfg.n_neurons)
        return ds

    def twin(self, act: str) -> Any:
        """The trained twin ``act`` ("solu" / "gelu"), rebuilt from its stored weights."""
        from polysdk.models.text import build_twin, load_twin_state

        ds = self.need(f"twins/{act}/train")
        names, shapes = json.loads(ds.attrs["param_names"]), json.loads(ds.attrs["param_shapes"])
        flat, state, i = ds["params"].values, {}, 0
        for k, shape in zip(names, shapes):
            n = int(np.prod(shape))
            state[k] = flat[i:i + n].reshape(shape)
            i += n
        model = build_twin(self.twin_config(len(self.tokenizer())), act, seed=self.config.seed)
        return load_twin_state(model, state)

    def model_for(self, name: str) -> tuple[Any, Any, list[str], str, int]:
        """(model, tokenizer, MLP sites, kind, max tokens) of a model of the run."""
        from polysdk.models.text import load_minilm, load_tl_model, mlp_sites

        device = self.resolved_device()
        if name in TWINS:
            model = self.twin(name).to(device)
            return (model, self.tokenizer(), mlp_sites("tl", self.config.n_layers), "tl",
                    self.config.n_ctx)
        if name == "minilm":
            model, tok = load_minilm(device)
            return (model, tok, mlp_sites("bert", model.config.num_hidden_layers), "hf",
                    int(model.config.max_position_embeddings))
        model = load_tl_model(name, device=device)
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise ConfigError(f"the TransformerLens model {name!r} has no tokenizer; "
                              "load one that ships its tokenizer.")
        return model, tok, mlp_sites("tl", model.cfg.n_layers), "tl", int(model.cfg.n_ctx)

    def _record_unit(self, name: str, plant: Any = None, tag: str | None = None) -> xr.Dataset:
        from polysdk.studies.solu_hunt_pipeline import record

        model, tok, sites, kind, max_len = self.model_for(name)
        if plant is not None:
            plant = plant(model, tok)
        path = self._folder("tokens", f"{_safe(tag or name)}.zarr")
        rec = record(model, tok, self.corpus(), sites, path, max_len=max_len, kind=kind,
                     count_special=self.config.count_special,
                     batch_size=self.config.batch_texts, plant=plant,
                     progress=self.progress)
        rec.attrs.update(model=name, n_neurons=int(rec.sizes["neuron"]))
        return rec

    def top_k_for(self, n_neurons: int) -> int:
        from polysdk.studies.solu_hunt_pipeline import scaled_top_k

        return scaled_top_k(self.config.top_k, n_neurons, self.config.top_k_reference)

    def _analyse(self, rec: xr.Dataset, name: str, extra: Any = ()) -> xr.Dataset:
        from polysdk.studies.solu_hunt_pipeline import analyse

        c = self.config
        ds = analyse(rec, self._folder("tokens", f"{_safe(name)}.zarr"),
                     top_k=self.top_k_for(rec.sizes["neuron"]), exactly=c.exactly,
                     require=c.narrow_require, exclude=c.narrow_exclude,
                     shallow_share=c.shallow_share, extra=extra)
        ds.attrs.update(model=name, n_neurons=int(rec.sizes["neuron"]),
                        tokens_dropped=int(rec.attrs.get("tokens_dropped", 0)),
                        count_special=int(c.count_special))
        return ds

    def _analyse_unit(self, name: str) -> xr.Dataset:
        return self._analyse(self.need(f"{_safe(name)}/record"), name)

    def _planted_unit(self) -> xr.Dataset:
        """The SoLU twin with two planted neurons of blocks.1: unit 0 fires on content
        tokens of Fortran and of medical text (each found in one of the two sets only),
        unit 1 on "." only; both must come out as planted."""
        from polysdk.detect.token_types import normalise, token_type
        from polysdk.studies.solu_hunt_pipeline import Plant

        corpus = self.corpus()
        site = f"blocks.{PLANT_SITE_LAYER}.mlp.hook_post"
        a, b = ("fortran", "medical") if {"fortran", "medical"} <= set(corpus.names) \
            else tuple(corpus.names[:2])
        chosen: dict[str, Any] = {}

        def make(model: Any, tok: Any) -> Plant:
            def ids_of(texts: list[str]) -> dict[int, int]:
                counts: dict[int, int] = {}
                for row in tok(texts)["input_ids"]:
                    for i in row:
                        counts[i] = counts.get(i, 0) + 1
                return counts
            counts = {s: ids_of(t) for s, t in corpus.sets.items()}
            strs = dict(zip(range(len(tok)), tok.convert_ids_to_tokens(list(range(len(tok))))))

            def content_only(mine: str, pair: str) -> list[int]:
                # content tokens of this set, absent from the pair's other set, at least
                # 3x as frequent here as in all the other sets together
                def elsewhere(i: int) -> int:
                    return sum(c.get(i, 0) for s, c in counts.items() if s != mine)
                ok = [i for i, n in counts[mine].items() if counts[pair].get(i, 0) == 0
                      and n >= 3 * elsewhere(i) and token_type(strs[i]) == "content"
                      and len(normalise(strs[i])) >= 2]
                return sorted(ok, key=lambda i: -counts[mine][i])[:200]
            poly = content_only(a, b) + content_only(b, a)
            dots = [i for i, s in strs.items() if normalise(s) == "."]
            chosen.update(poly=poly, dots=dots, strs=[strs[i] for i in poly])
            return Plant(model, {(site, PLANT_UNITS[0]): poly, (site, PLANT_UNITS[1]): dots},
                         value=PLANT_VALUE)

        rec = self._record_unit("solu", plant=make, tag="planted")
        offset = int(np.flatnonzero(rec["layer"].values == PLANT_SITE_LAYER)[0])
        ds = self._analyse(rec, "planted", extra=[offset + u for u in PLANT_UNITS])
        ds.attrs.update(planted_site=site, planted_units=list(PLANT_UNITS),
                        planted_layer=PLANT_SITE_LAYER, planted_sets=[a, b],
                        planted_tokens=json.dumps(chosen.get("strs", [])))
        return ds

    # ----------------------------------------------------------------- summary
    def finish(self, store: Any, units: Any) -> None:
        store.write_result("solu_hunt/summary", self.summarize(store))

    def summarize(self, store: Any) -> xr.Dataset:
        """One row per model: neurons, top_k, candidates (exactly-two, narrow), verdicts."""
        rows = []
        for m in self.config.models():
            ds = store.read_result(f"{_safe(m)}/analyse")
            v = ds["verdict"].values[ds["is_candidate"].values].astype(str)
            rows.append(dict(model=m, n_neurons=int(ds.attrs["n_neurons"]),
                             top_k=int(ds.attrs["top_k"]),
                             candidates=int(ds["candidate"].sum()),
                             narrow=int(ds["narrow_candidate"].sum()),
                             polysemantic=int((v == "polysemantic").sum()),
                             shallow=int((v == "shallow cause").sum()),
                             unclear=int((v == "unclear").sum())))
        keys = list(rows[0]) if rows else ["model"]
        return xr.Dataset({k: ("model_row", np.asarray([r[k] for r in rows]))
                           for k in keys if k != "model"},
                          coords={"model_row": [r["model"] for r in rows]})

    def make_report(self, out: str | Path) -> Path:
        from polysdk.studies.solu_hunt_report import make_report

        self._out = Path(out)
        return make_report(self, Path(out))
