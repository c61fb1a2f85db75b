"""The relearning study's units: fine-tune the base, prune, retrain, measure; the summary.

    from polysdk.studies.relearning_run import run_base, run_round, summarize
    ds = run_base(study, unit)                   # relearning/base
    ds = run_round(study, unit, "zero", 2)       # relearning/zero/round_2

Checkpoints (``<out>/checkpoints/base.pt``, ``<arm>/round_<k>.pt``) hold the model's
state and, for rounds, the pruned neurons; they are written whole (temporary name,
then ``os.replace``) before the unit's result is stored, so a run killed at any moment
resumes from the last stored unit. Round ``k`` retrains the model of round ``k - 1``,
with the data order seeded by the unit's seed: a resumed run gives the numbers of a run
never interrupted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from polysdk.errors import ConfigError
from polysdk.studies import relearning_analysis as A

__all__ = ["run_base", "run_round", "summarize", "study_data", "prune_count",
           "checkpoint_path", "record_atlas", "ATLAS_STORE", "ATLAS_ARMS"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- inputs
def study_data(study: Any) -> Any:
    """The run's NerData (generated or loaded once per process), concept checked."""
    if "data" in study._cache:
        return study._cache["data"]
    from polysdk.data.ner import concept_tag, load_ner_dataset, make_faker_ner

    cfg = study.config
    if cfg.data == "faker":
        data = make_faker_ner(cfg.n_train, cfg.n_val, cfg.n_test, seed=cfg.seed,
                              locales=cfg.locales)
    else:
        data = load_ner_dataset(cfg.data, tokens_column=cfg.tokens_column,
                                tags_column=cfg.tags_column)
    tag = concept_tag(cfg.concept, data.label_names)
    for split in ("train", cfg.concept_split):
        n = data[split].count(tag)
        if n == 0:
            raise ConfigError(
                f"concept={cfg.concept!r} ({tag}) has no words in the {split!r} split "
                f"({data[split].n_words} words, types {data.entity_types}); choose another "
                "concept or data that tags it.")
    study._cache["data"] = data
    return data


def _model(study: Any, data: Any, finetuned: bool | None = None) -> tuple[Any, Any, list]:
    from polysdk.models.token_classifier import load_token_classifier, residual_sites

    cfg = study.config
    fin = cfg.base_epochs == 0 if finetuned is None else finetuned
    model, tok = load_token_classifier(cfg.model, data.label_names, finetuned=fin,
                                       seed=cfg.seed)
    sites = residual_sites(model)
    return model.to(study.resolved_device()), tok, sites


def _encoded(study: Any, data: Any, tok: Any) -> dict[str, list]:
    from polysdk.data.ner import encode_split

    if "encoded" not in study._cache:
        study._cache["encoded"] = {s: encode_split(data[s], tok, data.label_names,
                                                   study.config.max_length)
                                   for s in ("train", "validation", "test")}
    return study._cache["encoded"]


def _widths(model: Any, sites: Sequence[tuple[str, str]]) -> list[int]:
    mods = dict(model.named_modules())
    return [int(mods[name].weight.shape[0]) for _, name in sites]


def prune_count(cfg: Any, n_neurons: int) -> int:
    """Neurons to prune: ``prune_count`` or ``round(prune_fraction * n_neurons)``."""
    n = int(cfg.prune_count) if cfg.prune_count is not None else \
        int(round(float(cfg.prune_fraction) * n_neurons))
    if n > n_neurons:
        raise ConfigError(f"prune_count={n} is more than the model's {n_neurons} neurons; "
                          f"prune at most {n_neurons} (or set prune_fraction <= 1).")
    return max(n, 1)


def checkpoint_path(out: Path, arm: str | None = None, k: int | None = None) -> Path:
    folder = Path(out) / "checkpoints"
    return folder / "base.pt" if arm is None else folder / arm / f"round_{k}.pt"


