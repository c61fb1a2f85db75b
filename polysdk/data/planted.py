"""Ground truth for detectors: synthetic data and small models with planted units.

We build the model, so we know which hidden units answer to which classes (or concept
sets): some to one, the *planted polysemantic* ones to two or more. A detector is then
scored by precision and recall against that truth::

    from polysdk.data.planted import make_planted_classes, precision_recall
    pl = make_planted_classes(n_samples=2000, signal=1.0, seed=0)
    det = ClassSelectivity().fit(pl.activations)          # labels from the ``label`` coord
    precision_recall(det.result_["polysemantic"], pl.polysemantic)   # -> (1.0, 1.0)

``signal`` scales the class part of each input against fixed-size noise: lowering it
blurs the classes, and every detector should get worse, never better.

Two generators:

* :func:`make_planted_classes` (classes / concepts; seeds 000, 001, 004): inputs
  ``x = signal * p_c + noise * eps`` around orthonormal class prototypes ``p_c``; a model
  ``Linear(d, d) ("stem", identity) -> Linear(d, units) ("units") -> ReLU ("act")`` whose
  unit ``u`` has weights ``sum of p_c`` over the classes it answers to and bias
  ``-signal / 2``: it fires (> 0) on its classes and stays silent on the others.
* :func:`make_planted_concepts` (concept sets of texts; seed 003): token sequences drawn
  from per-set vocabularies plus shared tokens; a token model ``Embedding -> ReLU`` (with
  a context term that acts as noise) whose units answer to the tokens of one set, of two
  sets (planted polysemantic), or only to ``"."`` (a planted *shallow* cause: active on
  every set whose texts use full stops).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from polysdk.errors import ConfigError

__all__ = [
    "PlantedUnits", "PlantedConcepts", "make_planted_classes", "make_planted_concepts",
    "precision_recall", "PlantedClassModel", "PlantedTokenModel", "WordTokenizer",
]


def precision_recall(predicted: Any, truth: Any) -> tuple[float, float]:
    """Precision and recall of a boolean per-unit prediction against the planted truth.

    An empty prediction has precision 1 (nothing claimed, nothing wrong); no true
    positives to find gives recall 1.
    """
    p = np.asarray(getattr(predicted, "values", predicted), dtype=bool)
    t = np.asarray(getattr(truth, "values", truth), dtype=bool)
    if p.shape != t.shape:
        raise ConfigError(f"prediction has shape {p.shape} but the truth has {t.shape}; "
                          "compare one boolean per unit.")
    tp = int((p & t).sum())
    precision = tp / int(p.sum()) if p.any() else 1.0
    recall = tp / int(t.sum()) if t.any() else 1.0
    return precision, recall


class PlantedClassModel(nn.Module):
    """``stem`` (identity Linear) -> ``units`` (planted Linear) -> ``act`` (ReLU)."""

    def __init__(self, prototypes: np.ndarray, membership: np.ndarray, signal: float):
        super().__init__()
        d = prototypes.shape[1]
        n_units = membership.shape[0]
        self.stem = nn.Linear(d, d)
        self.units = nn.Linear(d, n_units)
        self.act = nn.ReLU()
        with torch.no_grad():
            self.stem.weight.copy_(torch.eye(d))
            self.stem.bias.zero_()
            w = membership.astype(np.float32) @ prototypes.astype(np.float32)
            self.units.weight.copy_(torch.from_numpy(w))
            self.units.bias.fill_(-signal / 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.units(self.stem(x)))


@dataclass
class PlantedUnits:
    """Planted classes: data, model and truth.

    Attributes: ``inputs`` (sample, d) tensor; ``labels`` (sample,) int class ids;
    ``class_names``; ``membership`` (unit, class) bool, which classes each unit answers
    to; ``polysemantic`` (unit,) bool, two or more classes; ``model``; ``activations``,
    the model's ``act`` output as an ``xr.DataArray`` (sample, unit [, y, x]) with the
    per-sample ``label`` coordinate (class names).
    """

    inputs: torch.Tensor
    labels: np.ndarray
    class_names: list[str]
    membership: np.ndarray
    polysemantic: np.ndarray
    model: PlantedClassModel
    activations: xr.DataArray
    signal: float
    noise: float
    extra: dict[str, Any] = field(default_factory=dict)


def make_planted_classes(
    n_samples: int = 2000,
    n_classes: int = 8,
    units_per_class: int = 4,
    n_poly: int = 8,
    classes_per_poly: int = 2,
    n_dead: int = 0,
    input_dim: int = 32,
    signal: float = 1.0,
    noise: float = 0.1,
    spatial: int | None = None,
    background: str | None = None,
    balanced: bool = False,
    seed: int = 0,
) -> PlantedUnits:
    """Planted class-selective units: ``n_classes * units_per_class`` monosemantic units,
    ``n_poly`` polysemantic ones (each answering to ``classes_per_poly`` random classes)
    and ``n_dead`` units that answer to nothing; shuffled along ``unit``.

    ``spatial=s`` returns activations with dims (sample, unit, y, x) of size s x s: the
    model's answer sits at the centre position, the rest is what the model gives on pure
    noise. ``background="O"`` adds one more class of that name that no unit answers to
    (a token-tagging setting, seed 004). ``balanced=True`` gives polysemantic unit ``i``
    the classes ``i, i+1, ...`` (mod ``n_classes``), so with ``n_poly = n_classes`` every
    class has the same number of units (``units_per_class + classes_per_poly``).
    """
    if n_classes < classes_per_poly or classes_per_poly < 2:
        raise ConfigError(f"classes_per_poly={classes_per_poly} must be >= 2 and <= "
                          f"n_classes={n_classes}.")
    n_all = n_classes + (1 if background else 0)
    if input_dim < n_all:
        raise ConfigError(f"input_dim={input_dim} must be >= the number of classes ({n_all}) "
                          "so the class prototypes can be orthonormal.")
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((input_dim, n_all)))
    prototypes = q.T  # (class, d), orthonormal rows
    rows = [np.eye(n_all, dtype=bool)[c] for c in range(n_classes) for _ in range(units_per_class)]
    for i in range(n_poly):
        row = np.zeros(n_all, dtype=bool)
        if balanced:
            row[(i + np.arange(classes_per_poly)) % n_classes] = True
        else:
            row[rng.choice(n_classes, size=classes_per_poly, replace=False)] = True
        rows.append(row)
    rows += [np.zeros(n_all, dtype=bool)] * n_dead
    membership = np.stack(rows)[rng.permutation(len(rows))]
    labels = rng.integers(0, n_all, size=n_samples)
    x = signal * prototypes[labels] + noise * rng.standard_normal((n_samples, input_dim))
    inputs = torch.as_tensor(x, dtype=torch.float32)
    model = PlantedClassModel(prototypes, membership, signal).eval()
    with torch.no_grad():
        acts = model(inputs).numpy()
    names = [f"class{c}" for c in range(n_classes)] + ([background] if background else [])
    coords = {"label": ("sample", np.array(names)[labels]), "unit": np.arange(len(rows))}
    if spatial:
        bg = noise * rng.standard_normal((n_samples, spatial, spatial, input_dim))
        with torch.no_grad():
            grid = model(torch.as_tensor(bg, dtype=torch.float32)).numpy()  # (s, y, x, u)
        grid[:, spatial // 2, spatial // 2, :] = acts
        da = xr.DataArray(grid.transpose(0, 3, 1, 2), dims=("sample", "unit", "y", "x"),
                          coords=coords, name="activation")
    else:
        da = xr.DataArray(acts, dims=("sample", "unit"), coords=coords, name="activation")
    return PlantedUnits(inputs=inputs, labels=labels, class_names=names,
                        membership=membership, polysemantic=membership.sum(1) >= 2,
                        model=model, activations=da, signal=signal, noise=noise)


# --------------------------------------------------------------------------- concept sets
class WordTokenizer:
    """A whitespace tokenizer with a fixed vocabulary (enough for planted texts).

    ``tok(texts)`` returns ``{"input_ids": LongTensor (batch, max_len), "attention_mask":
    ...}`` padded with id 0 (``"<pad>"``); ``convert_ids_to_tokens`` maps ids back.
    """

    def __init__(self, vocab: Sequence[str]):
        self.vocab = ["<pad>"] + [v for v in vocab if v != "<pad>"]
        self.index = {t: i for i, t in enumerate(self.vocab)}

    def __call__(self, texts: str | Sequence[str], return_tensors: str = "pt",
                 padding: bool = True, **_: Any) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        ids = [[self.index[w] for w in t.split()] for t in texts]
        n = max(len(i) for i in ids)
        out = torch.zeros(len(ids), n, dtype=torch.long)
        mask = torch.zeros(len(ids), n, dtype=torch.long)
        for r, row in enumerate(ids):
            out[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        return {"input_ids": out, "attention_mask": mask}

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab[int(i)] for i in ids]


class PlantedTokenModel(nn.Module):
    """Token ids (batch, pos) -> unit activations (batch, pos, unit) at site ``act``.

    ``embed`` holds the planted token -> unit answers; ``context`` adds a random
    function of the previous token (the noise a real model's context would add).
    """

    def __init__(self, response: np.ndarray, context_scale: float, seed: int):
        super().__init__()
        v, u = response.shape
        self.embed = nn.Embedding(v, u)
        self.context = nn.Embedding(v, u)
        self.act = nn.ReLU()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.embed.weight.copy_(torch.as_tensor(response, dtype=torch.float32))
            self.context.weight.copy_(context_scale * torch.randn(v, u, generator=g))

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None) -> torch.Tensor:
        prev = torch.nn.functional.pad(input_ids[:, :-1], (1, 0), value=0)  # <pad> first
        return self.act(self.embed(input_ids) + self.context(prev))


@dataclass
class PlantedConcepts:
    """Planted concept sets: texts, a token model and the truth.

    ``texts`` maps set name -> list of texts; ``membership`` (unit, set) bool: the sets
    whose *content* each unit answers to; ``polysemantic`` = two or more sets;
    ``shallow`` (unit,) bool: units that answer only to ``"."``; ``activations`` the
    per-token activations (sample, position, unit) with per-sample coord ``concept``,
    (sample, position) coords ``token`` and ``mask`` (False at padding).
    """

    texts: dict[str, list[str]]
    set_names: list[str]
    membership: np.ndarray
    polysemantic: np.ndarray
    shallow: np.ndarray
    shallow_sets: list[str]
    model: PlantedTokenModel
    tokenizer: WordTokenizer
    activations: xr.DataArray
    signal: float


def make_planted_concepts(
    sets: Sequence[str] = ("fortran", "spanish", "medical", "gibberish"),
    texts_per_set: int = 10,
    text_len: int = 24,
    words_per_set: int = 30,
    units_per_set: int = 6,
    n_poly: int = 4,
    n_shallow: int = 2,
    n_other: int = 8,
    period_sets: Sequence[str] = ("medical", "fortran"),
    signal: float = 1.0,
    noise: float = 0.4,
    seed: int = 0,
) -> PlantedConcepts:
    """Planted concept-set units (seed 003's setting in miniature).

    Each set has its own words; every text also uses shared words (``the``, ``,``)
    and the texts of ``period_sets`` end their sentences with ``"."``. Units:
    ``units_per_set`` per set, ``n_poly`` answering to two sets (sets ``i`` and
    ``i + 1``, so with ``n_poly = len(sets)`` each set has ``units_per_set + 2`` content
    units), ``n_shallow`` answering
    only to ``"."`` and ``n_other`` to shared words only. ``signal`` scales every planted
    answer; ``noise`` scales the context term.
    """
    rng = np.random.default_rng(seed)
    sets = list(sets)
    if len(sets) < 2:
        raise ConfigError(f"need at least two concept sets, got {sets}.")
    words = {s: [f"{s[:3]}{i}" for i in range(words_per_set)] for s in sets}
    shared = ["the", ","]
    vocab = shared + ["."] + [w for s in sets for w in words[s]]
    tok = WordTokenizer(vocab)
    texts: dict[str, list[str]] = {}
    for s in sets:
        texts[s] = []
        for _ in range(texts_per_set):
            out = []
            for i in range(text_len):
                if s in period_sets and i % 6 == 5:
                    out.append(".")
                elif rng.random() < 0.2:
                    out.append(shared[rng.integers(len(shared))])
                else:
                    out.append(words[s][rng.integers(words_per_set)])
            texts[s].append(" ".join(out))
    n_sets = len(sets)
    mem = [np.eye(n_sets, dtype=bool)[k] for k in range(n_sets) for _ in range(units_per_set)]
    kinds = ["set"] * len(mem)
    for i in range(n_poly):  # a ring: every set is in the same number of pairs
        row = np.zeros(n_sets, dtype=bool)
        row[[i % n_sets, (i + 1) % n_sets]] = True
        mem.append(row)
        kinds.append("set")
    mem += [np.zeros(n_sets, dtype=bool)] * (n_shallow + n_other)
    kinds += ["period"] * n_shallow + ["shared"] * n_other
    order = rng.permutation(len(mem))
    membership = np.stack(mem)[order]
    kinds = [kinds[i] for i in order]
    response = np.zeros((len(tok.vocab), len(kinds)))
    for u, kind in enumerate(kinds):
        if kind == "set":
            for k in np.flatnonzero(membership[u]):
                for w in words[sets[k]]:
                    response[tok.index[w], u] = signal * rng.uniform(1.0, 2.0)
        elif kind == "period":
            response[tok.index["."], u] = signal * 2.5
        else:
            for w in shared:
                response[tok.index[w], u] = signal * rng.uniform(0.5, 1.0)
    response -= 0.3 * signal  # a unit is silent on what it does not answer to
    model = PlantedTokenModel(response, noise, seed).eval()
    all_texts = [t for s in sets for t in texts[s]]
    enc = tok(all_texts)
    with torch.no_grad():
        acts = model(enc["input_ids"]).numpy()
    mask = enc["attention_mask"].numpy().astype(bool)
    tokens = np.array([tok.convert_ids_to_tokens(r) for r in enc["input_ids"].tolist()])
    da = xr.DataArray(
        acts, dims=("sample", "position", "unit"), name="activation",
        coords={"concept": ("sample", np.repeat(sets, texts_per_set)),
                "token": (("sample", "position"), tokens),
                "mask": (("sample", "position"), mask), "unit": np.arange(len(kinds))})
    shallow = np.array([k == "period" for k in kinds])
    return PlantedConcepts(texts=texts, set_names=sets, membership=membership,
                           polysemantic=membership.sum(1) >= 2, shallow=shallow,
                           shallow_sets=[s for s in sets if s in period_sets], model=model,
                           tokenizer=tok, activations=da, signal=signal)
