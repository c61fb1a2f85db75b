"""``ConceptSets``: a unit is polysemantic when it is active on two or more named sets of
texts (seed 003: Fortran code, Spanish poetry, medical text, gibberish), with a per-token
check that shows when a set's activation comes from one shallow token (a "medical"
neuron that only fires on ".")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from polysdk.detect._constraints import FLAG, OPTIONAL_SEQUENCE, OPTIONAL_STR, STR
from polysdk.detect._stream import (TOKEN_COORDS, as_dask, compute, grouped_sum, is_flat,
                                    label_codes, prepare, real_values, select, text_labels,
                                    token_values)
from polysdk.detect.base import Detector
from polysdk.errors import DetectorInputError
from polysdk.params import Interval, Options
from polysdk.sites import Hooks

__all__ = ["ConceptSets"]


class ConceptSets(Detector):
    """Concept-set activity from per-token activations (seed 003).

    Input: per-token activations in either text layout: flat (``token``, ``unit``) with
    per-token ``sample`` (which text) and ``position`` coordinates, or padded
    (``sample``, ``position``, ``unit``) with an ``attention_mask`` (or ``mask``,
    or ``mask_coord``) coordinate, False / 0 at padding. A coordinate names each text's
    set (``set_coord``, default ``"concept"``; per text, or per token and the same on all
    of a text's tokens); the token types come from ``token_coord`` (default: the first of
    ``token``, ``token_str``, ``token_id`` found along the tokens). :meth:`record` builds
    it from a model and a tokenizer. A (``sample``, ``unit``) input is read as one token
    per text. Padding never counts: not in a text's mean, not as a token type.

    A unit's activation on a text is its mean over the text's real tokens; on a
    set, the mean over the set's texts (``aggregate="max"``: their max). It is *active*
    on a set when it is among the set's ``top_n`` units (100, as the seed) or, with
    ``threshold`` set, when its set activation exceeds it. Polysemantic: active on two or
    more sets (``min_sets``), or on exactly ``exactly`` sets (the seed used 2).

    Token check: for every unit active on some set, each token type's share of the
    unit's positive activation mass on that set (per text, sum over that type's
    positions / text length, averaged over the set's texts). ``top_token`` and
    ``top_token_share`` name the type that carries most; ``shallow`` marks active
    (unit, set) pairs where one type carries at least ``shallow_share`` of it. With
    ``exclude_shallow=True`` such sets do not count towards polysemanticity.

    Attributes
    ----------
    result_ : xr.Dataset
        ``set_activation``, ``set_rank`` (1 = highest), ``active``, ``top_token``,
        ``top_token_share``, ``shallow`` (all unit x set); ``n_sets``; ``score`` (the
        number of counted sets); ``polysemantic``; and, with ``keep_tokens``,
        ``token_activation`` (sample, position, poly_unit) for the polysemantic units
        (see :meth:`heatmap`).

    Examples
    --------
    >>> from polysdk.data import make_planted_concepts
    >>> pc = make_planted_concepts(seed=0)  # 8 content units per set
    >>> det = ConceptSets(top_n=8, exclude_shallow=True).fit(pc.activations)
    >>> bool((det.result_["polysemantic"].values == pc.polysemantic).all())
    True
    """

    registry_name = "concept_sets"
    needs_labels = True
    extra_dims = ("position",)
    _checks_finite_itself = True
    _constraints = {
        "top_n": Interval(1, None, integer=True),
        "threshold": Interval(allow_none=True),
        "aggregate": Options("mean", "max"),
        "min_sets": Interval(2, None, integer=True),
        "exactly": Interval(1, None, integer=True, allow_none=True),
        "sets": OPTIONAL_SEQUENCE,
        "set_coord": STR,
        "token_coord": OPTIONAL_STR,
        "mask_coord": OPTIONAL_STR,
        "shallow_share": Interval(0, 1, closed="right"),
        "exclude_shallow": FLAG,
        "keep_tokens": FLAG,
    }

    def __init__(self, top_n: int = 100, threshold: float | None = None,
                 aggregate: str = "mean", min_sets: int = 2, exactly: int | None = None,
                 sets: Sequence[str] | None = None, set_coord: str = "concept",
                 token_coord: str | None = None, mask_coord: str | None = None,
                 shallow_share: float = 0.5, exclude_shallow: bool = False,
                 keep_tokens: bool = True):
        self.top_n = top_n
        self.threshold = threshold
        self.aggregate = aggregate
        self.min_sets = min_sets
        self.exactly = exactly
        self.sets = sets
        self.set_coord = set_coord
        self.token_coord = token_coord
        self.mask_coord = mask_coord
        self.shallow_share = shallow_share
        self.exclude_shallow = exclude_shallow
        self.keep_tokens = keep_tokens
        self._validate_params()

    @property
    def label_coord(self) -> str:  # type: ignore[override]
        return self.set_coord

    # ------------------------------------------------------------------ record
    @staticmethod
    def record(model: Any, tokenizer: Any, sets: Mapping[str, Sequence[str]], site: str,
               batch_size: int = 8, max_length: int | None = None) -> xr.DataArray:
        """Record per-token activations at ``site`` for named sets of texts.

        ``tokenizer(texts, return_tensors="pt", padding=True)`` must return
        ``input_ids`` and ``attention_mask`` (Hugging Face style); the model is called
        with both, ``batch_size`` texts at a time, with a forward hook on ``site``
        (:class:`polysdk.sites.Hooks`, removed afterwards; the site's output is read as
        (sample, position, unit)). Returns the padded array :meth:`fit` expects, named
        after the site: dims (sample, position, unit) with coords ``concept``,
        ``token`` (strings when the tokenizer can convert ids) and ``attention_mask``.
        """
        import torch

        names, texts = [], []
        if not sets:
            raise DetectorInputError("sets is empty; pass {'set name': [text, ...], ...}.")
        for name, items in sets.items():
            items = [items] if isinstance(items, str) else list(items)
            if not items:
                raise DetectorInputError(
                    f"concept set {name!r} has no texts; give it at least one text or drop it "
                    "from sets.")
            names += [name] * len(items)
            texts += items
        kw: dict[str, Any] = {"return_tensors": "pt", "padding": True}
        if max_length:
            kw.update(truncation=True, max_length=max_length)
        enc = tokenizer(texts, **kw)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        seen: list[Any] = []

        def keep(_: str, t: Any) -> None:
            seen.append(t.detach().cpu())

        chunks = []
        with Hooks(model, site, keep), torch.no_grad():
            for s in range(0, len(texts), max(1, int(batch_size))):
                seen.clear()
                model(input_ids=ids[s: s + batch_size], attention_mask=mask[s: s + batch_size])
                if not seen or seen[-1].ndim != 3:
                    got = f"dims of rank {seen[-1].ndim}" if seen else "nothing"
                    raise DetectorInputError(
                        f"site {site!r} gave {got}, not (sample, position, unit); choose a "
                        "site with per-token outputs.")
                t = seen[-1]
                chunks.append((t if t.dtype in (torch.float32, torch.float64) else t.float())
                              .numpy())
        tok = np.asarray(ids)
        convert = getattr(tokenizer, "convert_ids_to_tokens", None)
        if convert is not None:
            tok = np.array([convert(r) for r in tok.tolist()])
        return xr.DataArray(
            np.concatenate(chunks), dims=("sample", "position", "unit"), name=site,
            coords={"concept": ("sample", np.asarray(names)),
                    "token": (("sample", "position"), tok),
                    "attention_mask": (("sample", "position"), np.asarray(mask).astype(bool))},
            attrs={"site": site})

    # ------------------------------------------------------------------ fit
    def _detect(self, activations: xr.DataArray, labels: xr.DataArray | None, *,
                client: Any = None) -> xr.Dataset:
        acts = as_dask(activations)
        if not is_flat(acts) and "position" not in acts.dims:
            acts = acts.expand_dims(position=1, axis=1)  # one token per text
        acts = prepare(acts, self.mask_coord)
        flat = is_flat(acts)
        if not flat:
            acts = acts.transpose("sample", "position", "unit")
        n_units = acts.sizes["unit"]
        set_of_text = text_labels(acts, labels, what="concept labels")
        if self.sets is not None:
            present = set(set_of_text.tolist())
            empty = [s for s in self.sets if s not in present]
            if empty:
                raise DetectorInputError(
                    f"concept set(s) {empty} have no texts in the activations (sets present: "
                    f"{sorted(present)}); record texts for them or drop them from sets=.")
        codes, set_names = label_codes(set_of_text, self.sets)
        if self.threshold is None and int(self.top_n) > n_units:
            raise DetectorInputError(f"top_n={self.top_n} but the site has only {n_units} "
                                     f"units; pass top_n<={n_units}.")
        # the real tokens: each one's text (row of text_mean), position and type
        text, position, types = self._real_tokens(acts)
        length = np.bincount(text, minlength=len(set_of_text))
        if (length == 0).any():
            bad = np.flatnonzero(length == 0)[:5].tolist()
            raise DetectorInputError(f"texts at samples {bad} have no real tokens; drop them "
                                     "or fix the attention mask.")
        text_mean = select(acts, "mean").data  # (text, unit), over real tokens only
        n_sets = len(set_names)
        n_texts = np.bincount(codes[codes >= 0], minlength=n_sets).astype(float)
        if self.aggregate == "mean":
            agg = grouped_sum(text_mean, codes, n_sets)
        else:
            c = da.from_array(codes, chunks=(text_mean.chunks[0],))
            agg = da.stack([da.where((c == s)[:, None], text_mean, -np.inf).max(0)
                            for s in range(n_sets)])
        (set_act,) = self.check_finite(real_values(acts), extra=[agg], client=client)
        set_act = np.asarray(set_act, dtype=np.float64)
        if self.aggregate == "mean":
            set_act = set_act / n_texts[:, None]
        set_act = set_act.T  # (unit, set)
        order = np.argsort(-set_act, axis=0, kind="stable")
        rank = np.empty_like(order)
        rank[order, np.arange(n_sets)[None, :]] = np.arange(1, n_units + 1)[:, None]
        if self.threshold is None:
            active = rank <= int(self.top_n)
        else:
            active = set_act > float(self.threshold)
        # ---- token check for every unit active somewhere (real tokens only)
        sel = np.flatnonzero(active.any(1))
        top_token = np.full((n_units, n_sets), "", dtype=object)
        share = np.full((n_units, n_sets), np.nan)
        vals = None
        if sel.size:
            vals = self._token_values(acts, sel, client)  # (real token, len(sel))
            type_names, tok_codes = np.unique(types, return_inverse=True)
            tok_codes = tok_codes.reshape(-1)
            tok_set = codes[text]
            for s in range(n_sets):
                rows = np.flatnonzero(tok_set == s)
                w = 1.0 / length[text[rows]] / n_texts[s]  # each text weighs the same
                tc = tok_codes[rows]
                for j, u in enumerate(sel):
                    contrib = np.bincount(tc, weights=vals[rows, j] * w,
                                          minlength=len(type_names))
                    pos = np.clip(contrib, 0.0, None)
                    total = pos.sum()
                    if total > 0:
                        best = int(np.argmax(pos))
                        top_token[u, s] = str(type_names[best])
                        share[u, s] = pos[best] / total
        shallow = active & (np.nan_to_num(share, nan=0.0) >= float(self.shallow_share))
        counted = active & ~shallow if self.exclude_shallow else active
        n_counted = counted.sum(1)
        if self.exactly is not None:
            poly = n_counted == int(self.exactly)
        else:
            poly = n_counted >= int(self.min_sets)
        ds = xr.Dataset({
            "score": ("unit", n_counted.astype(float)),
            "polysemantic": ("unit", poly),
            "n_sets": ("unit", active.sum(1).astype(np.int64)),
            "set_activation": (("unit", "set"), set_act),
            "set_rank": (("unit", "set"), rank.astype(np.int64)),
            "active": (("unit", "set"), active),
            "top_token": (("unit", "set"), top_token.astype(str)),
            "top_token_share": (("unit", "set"), share),
            "shallow": (("unit", "set"), shallow),
            "texts_per_set": ("set", n_texts.astype(np.int64)),
        }, coords={"set": np.asarray(set_names)})
        if self.keep_tokens and vals is not None and poly.any():
            keep = np.flatnonzero(poly)
            cols = np.searchsorted(sel, keep)
            unit_vals = acts["unit"].values[keep] if "unit" in acts.coords else keep
            width = int(position.max()) + 1
            heat = np.full((len(set_of_text), width, keep.size), np.nan)
            heat[text, position] = vals[:, cols]
            tok = np.full((len(set_of_text), width), "", dtype=object)
            tok[text, position] = np.asarray(types).astype(str)
            ds["token_activation"] = xr.DataArray(
                heat, dims=("sample", "position", "poly_unit"),
                coords={"poly_unit": unit_vals, "text_set": ("sample", set_of_text),
                        "token": (("sample", "position"), tok.astype(str))})
        return ds

    def _real_tokens(self, acts: xr.DataArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per real token: its text (row of the per-text reduction, texts in ``sample``
        order), its position among the text's real tokens, and its type."""
        if is_flat(acts):
            sample = np.asarray(acts.coords["sample"].values)
            _, text = np.unique(sample, return_inverse=True)
            text = text.reshape(-1)
            if "position" in acts.coords:
                position = np.asarray(acts.coords["position"].values).astype(np.int64)
            else:  # index among the text's tokens, in storage order
                order = np.argsort(text, kind="stable")
                position = np.empty_like(text)
                start = np.searchsorted(text[order], text[order])
                position[order] = np.arange(text.size) - start
        else:
            mask = np.asarray(acts.coords["attention_mask"].values, dtype=bool) \
                if "attention_mask" in acts.coords else \
                np.ones((acts.sizes["sample"], acts.sizes["position"]), dtype=bool)
            text, _ = np.nonzero(mask)
            position = (np.cumsum(mask, 1) - 1)[mask]
        name = self._token_name(acts)
        if name is None:  # no tokens recorded: every position is its own "type"
            types = position.astype(str)
        else:
            types = token_values(acts, acts.coords[name])
        return text.astype(np.int64), position.astype(np.int64), np.asarray(types)

    def _token_name(self, acts: xr.DataArray) -> str | None:
        names = (self.token_coord,) if self.token_coord else TOKEN_COORDS
        want = [("token",)] if is_flat(acts) else [("sample", "position"), ("position", "sample")]
        for name in names:
            if name in acts.coords and acts.coords[name].dims in want and name not in acts.dims:
                return name
        if self.token_coord:
            raise DetectorInputError(
                f"token_coord={self.token_coord!r} is not a per-token coordinate of the "
                f"activations (coordinates: {[str(c) for c in acts.coords]}); pass the name "
                "of the token ids / strings, or None to look for 'token' / 'token_id'.")
        return None

    def _token_values(self, acts: xr.DataArray, units: np.ndarray, client: Any = None
                      ) -> np.ndarray:
        """(real token, unit) activations of ``units``, in :meth:`_real_tokens` order."""
        if is_flat(acts):
            (sub,) = compute(acts.transpose("token", "unit").data[:, units], client=client)
            return np.asarray(sub, dtype=np.float64)
        (sub,) = compute(acts.data[:, :, units], client=client)
        mask = np.asarray(acts.coords["attention_mask"].values, dtype=bool) \
            if "attention_mask" in acts.coords else np.ones(sub.shape[:2], dtype=bool)
        return np.asarray(sub, dtype=np.float64)[mask]

    # ------------------------------------------------------------------ views
    def heatmap(self, unit: int) -> xr.DataArray:
        """Per-token activations (sample, position) of a polysemantic ``unit`` (by label).

        NaN at padding; coords ``token`` and ``text_set``. Plot with
        ``det.heatmap(u).plot(cmap="Reds")``.
        """
        ds = self.result_
        if "token_activation" not in ds or unit not in ds["poly_unit"].values.tolist():
            kept = ds["poly_unit"].values.tolist() if "poly_unit" in ds.coords else []
            raise DetectorInputError(
                f"no per-token activations kept for unit {unit}; kept for {kept}. Fit with "
                "keep_tokens=True, or slice the source activations yourself.")
        return ds["token_activation"].sel(poly_unit=unit)