def _save(path: Path, payload: dict[str, Any]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load(path: Path, what: str) -> dict[str, Any]:
    import torch

    if not path.exists():
        raise ConfigError(f"the checkpoint {str(path)!r} of {what} is missing; the stored "
                          "results need it to go on. Re-run with --fresh (resume=False).")
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- training
class _Loader:
    """Training batches, reshuffled each epoch by a generator seeded (seed, epoch)."""

    def __init__(self, encoded: Sequence[Any], batch_size: int, seed: int, pad_id: int):
        self.encoded, self.batch_size, self.seed, self.pad_id = encoded, batch_size, seed, pad_id
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.encoded) // self.batch_size)

    def __iter__(self) -> Any:
        from polysdk.data.ner import batches

        self.epoch += 1
        return batches(self.encoded, self.batch_size, pad_id=self.pad_id,
                       rng=np.random.default_rng([int(self.seed), self.epoch]))


def _loss(outputs: Any, targets: Any) -> Any:
    import torch.nn.functional as F

    logits = outputs.logits
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def _train(study: Any, model: Any, tok: Any, enc: Sequence[Any], epochs: int, seed: int,
           masks: Any, desc: str) -> tuple[list[float], float]:
    """``epochs`` of AdamW over ``enc`` with ``masks(optimizer)`` attached; returns the
    per-epoch mean losses and the seconds."""
    import torch

    from polysdk.train.loop import fit

    cfg = study.config
    if epochs == 0:
        return [], 0.0
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate,
                            weight_decay=cfg.weight_decay)
    t0 = time.perf_counter()
    res = fit(model, _Loader(enc, cfg.batch_size, seed, tok.pad_token_id or 0), epochs=epochs,
              optimizer=opt, loss_fn=_loss, components=masks(opt),
              device=study.resolved_device(), progress=desc if study.progress else False)
    return [float(h["loss"]) for h in res.history], time.perf_counter() - t0


def _masks(study: Any, model: Any, sites: Sequence[tuple[str, str]], pruned: np.ndarray,
           *, optimizer: Any = None, hold: bool = True) -> list[Any]:
    """UnitMasks removing the ``pruned`` neurons (global indices), one per site.

    layernorm: parameter mode on the LayerNorm (gain, and bias with ``zero_bias``),
    holding the zeros (``hold``, with ``optimizer``) or letting them regrow;
    activation: a hook zeroing the LayerNorm's output."""
    from polysdk.mask import UnitMask

    cfg = study.config
    widths = _widths(model, sites)
    starts = np.cumsum([0] + widths)
    out = []
    for i, (_, name) in enumerate(sites):
        units = pruned[(pruned >= starts[i]) & (pruned < starts[i + 1])] - starts[i]
        if not len(units):
            continue
        if cfg.mechanism == "activation":
            out.append(UnitMask(model, name, units=units.tolist()))
        else:
            out.append(UnitMask(model, name, units=units.tolist(), mode="parameter",
                                regrow=not hold, zero_bias=cfg.zero_bias,
                                optimizer=optimizer if hold else None))
    return out


