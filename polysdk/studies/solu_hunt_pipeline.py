"""The SoLU neuron hunt's pipeline (seed 003): record, rank, candidates, verdicts.

    from polysdk.studies.solu_hunt_pipeline import record, analyse, scaled_top_k
    rec = record(model, tok, corpus, sites, "out/tokens/solu.zarr", max_len=256)
    k = scaled_top_k(100, rec.sizes["neuron"])          # the seed's top 100 of 8192, scaled
    res = analyse(rec, "out/tokens/solu.zarr", top_k=k)  # candidates, token types, verdicts

:func:`record` runs the model over every concept-set text (dynamically padded batches;
texts longer than ``max_len`` are cut with a warning saying how many tokens were
dropped) and streams every MLP neuron's per-token activations, real tokens only, into
a per-token store (``(token, unit)`` per site, ``sample``/``position``/``token_id``
coordinates). Padding never counts; BOS / [CLS] / [SEP] count only with
``count_special=True`` (the seed's TransformerLens mean included TL's BOS). From that
store, streamed: each text's mean of every neuron over its tokens (``text_mean``) and
over its content tokens only (``content_mean``: punctuation, digits, whitespace and
special tokens left out, see :mod:`polysdk.detect.token_types`).

:func:`analyse`: a set's activation is the mean of its texts' means; a neuron is active
on a set when it is in that set's top ``top_k`` of all the model's neurons (every layer
together, as the seed); candidates are active on exactly ``exactly`` sets (2), with the
seed's narrower filter as an option (``require=("fortran",), exclude=("gibberish",)``).
For each candidate and each of its two sets: each token type's share of its positive
activation mass, its rank when the set means are recomputed without shallow tokens
(every neuron alike), and without the sub-words the two sets share. Verdict:

* ``shallow cause``: on one of its sets shallow tokens carry >= ``shallow_share`` of
  the mass, or without them it leaves that set's top ``top_k``;
* ``polysemantic``: on both sets it stays in the top ``top_k`` on tokens that are
  neither shallow nor shared by the two sets, and word fragments (WordPiece ``##x``, a
  token continuing the word before) do not carry >= ``shallow_share`` on both sets;
* ``unclear``: the rest (it needs the sub-words both sets share, or fragments carry
  it on both sets: a tokenizer feature rather than two concepts), with the evidence.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from polysdk.detect.token_types import (SHALLOW, TYPES, attribute, fragments, token_type,
                                         token_types)
from polysdk.errors import ConfigError, DetectorInputError, PolysdkWarning

__all__ = ["record", "analyse", "scaled_top_k", "encode", "Plant", "SEED_NEURONS",
           "TruncationWarning"]

#: the seed's model: solu-4l, 4 layers x 2048 MLP neurons
SEED_NEURONS = 8192


class TruncationWarning(PolysdkWarning):
    """Texts were longer than the model's context and were cut."""


def scaled_top_k(top_k: int, n_neurons: int, reference: int | None = SEED_NEURONS) -> int:
    """``top_k`` of ``reference`` neurons scaled to ``n_neurons`` (None: unscaled);
    at least 1. Raises when it exceeds the neuron count.

    >>> scaled_top_k(100, 8192), scaled_top_k(100, 9216), scaled_top_k(100, 1024)
    (100, 112, 12)
    """
    k = int(top_k) if reference is None else max(1, int(round(top_k * n_neurons / reference)))
    if k < 1 or k > n_neurons:
        raise ConfigError(f"top_k={top_k} gives {k} of {n_neurons} neurons; it must be between "
                          f"1 and the model's neuron count ({n_neurons}): lower top_k.")
    return k


# ----------------------------------------------------------------------------- record
def encode(tokenizer: Any, texts: Sequence[str], labels: Sequence[str], max_len: int
           ) -> tuple[list[list[int]], dict[str, int]]:
    """Token ids of each text (the tokenizer's special tokens included), cut to
    ``max_len`` with a :class:`TruncationWarning`; returns (ids, tokens dropped per set)."""
    ids = [list(x) for x in tokenizer(list(texts))["input_ids"]]
    dropped: dict[str, int] = {}
    cut = 0
    for i, x in enumerate(ids):
        if len(x) > max_len:
            dropped[labels[i]] = dropped.get(labels[i], 0) + len(x) - max_len
            keep_last = x[-1] if x[-1] in getattr(tokenizer, "all_special_ids", []) else None
            x = x[:max_len]
            if keep_last is not None:   # BERT's [SEP] stays last
                x[-1] = keep_last
            ids[i] = x
            cut += 1
    if dropped:
        total = sum(dropped.values())
        per = ", ".join(f"{k}: {v}" for k, v in dropped.items())
        warnings.warn(f"{cut} of {len(ids)} texts are longer than the model's context of "
                      f"{max_len} tokens and were cut: {total} tokens dropped ({per}). "
                      "Shorten the texts (max_chars) or use a model with a longer context.",
                      TruncationWarning, stacklevel=2)
    return ids, dropped


