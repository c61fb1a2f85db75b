"""The relearning study's readings: word-level residual stream, rankings, saliency,
top words, concept similarity and polysemantic counts (seed 004).

    from polysdk.studies.relearning_analysis import record_words, rank, layer_means
    acts = record_words(model, encoded, sites, word_types)   # (sample=word, unit=neuron)
    res = rank(acts, ["PER", "LOC", "ORG", "DATE"], top_n=538)   # ConceptRanking result_
    layer_means(res["saliency"].sel(concept="LOC").values, acts["layer"].values, 7)

A "neuron" is one dimension of the residual stream at one layer (embeddings + every
block, as NeuroX reads DistilBERT: 7 x 768 = 5376); its value for a word is the mean
over the word's pieces (NeuroX ``extract_representations``). Everything is read through
:class:`~polysdk.probe.Probe` on the LayerNorms that write the stream
(:func:`polysdk.models.token_classifier.residual_sites`), padding never counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from polysdk.errors import ConfigError

__all__ = ["record_words", "rank", "layer_means", "top_words", "word_embeddings",
           "concept_similarity", "polysemantic_counts", "pieces_to_words"]


def pieces_to_words(acts: np.ndarray, sample: np.ndarray, position: np.ndarray,
                    word_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over each word's pieces of flat token rows ``acts`` (token, unit).

    ``sample``/``position``: each row's text and index among its real tokens (Probe's
    flat-token coordinates); ``word_ids[text][position]``: the word of that piece (-1
    for special tokens). Returns (words, unit) and each word's (text, word index)
    key, ordered by text then word.

    >>> a = np.array([[0.], [1.], [3.], [5.], [0.]])
    >>> w, key = pieces_to_words(a, np.zeros(5, int), np.arange(5), [[-1, 0, 0, 1, -1]])
    >>> w.ravel().tolist(), key.tolist()
    ([2.0, 5.0], [[0, 0], [0, 1]])
    """
    wid = np.array([word_ids[s][p] for s, p in zip(sample.tolist(), position.tolist())],
                   dtype=np.int64)
    keep = wid >= 0
    s, w, a = np.asarray(sample)[keep], wid[keep], np.asarray(acts)[keep]
    order = np.lexsort((w, s))
    s, w, a = s[order], w[order], a[order]
    new = np.ones(len(s), bool)
    new[1:] = (s[1:] != s[:-1]) | (w[1:] != w[:-1])
    starts = np.flatnonzero(new)
    sums = np.add.reduceat(a.astype(np.float64), starts, axis=0)
    counts = np.diff(np.append(starts, len(s)))
    return (sums / counts[:, None]).astype(np.float32), np.stack([s[starts], w[starts]], 1)


def record_words(model: Any, encoded: Sequence[Mapping[str, Any]], sites: Sequence[str],
                 word_types: Sequence[Sequence[str]], words: Sequence[Sequence[str]],
                 batch_size: int = 64, components: Sequence[Any] = ()) -> xr.DataArray:
    """The residual stream at ``sites``, one row per word: DataArray (sample, unit)
    with coords ``label`` (the word's entity type), ``word``, ``text``; unit coords
    ``layer`` (index of the site) and ``dim`` (index within it). ``components`` (e.g.
    activation-mode UnitMasks) stay attached while recording."""
    import torch

    from polysdk import Probe
    from polysdk.data.ner import batches

    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    probe = Probe(model, list(sites), reduce="none")
    try:
        for c in components:
            c.attach()
        with torch.no_grad(), probe:
            for batch in batches(encoded, batch_size, with_labels=False):
                model(**{k: v.to(dev) for k, v in batch.items()})
        recorded = probe.activations
    finally:
        for c in reversed(components):
            c.detach()
        model.train(was)
    wids = [e["word_ids"] for e in encoded]
    parts, key = [], None
    for site in sites:
        da = recorded[site]
        if da.dims != ("token", "unit"):
            raise ConfigError(f"expected flat (token, unit) activations at {site!r}, got "
                              f"{da.dims}; the site must output (batch, position, hidden).")
        w, k = pieces_to_words(da.values, da["sample"].values, da["position"].values, wids)
        if key is not None and not np.array_equal(k, key):
            raise ConfigError(f"site {site!r} saw other words than {sites[0]!r}.")
        key = k
        parts.append(w)
    assert key is not None
    widths = [p.shape[1] for p in parts]
    layer = np.repeat(np.arange(len(parts)), widths)
    dim = np.concatenate([np.arange(n) for n in widths])
    labels = np.array([word_types[t][i] for t, i in key.tolist()])
    text = np.array([words[t][i] for t, i in key.tolist()])
    return xr.DataArray(np.concatenate(parts, axis=1), dims=("sample", "unit"), coords={
        "label": ("sample", labels), "word": ("sample", text), "text": ("sample", key[:, 0]),
        "layer": ("unit", layer), "dim": ("unit", dim)}, name="activation")