# ----------------------------------------------------------------------------- measuring
def _measure(study: Any, model: Any, tok: Any, data: Any, sites: Sequence[tuple[str, str]],
             eval_masks: Sequence[Any]) -> tuple[xr.Dataset, Any]:
    from polysdk.data.ner import concept_tag, word_types
    from polysdk.models.token_classifier import evaluate_f1

    cfg = study.config
    enc = _encoded(study, data, tok)
    t0 = time.perf_counter()
    for m in eval_masks:
        m.attach()
    try:
        f1 = {s: evaluate_f1(model, enc[s], data.label_names, data[s].tags)
              for s in ("validation", "test")}
    finally:
        for m in reversed(eval_masks):
            m.detach()
    t_eval = time.perf_counter() - t0
    split = data[cfg.concept_split]
    t0 = time.perf_counter()
    acts = A.record_words(model, enc[cfg.concept_split], [n for _, n in sites],
                          [word_types(t) for t in split.tags], split.words,
                          components=eval_masks)
    t_record = time.perf_counter() - t0
    types = data.entity_types
    n_units = acts.sizes["unit"]
    top_n = max(1, int(round(cfg.poly_top_fraction * n_units)))
    t0 = time.perf_counter()
    res = A.rank(acts, types, top_n=top_n)
    t_rank = time.perf_counter() - t0
    metrics = ["overall", *types]
    f1_arr = np.array([[f1[s]["f1"] if m == "overall" else f1[s].get(f"f1_{m}", np.nan)
                        for m in metrics] for s in ("validation", "test")])
    ds = xr.Dataset({
        "f1": (("split", "metric"), f1_arr),
        "concept_rank": (("unit", "concept"), res["concept_rank"].values),
        "concept_score": (("unit", "concept"), res["concept_score"].values),
        "saliency": (("unit", "concept"), res["saliency"].values),
        "top": (("unit", "concept"), res["top"].values),
        "top_word": (("unit", "k"), A.top_words(acts, cfg.top_k_words)),
    }, coords={"split": ["validation", "test"], "metric": metrics, "concept": types,
               "layer": ("unit", acts["layer"].values), "dim": ("unit", acts["dim"].values)},
        attrs={"concept_tag": concept_tag(cfg.concept), "top_n": top_n,
               "layers": [lab for lab, _ in sites], "seconds_eval": t_eval,
               "seconds_record": t_record, "seconds_rank": t_rank})
    return ds, acts


def run_base(study: Any, unit: Any) -> xr.Dataset:
    """Fine-tune (``base_epochs``), measure, rank probe-free and with the probe."""
    import torch

    cfg = study.config
    data = study_data(study)
    model, tok, sites = _model(study, data)
    n_neurons = sum(_widths(model, sites))
    n_prune = prune_count(cfg, n_neurons)   # fails before any training
    enc = _encoded(study, data, tok)
    losses, t_train = _train(study, model, tok, enc["train"], cfg.base_epochs, unit.seed,
                             lambda opt: [], "base")
    ds, acts = _measure(study, model, tok, data, sites, [])
    tag = ds.attrs["concept_tag"]
    order = {"mean_diff": np.argsort(ds["concept_rank"].sel(concept=tag).values,
                                     kind="stable")}
    if cfg.probe_ranking or cfg.ranking == "probe":
        t0 = time.perf_counter()
        pr = A.rank(acts, data.entity_types, top_n=ds.attrs["top_n"], method="probe",
                    C=cfg.probe_C, max_iter=cfg.probe_max_iter, random_state=cfg.seed)
        ds["concept_rank_probe"] = (("unit", "concept"), pr["concept_rank"].values)
        ds["top_probe"] = (("unit", "concept"), pr["top"].values)
        ds.attrs.update(probe_accuracy=float(pr.attrs["probe_accuracy"]),
                        seconds_probe=time.perf_counter() - t0)
        order["probe"] = np.argsort(pr["concept_rank"].sel(concept=tag).values, kind="stable")
    emb = A.word_embeddings(model, tok, acts["word"].values.tolist())
    ds = ds.assign(word=("sample", acts["word"].values.astype(str)),
                   word_label=("sample", acts["label"].values.astype(str)),
                   word_embedding=(("sample", "hidden"), emb),
                   train_loss=("epoch", np.asarray(losses, dtype=float)),
                   prune_order=("unit", order[cfg.ranking]))
    ds.attrs.update(seconds_train=t_train, n_prune=n_prune, n_neurons=n_neurons,
                    label_names=list(data.label_names), data_source=str(data.source),
                    n_words=int(acts.sizes["sample"]), concept_words=int(
                        (acts["label"].values == tag).sum()))
    _save(checkpoint_path(study.out), {"model": model.state_dict(),
                                       "order": torch.as_tensor(order[cfg.ranking])})
    return ds