class Plant:
    """Planted ground truth: while attached, each ``(site, unit)`` of ``plants`` outputs
    ``value`` at the tokens whose id is in its set and 0 everywhere else.
    Call :meth:`set_ids` with each batch's ``input_ids`` before the forward."""

    def __init__(self, model: Any, plants: Mapping[tuple[str, int], Sequence[int]],
                 value: float = 8.0) -> None:
        self.model, self.plants, self.value = model, dict(plants), float(value)
        self._ids: Any = None

    def set_ids(self, ids: Any) -> None:
        self._ids = ids

    def hooks(self) -> list[Any]:
        import torch

        from polysdk.sites import Hooks

        by_site: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for (site, unit), toks in self.plants.items():
            by_site.setdefault(site, []).append((int(unit), torch.as_tensor(list(toks))))

        def make(site: str) -> Callable[[str, Any], Any]:
            def fn(_: str, out: Any) -> Any:
                out = out.clone()
                for unit, toks in by_site[site]:
                    hit = torch.isin(self._ids.to(out.device), toks.to(out.device))
                    out[..., unit] = torch.where(hit, self.value, 0.0).to(out.dtype)
                return out
            return fn
        return [Hooks(self.model, site, make(site)) for site in by_site]


def _batches(ids: list[list[int]], pad: int, batch_size: int, special: set[int],
             count_special: bool) -> list[dict[str, Any]]:
    import torch

    out = []
    for s in range(0, len(ids), batch_size):
        chunk = ids[s:s + batch_size]
        width = max(len(x) for x in chunk)
        x = torch.full((len(chunk), width), pad, dtype=torch.long)
        m = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, row in enumerate(chunk):
            x[i, :len(row)] = torch.as_tensor(row)
            m[i, :len(row)] = 1
        counted = m.clone()
        if not count_special:
            counted[torch.isin(x, torch.as_tensor(sorted(special)))] = 0
        out.append({"input_ids": x, "attention_mask": m, "counted": counted,
                    "_row": np.arange(s, s + len(chunk))})
    return out