def rank(acts: xr.DataArray, concepts: Sequence[str], top_n: int, method: str = "mean_diff",
         **kwargs: Any) -> xr.Dataset:
    """:class:`~polysdk.detect.ConceptRanking` of ``acts`` for ``concepts`` (every other
    label, "O" included, is "the rest"); returns its ``result_``."""
    from polysdk.detect import ConceptRanking

    det = ConceptRanking(method=method, top_n=int(top_n), concepts=list(concepts), **kwargs)
    return det.fit(acts).result_


def layer_means(values: np.ndarray, layer: np.ndarray, n_layers: int) -> np.ndarray:
    """Mean of ``values`` per layer (NaN-aware).

    >>> layer_means(np.array([1., 3., 5.]), np.array([0, 0, 1]), 2).tolist()
    [2.0, 5.0]
    """
    out = np.full(n_layers, np.nan)
    for i in range(n_layers):
        v = values[layer == i]
        if v.size and np.isfinite(v).any():
            out[i] = np.nanmean(v)
    return out


def top_words(acts: xr.DataArray, k: int) -> np.ndarray:
    """(unit, k) indices of the words with the highest activation of each unit, over
    distinct word strings (a frequent word counts once: its best occurrence)."""
    words = acts["word"].values
    low = np.char.lower(words.astype(str))
    _, first = np.unique(low, return_index=True)
    first = np.sort(first)
    a = acts.values
    # best occurrence of each distinct word: max over its rows
    inv = np.unique(low, return_inverse=True)[1]
    best = np.full((len(first), a.shape[1]), -np.inf, dtype=np.float32)
    idx_of = {v: j for j, v in enumerate(inv[first].tolist())}
    rows = np.array([idx_of[v] for v in inv.tolist()])
    np.maximum.at(best, rows, a)
    kk = min(int(k), len(first))
    part = np.argpartition(-best, kk - 1, axis=0)[:kk]
    order = np.take_along_axis(best, part, axis=0).argsort(axis=0)[::-1]
    top = np.take_along_axis(part, order, axis=0)
    return first[top].T   # row index (into acts' samples) of each top word


def word_embeddings(model: Any, tokenizer: Any, words: Sequence[str]) -> np.ndarray:
    """Each word's input embedding in ``model``: the mean of its pieces' rows of the
    word-embedding matrix (the seed compares top tokens by word embeddings)."""
    import torch

    emb = model.get_input_embeddings().weight.detach().cpu().numpy()
    out = np.zeros((len(words), emb.shape[1]), dtype=np.float32)
    for i, w in enumerate(words):
        ids = tokenizer(str(w), add_special_tokens=False)["input_ids"]
        if ids:
            out[i] = emb[ids].mean(0)
    del torch
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-12)


def concept_similarity(before: np.ndarray, after: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """Per unit: cosine between the mean embedding of its top words ``before`` and of
    those ``after`` ((unit, k) word indices into ``emb``'s rows).

    >>> e = np.eye(3)
    >>> concept_similarity(np.array([[0, 1]]), np.array([[0, 1]]), e).round(3).tolist()
    [1.0]
    """
    return _cos(emb[before].mean(1), emb[after].mean(1))


def polysemantic_counts(top: xr.DataArray, concept: str, layer: np.ndarray,
                        n_layers: int) -> dict[str, np.ndarray]:
    """Per layer: ``concept_top`` (units in the concept's top set) and ``poly`` (of
    those, units also in the top set of another concept); ``poly_with`` (layer,
    other concept)."""
    t = top.values.astype(bool)
    concepts = [str(c) for c in top["concept"].values]
    j = concepts.index(concept)
    others = [i for i in range(len(concepts)) if i != j]
    mine = t[:, j]
    poly = mine & t[:, others].any(1) if others else np.zeros_like(mine)
    count = lambda m: np.bincount(layer[m], minlength=n_layers)   # noqa: E731
    with_each = np.stack([count(mine & t[:, i]) for i in others], 1) if others else \
        np.zeros((n_layers, 0), int)
    return {"concept_top": count(mine), "poly": count(poly), "poly_with": with_each,
            "others": np.array([concepts[i] for i in others])}