def run_round(study: Any, unit: Any, arm: str, k: int) -> xr.Dataset:
    """Round 0: prune the base model; round k: retrain the model of round k - 1."""
    import torch

    cfg = study.config
    data = study_data(study)
    model, tok, sites = _model(study, data, finetuned=False)
    n_neurons = sum(_widths(model, sites))
    losses, t_train = [], 0.0
    if k == 0:
        base = _load(checkpoint_path(study.out), "the base model")
        model.load_state_dict(base["model"])
        n = prune_count(cfg, n_neurons)
        if arm == "random":
            pruned = np.sort(np.random.default_rng(unit.seed).choice(n_neurons, n,
                                                                     replace=False))
        else:
            pruned = np.sort(base["order"].numpy()[:n])
        if cfg.mechanism == "layernorm":   # zero the weights (they stay zero on detach)
            for m in _masks(study, model, sites, pruned, hold=False):
                m.attach()
                m.detach()
    else:
        prev = _load(checkpoint_path(study.out, arm, k - 1), f"{arm} round {k - 1}")
        model.load_state_dict(prev["model"])
        pruned = prev["pruned"].numpy()
        if not cfg.keep_checkpoints and k >= 2:   # round k - 2 is no longer needed
            checkpoint_path(study.out, arm, k - 2).unlink(missing_ok=True)
        hold = arm != "regrow"
        losses, t_train = _train(
            study, model, tok, _encoded(study, data, tok)["train"], cfg.epochs_per_round,
            unit.seed, lambda opt: _masks(study, model, sites, pruned, optimizer=opt,
                                          hold=hold) if hold else [], f"{arm} {k}")
    eval_masks = _masks(study, model, sites, pruned) if cfg.mechanism == "activation" else []
    ds, _ = _measure(study, model, tok, data, sites, eval_masks)
    is_pruned = np.zeros(n_neurons, bool)
    is_pruned[pruned] = True
    ds = ds.assign(pruned=("unit", is_pruned),
                   train_loss=("epoch", np.asarray(losses, dtype=float)))
    ds.attrs.update(arm=arm, round=k, epochs=k * cfg.epochs_per_round, seconds_train=t_train)
    _save(checkpoint_path(study.out, arm, k), {"model": model.state_dict(),
                                               "pruned": torch.as_tensor(pruned)})
    return ds


# ----------------------------------------------------------------------------- atlas
#: the report's store of word-level recordings for the detector agreement atlas
ATLAS_STORE = "atlas.zarr"
#: the arm whose last round the atlas maps beside the base: the first of these in the run
ATLAS_ARMS = ("regrow", "zero", "random")


def atlas_models(study: Any, out: Path) -> dict[str, Path]:
    """{store site: checkpoint} of the atlas: ``base`` and ``<arm>_round_<last>`` (the
    first arm of :data:`ATLAS_ARMS` in the run whose last-round checkpoint is kept)."""
    cfg = study.config
    models = {"base": checkpoint_path(out)}
    for arm in [a for a in ATLAS_ARMS if a in cfg.arms]:
        path = checkpoint_path(out, arm, cfg.rounds)
        if path.exists():
            models[f"{arm}_round_{cfg.rounds}"] = path
            break
    return {s: p for s, p in models.items() if p.exists()}


def atlas_site(model: str, layer: str) -> str:
    """The atlas store's site of one model's layer: ``base.embeddings``, ``base.block3``."""
    return f"{model}.{layer.replace(' ', '')}"