def _vocab_types(tokenizer: Any, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(token strings, types) of the given token ids."""
    uniq, inv = np.unique(ids, return_inverse=True)
    strings = np.asarray(tokenizer.convert_ids_to_tokens(uniq.tolist()), dtype=object)
    special = set(getattr(tokenizer, "all_special_tokens", []))
    types = np.array(["special" if s in special else token_type(s) for s in strings],
                     dtype=object)
    inv = inv.reshape(-1)
    return strings[inv].astype(str), types[inv].astype(str)


def _text_means(arr: xr.DataArray, keep: np.ndarray | None, n_texts: int) -> np.ndarray:
    """(text, unit) float64 means over the kept tokens (NaN for a text with none)."""
    from polysdk.dims import reduce_texts

    sub = arr if keep is None else arr.isel(token=np.flatnonzero(keep))
    out = np.full((n_texts, arr.sizes["unit"]), np.nan)
    if sub.sizes["token"]:
        red = reduce_texts(sub, "mean")
        out[np.asarray(red["sample"].values, dtype=np.int64)] = np.asarray(red.values)
    return out


def record(model: Any, tokenizer: Any, corpus: Any, sites: Sequence[str],
           store_path: str | Path, *, max_len: int, kind: str = "tl",
           count_special: bool = False, batch_size: int = 8, plant: Plant | None = None,
           progress: bool = False) -> xr.Dataset:
    """Record every neuron of ``sites`` over ``corpus`` (see the module docstring).

    ``kind``: ``"tl"`` (a TransformerLens bridge: ``model(ids, attention_mask=)``) or
    ``"hf"`` (``model(input_ids=, attention_mask=)``). Returns a Dataset over ``text``
    and ``neuron`` (``layer``/``unit``/``site`` coords) with ``text_mean`` and
    ``content_mean``, the per-token table (``tok_*`` over ``tok``) and the set names.
    """
    import torch

    from polysdk.probe import Probe
    from polysdk.sites import resolve_sites
    from polysdk.store import ActivationStore

    texts, labels = corpus.flat()
    resolve_sites(model, list(sites))   # a bad hook name: SiteNotFoundError, closest names
    ids, dropped = encode(tokenizer, texts, labels, max_len)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = _batches(ids, pad, batch_size, special, count_special)
    if any(int(b["counted"].sum(1).min()) == 0 for b in batches):
        raise DetectorInputError("a text has no tokens left once special tokens are left out; "
                                 "drop empty texts from the concept sets.")

    def forward(m: Any, b: Mapping[str, Any]) -> Any:
        if plant is not None:
            plant.set_ids(b["input_ids"])
        if kind == "tl":
            return m(b["input_ids"], attention_mask=b["attention_mask"])
        return m(input_ids=b["input_ids"], attention_mask=b["attention_mask"])

    path = Path(store_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack, torch.no_grad():
        for h in (plant.hooks() if plant is not None else []):   # before the Probe's hooks
            stack.enter_context(h)
        store = stack.enter_context(ActivationStore(path, mode="w"))
        Probe(model, list(sites), store=store).run(
            batches, forward=forward, mask=lambda b: b["counted"], progress=progress,
            coords=lambda b: {"text_set": np.asarray(labels)[b["_row"]]})
    store = ActivationStore(path, mode="r")
    first = store[sites[0]]
    tok_ids = np.asarray(first["token_id"].values, dtype=np.int64)
    strings, types = _vocab_types(tokenizer, tok_ids)
    content = ~np.isin(types, SHALLOW)
    means, cmeans, layer, unit, site_of = [], [], [], [], []
    for li, site in enumerate(sites):
        arr = store[site]
        means.append(_text_means(arr, None, len(texts)))
        cmeans.append(_text_means(arr, content, len(texts)))
        n = arr.sizes["unit"]
        layer += [li] * n
        unit += list(range(n))
        site_of += [site] * n
    ds = xr.Dataset(
        {"text_mean": (("text", "neuron"), np.concatenate(means, 1)),
         "content_mean": (("text", "neuron"), np.concatenate(cmeans, 1)),
         "tok_text": ("tok", np.asarray(first["sample"].values, dtype=np.int64)),
         "tok_position": ("tok", np.asarray(first["position"].values, dtype=np.int64)),
         "tok_id": ("tok", tok_ids), "tok_str": ("tok", strings), "tok_type": ("tok", types),
         "text_set": ("text", np.asarray(labels)),
         "text_tokens": ("text", np.asarray([len(x) for x in ids]))},
        coords={"text": np.arange(len(texts)), "neuron": np.arange(len(layer)),
                "layer": ("neuron", np.asarray(layer)), "unit": ("neuron", np.asarray(unit)),
                "site": ("neuron", np.asarray(site_of)), "set": corpus.names})
    ds["text_body"] = ("text", np.asarray(texts))
    ds.attrs.update(count_special=int(bool(count_special)), max_len=int(max_len),
                    tokens_dropped=int(sum(dropped.values())),
                    dropped_per_set=str(dropped), store=str(path), sites=list(sites))
    return ds


# ----------------------------------------------------------------------------- analyse
def _set_means(text_mean: np.ndarray, text_set: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """(neuron, set) mean of the texts' means (NaN texts skipped)."""
    out = np.empty((text_mean.shape[1], len(names)))
    for j, s in enumerate(names):
        rows = text_mean[text_set == s]
        if rows.shape[0] == 0:
            raise DetectorInputError(f"concept set {s!r} has no texts; give it texts or drop it.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[:, j] = np.nanmean(rows, 0)
    return out


def _ranks(set_act: np.ndarray) -> np.ndarray:
    """1 = highest, per set column (NaN last)."""
    x = np.where(np.isfinite(set_act), set_act, -np.inf)
    order = np.argsort(-x, axis=0, kind="stable")
    rank = np.empty_like(order)
    cols = np.arange(x.shape[1])[None, :]
    rank[order, cols] = np.arange(1, x.shape[0] + 1)[:, None]
    return rank


def _fmt_share(shares: Mapping[str, float]) -> str:
    parts = [f"{100 * v:.0f}% {k}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])
             if v >= 0.05]
    return ", ".join(parts) or "no positive activation"


def analyse(rec: xr.Dataset, store_path: str | Path | None = None, *, top_k: int,
            exactly: int = 2, require: Sequence[str] = (), exclude: Sequence[str] = (),
            shallow_share: float = 0.5, top_tokens: int = 3,
            token_values: Mapping[str, np.ndarray] | None = None,
            extra: Sequence[int] = ()) -> xr.Dataset:
    """Ranks, candidates, token-type attribution and verdicts (module docstring).

    Per-token values of the candidates are read from the per-token store at
    ``store_path`` (or given as ``token_values`` {site: (tok, unit) array}). ``extra``
    neurons (planted ones) get a verdict too, on their two highest-ranked sets, whether
    or not they are candidates (``is_candidate`` says).
    """
    names = [str(s) for s in rec["set"].values]
    for s in list(require) + list(exclude):
        if s not in names:
            raise ConfigError(f"the filter names set {s!r}, which is not a concept set "
                              f"({names}).")
    n = rec.sizes["neuron"]
    if not 1 <= int(top_k) <= n:
        raise ConfigError(f"top_k={top_k} but the model has {n} neurons; use 1..{n}.")
    text_set = rec["text_set"].values.astype(str)
    set_act = _set_means(rec["text_mean"].values, text_set, names)
    rank = _ranks(set_act)
    active = rank <= int(top_k)
    c_rank = _ranks(_set_means(rec["content_mean"].values, text_set, names))
    n_sets = active.sum(1)
    cand = n_sets == int(exactly)
    narrow = cand.copy()
    for s in require:
        narrow &= active[:, names.index(s)]
    for s in exclude:
        narrow &= ~active[:, names.index(s)]
    ds = xr.Dataset({
        "set_activation": (("neuron", "set"), set_act), "rank": (("neuron", "set"), rank),
        "active": (("neuron", "set"), active), "content_rank": (("neuron", "set"), c_rank),
        "n_sets": ("neuron", n_sets), "candidate": ("neuron", cand),
        "narrow_candidate": ("neuron", narrow)},
        coords={"neuron": rec["neuron"].values, "set": names,
                "layer": ("neuron", rec["layer"].values), "unit": ("neuron", rec["unit"].values)})
    ds.attrs.update(top_k=int(top_k), exactly=int(exactly), require=list(require),
                    exclude=list(exclude), shallow_share=float(shallow_share))
    idx = np.union1d(np.flatnonzero(cand), np.asarray(extra, dtype=np.int64))
    # ---- per-token values of the candidates
    tok_text = rec["tok_text"].values
    tok_set = text_set[tok_text]
    tok_str = rec["tok_str"].values.astype(str)
    vals = np.zeros((tok_text.size, idx.size))
    if idx.size:
        sites = rec["site"].values.astype(str)
        store = None
        if token_values is None:
            from polysdk.store import ActivationStore

            store = ActivationStore(store_path or rec.attrs["store"], mode="r")
        for site in dict.fromkeys(sites[idx]):
            cols = np.flatnonzero(sites[idx] == site)
            units = rec["unit"].values[idx[cols]]
            arr = token_values[site] if token_values is not None else \
                store[site].transpose("token", "unit")
            vals[:, cols] = np.asarray(arr[:, units] if token_values is not None
                                       else arr.isel(unit=units).values, dtype=np.float64)
    # ---- attribution and verdicts
    frag = fragments(tok_str, rec["tok_position"].values)
    frag_share = np.zeros((idx.size, 2))
    pair_rank: dict[tuple[str, str], np.ndarray] = {}
    rows: dict[str, list[Any]] = {k: [] for k in ("pair_a", "pair_b", "verdict", "evidence")}
    share = np.zeros((idx.size, 2, len(TYPES)))
    ranks3 = np.zeros((idx.size, 2, 3), dtype=np.int64)   # all tokens, content, distinct
    tops = np.full((idx.size, 2), "", dtype=object)
    for j, u in enumerate(idx):
        if cand[u]:
            pair = tuple(np.asarray(names)[active[u]])
        else:   # an extra neuron: its two best sets, in set order
            pair = tuple(np.asarray(names)[np.sort(np.argsort(rank[u], kind="stable")[:2])])
        a, b = pair
        if pair not in pair_rank:   # ranks with the shared sub-words removed too, all neurons
            types_pair = token_types(tok_str, tok_set, pair)
            # only the pair's texts: the ranks are read on its two sets alone
            keep = ~np.isin(types_pair, list(SHALLOW) + ["shared"]) & np.isin(tok_set, pair)
            pair_rank[pair] = (types_pair, _ranks(_set_means(
                _distinct_means(rec, keep, store_path, token_values), text_set, names)))
        types_pair, d_rank = pair_rank[pair]
        evidence, shallow, distinct_ok = [], False, True
        for side, s in enumerate(pair):
            si = names.index(s)
            on = tok_set == s
            sh = attribute(vals[on, j], types_pair[on], tok_text[on])
            share[j, side] = [sh[t] for t in TYPES]
            ranks3[j, side] = (rank[u, si], c_rank[u, si], d_rank[u, si])
            mass = np.clip(vals[on, j], 0, None) / np.bincount(tok_text)[tok_text[on]]
            order = np.argsort(-mass)[:top_tokens]
            tops[j, side] = " ".join(repr(str(tok_str[on][k])) for k in order)
            shallow_mass = sum(sh[t] for t in SHALLOW)
            pos = np.clip(vals[on, j], 0, None) / np.bincount(tok_text)[tok_text[on]]
            frag_share[j, side] = pos[frag[on]].sum() / pos.sum() if pos.sum() > 0 else 0.0
            is_shallow = shallow_mass >= shallow_share or c_rank[u, si] > top_k
            shallow |= is_shallow
            distinct_ok &= d_rank[u, si] <= top_k
            evidence.append(f"{s}: {_fmt_share(sh)}; rank {rank[u, si]}, "
                            f"{c_rank[u, si]} without shallow tokens, {d_rank[u, si]} also "
                            f"without shared sub-words; {100 * frag_share[j, side]:.0f}% on "
                            f"word fragments; top tokens {tops[j, side]}")
        fragmentary = bool((frag_share[j] >= shallow_share).all())
        verdict = ("shallow cause" if shallow else "polysemantic" if distinct_ok
                   and not fragmentary else "unclear")
        if verdict == "unclear" and fragmentary and distinct_ok:
            evidence.append("carried by word fragments on both sets (a tokenization "
                            "feature rather than two concepts?)")
        rows["pair_a"].append(a)
        rows["pair_b"].append(b)
        rows["verdict"].append(verdict)
        rows["evidence"].append(" | ".join(evidence))
    cds = xr.Dataset({
        "cand_neuron": ("cand", idx), "cand_layer": ("cand", rec["layer"].values[idx]),
        "cand_unit": ("cand", rec["unit"].values[idx]),
        "pair_a": ("cand", np.asarray(rows["pair_a"], dtype=str)),
        "pair_b": ("cand", np.asarray(rows["pair_b"], dtype=str)),
        "verdict": ("cand", np.asarray(rows["verdict"], dtype=str)),
        "evidence": ("cand", np.asarray(rows["evidence"], dtype=str)),
        "narrow": ("cand", narrow[idx]), "is_candidate": ("cand", cand[idx]),
        "type_share": (("cand", "side", "type"), share),
        "side_ranks": (("cand", "side", "rank_kind"), ranks3),
        "top_tokens": (("cand", "side"), tops.astype(str)),
        "fragment_share": (("cand", "side"), frag_share),
        "token_value": (("tok", "cand"), vals.astype(np.float32)),
    }, coords={"type": list(TYPES), "rank_kind": ["all", "content", "distinct"],
               "side": [0, 1]})
    return xr.merge([ds, cds, rec[["tok_text", "tok_position", "tok_str", "tok_type",
                                   "text_set", "text_body"]]])


def _distinct_means(rec: xr.Dataset, keep: np.ndarray, store_path: Any,
                    token_values: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """(text, neuron) means over the ``keep`` tokens, every site (streamed from the store)."""
    n_texts = rec.sizes["text"]
    sites = list(dict.fromkeys(rec["site"].values.astype(str)))
    parts = []
    if token_values is not None:
        tok_text = rec["tok_text"].values
        for site in sites:
            v = np.asarray(token_values[site], dtype=np.float64)
            sums = np.zeros((n_texts, v.shape[1]))
            np.add.at(sums, tok_text[keep], v[keep])
            cnt = np.bincount(tok_text[keep], minlength=n_texts)[:, None]
            with np.errstate(invalid="ignore", divide="ignore"):
                parts.append(np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan))
        return np.concatenate(parts, 1)
    from polysdk.store import ActivationStore

    store = ActivationStore(store_path or rec.attrs["store"], mode="r")
    for site in sites:
        parts.append(_text_means(store[site], keep, n_texts))
    return np.concatenate(parts, 1)