def record_atlas(study: Any, out: Path) -> Any:
    """The residual stream of the base and of one arm's last round (:func:`atlas_models`),
    one row per word of the concept split with its entity type as ``label``, in the
    store ``<out>/atlas.zarr``: one site per model and layer (:func:`atlas_site`), so
    each detector (the dictionary's autoencoder above all) is fitted per layer, as
    dictionaries are in the literature, not on the 7 layers side by side. Recorded once
    from the checkpoints (under a minute at the quick scale); a store holding those
    models' sites is reused. Returns the store, or None when no checkpoint is kept."""
    from polysdk._util import torch_threads
    from polysdk.data.ner import word_types
    from polysdk.store import ActivationStore

    models = atlas_models(study, Path(out))
    if not models:
        return None
    path = Path(out) / ATLAS_STORE
    if path.exists():
        store = ActivationStore(path, mode="r")
        if (list(store.attrs.get("models", [])) == sorted(models)
                and store.attrs.get("layers")):   # written by this version: reuse
            return store
    cfg = study.config
    data = study_data(study)
    arrays: dict[str, np.ndarray] = {}
    coords: dict[str, Any] = {}
    with torch_threads(study._threads()):
        for name, ckpt in models.items():
            model, tok, sites = _model(study, data, finetuned=False)
            state = _load(ckpt, name)
            model.load_state_dict(state["model"])
            masks = (_masks(study, model, sites, state["pruned"].numpy())
                     if cfg.mechanism == "activation" and "pruned" in state else [])
            split = data[cfg.concept_split]
            acts = A.record_words(model, _encoded(study, data, tok)[cfg.concept_split],
                                  [n for _, n in sites], [word_types(t) for t in split.tags],
                                  split.words, components=masks)
            values = np.asarray(acts.values, dtype=np.float32)
            layer = acts["layer"].values
            for i, (label, _) in enumerate(sites):
                arrays[atlas_site(name, label)] = values[:, layer == i]
            coords = {"label": acts["label"].values.astype(str),
                      "word": acts["word"].values.astype(str)}
    layers = [atlas_site("", label)[1:] for label, _ in sites]
    with ActivationStore(path, mode="w", attrs={"model": cfg.model, "split": cfg.concept_split,
                                                "models": sorted(models),
                                                "layers": layers}) as store:
        store.append(arrays, dims={s: ("sample", "unit") for s in arrays}, coords=coords)
    return ActivationStore(path, mode="r")


def atlas_pruned(study: Any, out: Path, store: Any) -> dict[str, np.ndarray]:
    """{atlas site: True per unit its model's checkpoint lists as pruned}, for the sites
    of :func:`record_atlas`'s store whose model pruned any (the base pruned none). The
    checkpoint's indices run over the layers in order, as the store's ``layers`` attr."""
    layers = list(store.attrs.get("layers", []))
    found: dict[str, np.ndarray] = {}
    for name, ckpt in atlas_models(study, Path(out)).items():
        state = _load(ckpt, name)
        if "pruned" not in state or not layers:
            continue
        widths = [store[atlas_site(name, la)].sizes["unit"] for la in layers]
        flat = np.zeros(sum(widths), dtype=bool)
        flat[np.asarray(state["pruned"], dtype=np.int64)] = True
        for la, part in zip(layers, np.split(flat, np.cumsum(widths)[:-1])):
            found[atlas_site(name, la)] = part
    return found


# ----------------------------------------------------------------------------- summary
def _token_poly(top_word: np.ndarray, labels: np.ndarray, tag: str, units: np.ndarray
                ) -> np.ndarray:
    """Of ``units``, which have top words of ``tag`` and of another entity type."""
    lab = labels[top_word[units]]
    mine = (lab == tag).any(1)
    other = ((lab != tag) & (lab != "O")).any(1)
    return mine & other


def _reading(ds: xr.Dataset, base: xr.Dataset, tag: str, n_layers: int) -> dict[str, Any]:
    layer = ds["layer"].values
    sal = ds["saliency"].sel(concept=tag).values
    counts = A.polysemantic_counts(ds["top"], tag, layer, n_layers)
    top_units = np.flatnonzero(ds["top"].sel(concept=tag).values)
    emb, labels = base["word_embedding"].values, base["word_label"].values
    sim = A.concept_similarity(base["top_word"].values[top_units],
                               ds["top_word"].values[top_units], emb)
    pruned = ds["pruned"].values if "pruned" in ds else np.zeros(len(layer), bool)
    tpoly = _token_poly(ds["top_word"].values, labels, tag, top_units)
    lay = layer[top_units]
    by_layer = lambda m: np.bincount(lay[m], minlength=n_layers)   # noqa: E731
    frac = (labels[ds["top_word"].values[top_units]] == tag).mean() if len(top_units) else \
        np.nan
    return {
        "f1": ds["f1"].values,
        "layer_saliency": A.layer_means(sal, layer, n_layers),
        "concept_top": counts["concept_top"], "poly": counts["poly"],
        "poly_with": counts["poly_with"],
        "top_pruned": by_layer(pruned[top_units]), "token_poly": by_layer(tpoly),
        "similarity": A.layer_means(sim, lay, n_layers) if len(lay) else
        np.full(n_layers, np.nan),
        "concept_word_fraction": float(frac),
    }


def summarize(study: Any, store: Any, units: Sequence[Any]) -> xr.Dataset:
    """Per arm and round (and for the base): F1, per-layer saliency means, where the
    concept's top neurons are, their concept similarity, polysemantic counts."""
    cfg = study.config
    base = store.read_result("relearning/base")
    tag = base.attrs["concept_tag"]
    n_layers = len(base.attrs["layers"])
    b = _reading(base, base, tag, n_layers)
    arms = list(cfg.arms)
    rounds = np.arange(cfg.rounds + 1)
    keys = [k for k in b if k not in ("poly_with",)]
    per: dict[str, list] = {k: [] for k in keys}
    for arm in arms:
        rows = [_reading(store.read_result(f"relearning/{arm}/round_{k}"), base, tag,
                         n_layers) for k in rounds]
        for key in keys:
            per[key].append(np.stack([np.asarray(r[key]) for r in rows]))
    dims = {"f1": ("split", "metric"), "concept_word_fraction": ()}
    data = {}
    for key in keys:
        d = dims.get(key, ("layer",))
        data[key] = (("arm", "round", *d), np.stack(per[key]))
        data[f"base_{key}"] = (d, np.asarray(b[key]))
    # a random-neuron baseline of concept similarity: top words of one neuron vs another's
    rng = np.random.default_rng(cfg.seed)
    tw = base["top_word"].values
    i, j = rng.integers(0, len(tw), 2000), rng.integers(0, len(tw), 2000)
    sim_random = float(np.nanmean(A.concept_similarity(tw[i], tw[j],
                                                       base["word_embedding"].values)))
    # probe-free vs probe: overlap of the top prune sets
    attrs = {"concept_tag": tag, "layers": base.attrs["layers"], "similarity_random_pairs":
             sim_random, "n_prune": base.attrs["n_prune"], "n_neurons": base.attrs["n_neurons"],
             "top_n": base.attrs["top_n"], "base_seconds_train": base.attrs["seconds_train"]}
    if "concept_rank_probe" in base:
        n = int(base.attrs["n_prune"])
        a = base["concept_rank"].sel(concept=tag).values <= n
        p = base["concept_rank_probe"].sel(concept=tag).values <= n
        attrs["probe_overlap"] = float((a & p).sum() / max(1, (a | p).sum()))
        attrs["probe_accuracy"] = base.attrs.get("probe_accuracy")
    seconds = {}
    for arm in arms:
        seconds[arm] = float(sum(store.read_result(f"relearning/{arm}/round_{k}")
                                 .attrs["seconds_train"] for k in rounds))
    attrs["seconds_train_per_arm"] = str(seconds)
    return xr.Dataset(data, coords={
        "arm": arms, "round": rounds, "epochs": ("round", rounds * cfg.epochs_per_round),
        "split": base["split"].values, "metric": base["metric"].values,
        "layer": np.arange(n_layers)}, attrs=attrs)
