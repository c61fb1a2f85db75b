"""Padding is never a token, for every detector that reads per-token activations.

The same texts give the same results whether they come padded with an
``attention_mask``, in the flat token layout (dims ``token``, ``unit``; padding not
there), in memory or dask-backed with chunks that cut texts, or each text run alone;
padded positions given huge activations change nothing and are never named.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from polysdk.data import make_planted_concepts
from polysdk.detect import ClassSelectivity, ConceptRanking, ConceptSets, HDBSCANClusters
from polysdk.detect._stream import prepare, select, to_tokens
from polysdk.errors import ConfigError, DetectorInputError

PAD_VALUE = 50.0  # far above any real activation


@pytest.fixture(scope="module")
def texts():
    """Planted concept texts cut to different lengths (so a batch pads), three ways."""
    pc = make_planted_concepts(texts_per_set=6, seed=1)
    rng = np.random.default_rng(0)
    names, cut = [], []
    for s in pc.set_names:
        for t in pc.texts[s]:
            words = t.split()
            cut.append(" ".join(words[: int(rng.integers(6, len(words) + 1))]))
            names.append(s)
    enc = pc.tokenizer(cut)
    with torch.no_grad():
        padded = pc.model(enc["input_ids"]).numpy()
    mask = enc["attention_mask"].numpy().astype(bool)
    assert (~mask).sum() > 100  # a lot of padding
    padded = np.where(mask[:, :, None], padded, PAD_VALUE)
    ids = enc["input_ids"].numpy()
    pad = xr.DataArray(padded, dims=("sample", "position", "unit"), name="act",
                       coords={"concept": ("sample", np.asarray(names)),
                               "token_id": (("sample", "position"), ids),
                               "attention_mask": (("sample", "position"), mask)})
    # each text alone (no padding at all), laid out flat
    rows, sample, position, tok, concept = [], [], [], [], []
    for i, t in enumerate(cut):
        one = pc.tokenizer([t])
        with torch.no_grad():
            rows.append(pc.model(one["input_ids"])[0].numpy())
        n = one["input_ids"].shape[1]
        sample += [i] * n
        position += list(range(n))
        tok += one["input_ids"][0].tolist()
        concept += [names[i]] * n
    flat = xr.DataArray(np.concatenate(rows), dims=("token", "unit"), name="act",
                        coords={"sample": ("token", np.asarray(sample)),
                                "position": ("token", np.asarray(position)),
                                "token_id": ("token", np.asarray(tok)),
                                "concept": ("token", np.asarray(concept))})
    return pc, pad, flat


def layouts(pad, flat):
    """The same texts: padded + mask, flat, both dask-backed with chunks that cut texts."""
    return {"padded": pad, "flat": flat, "padded_dask": pad.chunk({"sample": 5}),
            "flat_dask": flat.chunk({"token": 37})}


# ------------------------------------------------------------------ the shared helpers
def test_per_text_reductions_agree_across_layouts(texts):
    _, pad, flat = texts
    m = pad["attention_mask"].values
    a = np.where(m[:, :, None], pad.values, np.nan)
    refs = {"mean": np.nanmean(a, 1), "max": np.nanmax(a, 1), "sum": np.nansum(a, 1),
            0: pad.values[:, 0], -1: pad.values[np.arange(len(m)), m.sum(1) - 1]}
    for name, acts in layouts(pad, flat).items():
        for position, ref in refs.items():
            got = select(prepare(acts), position)
            assert got.dims == ("sample", "unit")
            np.testing.assert_allclose(got.values, ref, rtol=1e-6, err_msg=f"{name} {position}")


def test_flat_reduction_streams_and_handles_texts_out_of_order(texts):
    _, _, flat = texts
    lazy = select(prepare(flat.chunk({"token": 37})), "mean")
    assert lazy.chunks is not None and len(lazy.data.dask) < 100  # no task per text
    ref = select(prepare(flat), "max").values
    shuffled = flat.isel(token=np.random.default_rng(1).permutation(flat.sizes["token"]))
    np.testing.assert_allclose(select(prepare(shuffled), "max").values, ref)


def test_centre_of_padded_positions_is_refused(texts):
    _, pad, _ = texts
    with pytest.raises(ConfigError, match="padded positions"):
        select(prepare(pad), "centre")


def test_real_tokens_of_a_padded_array_are_the_flat_layout(texts):
    _, pad, flat = texts
    tok = to_tokens(prepare(pad))
    np.testing.assert_allclose(tok.values, flat.values, rtol=1e-6)
    for c in ("sample", "position", "token_id", "concept"):
        np.testing.assert_array_equal(tok[c].values, flat[c].values)
    # the older name of the mask is read too
    old = pad.rename(attention_mask="mask")
    np.testing.assert_allclose(to_tokens(prepare(old)).values, flat.values, rtol=1e-6)


# ------------------------------------------------------------------ ConceptSets
def test_concept_sets_same_result_padded_flat_alone_and_never_the_pad(texts):
    pc, pad, flat = texts
    results = {name: ConceptSets(top_n=8).fit(acts).result_
               for name, acts in layouts(pad, flat).items()}
    ref = results["flat"]
    assert ref["active"].values.any()
    for name, res in results.items():
        np.testing.assert_allclose(res["set_activation"].values, ref["set_activation"].values,
                                   rtol=1e-12, err_msg=name)
        for v in ("active", "set_rank", "polysemantic", "top_token", "shallow"):
            np.testing.assert_array_equal(res[v].values, ref[v].values, err_msg=f"{name} {v}")
        np.testing.assert_allclose(res["top_token_share"].values,
                                   ref["top_token_share"].values, rtol=1e-12)
        named = set(res["top_token"].values[res["active"].values].tolist())
        assert "0" not in named and "" not in named  # the pad id is never a top token
    # per text: the mean over its real tokens only (numpy, from each text alone)
    text_mean = np.stack([flat.values[flat["sample"].values == i].astype(np.float64).mean(0)
                          for i in range(pad.sizes["sample"])])
    for si, s in enumerate(ref["set"].values):
        np.testing.assert_allclose(ref["set_activation"].values[:, si],
                                   text_mean[pad["concept"].values == s].mean(0), rtol=1e-10)
    # the heat map: real tokens in place, NaN where a text has ended
    det = ConceptSets(top_n=8).fit(pad)
    u = int(det.polysemantic_[0])
    hm = det.heatmap(u)
    m = pad["attention_mask"].values
    np.testing.assert_allclose(hm.values[m], pad.values[:, :, u][m])
    assert np.isnan(hm.values[~m]).all()


def test_concept_sets_token_check_reads_no_padding_with_a_probe_style_token_coord(texts):
    pc, pad, _ = texts
    # Probe's padded output names the ids "token" and the mask "attention_mask"
    probe_like = pad.rename(token_id="token")
    res = ConceptSets(threshold=0.25).fit(probe_like).result_
    named = res["top_token"].values[res["active"].values]
    assert named.size and "0" not in set(named.tolist())
    period = str(pc.tokenizer.index["."])
    assert set(res["top_token"].values[pc.shallow][res["active"].values[pc.shallow]]) == {period}


def test_concept_sets_labels_must_be_one_per_text(texts):
    _, _, flat = texts
    mixed = flat.assign_coords(concept=("token", np.roll(flat["concept"].values, 3)))
    with pytest.raises(DetectorInputError, match="differ between tokens of one text"):
        ConceptSets(top_n=8).fit(mixed)


# ------------------------------------------------------------------ ClassSelectivity
def flip_case():
    """Unit 0 fires on class-a texts; on class-b texts only their padding is positive."""
    rng = np.random.default_rng(3)
    n, length = 20, 8
    lens = rng.integers(3, 6, n)  # always padded
    mask = np.arange(length)[None, :] < lens[:, None]
    label = np.array(["a", "b"] * (n // 2))
    a = np.where(label[:, None, None] == "a", 1.0, -1.0) * rng.uniform(0.5, 1, (n, length, 2))
    a[:, :, 1] = rng.uniform(0.5, 1.0, (n, length))  # unit 1 fires for both: polysemantic
    a = np.where(mask[:, :, None], a, 2.0)
    pad = xr.DataArray(a, dims=("sample", "position", "unit"),
                       coords={"label": ("sample", label),
                               "attention_mask": (("sample", "position"), mask)})
    rows, cols = np.nonzero(mask)
    flat = xr.DataArray(a[rows, cols], dims=("token", "unit"),
                        coords={"sample": ("token", rows), "position": ("token", cols),
                                "label": ("token", label[rows])})
    return pad, flat


def test_counting_padding_would_flip_a_class_selectivity_verdict():
    pad, flat = flip_case()
    for acts in layouts(pad, flat).values():
        res = ClassSelectivity().fit(acts).result_
        assert res.attrs["per"] == "text"
        assert res["polysemantic"].values.tolist() == [False, True]
        np.testing.assert_array_equal(res["class_count"].values, [10, 10])  # texts
    # the padding alone would make unit 0 fire for class b
    unmasked = pad.drop_vars("attention_mask")
    assert ClassSelectivity().fit(unmasked).result_["polysemantic"].values.tolist() == [True, True]


def test_class_selectivity_token_labels_count_real_tokens():
    pad, flat = flip_case()
    rng = np.random.default_rng(4)
    tag = rng.choice(["x", "y"], flat.sizes["token"])
    flat_t = flat.assign_coords(label=("token", tag))
    m = pad["attention_mask"].values
    grid = np.full(m.shape, "pad", dtype=object)
    grid[m] = tag
    pad_t = pad.assign_coords(label=(("sample", "position"), grid.astype(str)))
    ref = None
    for acts in (flat_t, pad_t, flat_t.chunk({"token": 7}), pad_t.chunk({"sample": 3})):
        res = ClassSelectivity().fit(acts).result_
        assert res.attrs["per"] == "token"
        assert res["class"].values.tolist() == ["x", "y"]  # "pad" is nowhere
        rate = np.stack([(flat.values[tag == c] > 0).mean(0) for c in ("x", "y")], 1)
        np.testing.assert_allclose(res["firing_rate"].values, rate)
        if ref is not None:
            np.testing.assert_array_equal(res["fire_count"].values, ref)
        ref = res["fire_count"].values
    with pytest.raises(DetectorInputError, match="differ between tokens of one text"):
        ClassSelectivity(per="text").fit(flat_t)
    # per-text labels counted per token on request; an array of one label per text
    res = ClassSelectivity(per="token").fit(flat)
    assert res.result_["class_count"].values.sum() == flat.sizes["token"]
    texts_lab = pad["label"].values
    res = ClassSelectivity().fit(flat.drop_vars("label"), labels=texts_lab).result_
    assert res["polysemantic"].values.tolist() == [False, True]
    with pytest.raises(DetectorInputError, match="one label per token"):
        ClassSelectivity().fit(flat, labels=texts_lab[:-1])
    with pytest.raises(DetectorInputError, match="per='token' needs per-token"):
        ClassSelectivity(per="token").fit(pad.isel(position=0).drop_vars("attention_mask"))
    with pytest.raises(ConfigError, match="per="):
        ClassSelectivity(per="words").fit(flat)


def test_nan_written_at_padding_is_no_error():
    pad, _ = flip_case()
    nan_pad = pad.where(pad["attention_mask"])
    res = ClassSelectivity().fit(nan_pad).result_
    assert res["polysemantic"].values.tolist() == [False, True]
    real = nan_pad.copy(data=np.where(pad["attention_mask"].values[:, :, None], np.nan,
                                      np.zeros(pad.shape)))
    with pytest.raises(DetectorInputError, match="NaN"):
        ClassSelectivity().fit(real)


# ------------------------------------------------------------------ ConceptRanking
def test_concept_ranking_token_labels_same_on_every_layout(texts):
    pc, pad, flat = texts
    loc = np.isin(flat["token_id"].values, [pc.tokenizer.index["."], pc.tokenizer.index[","]])
    tag = np.where(loc, "punct", "O")
    flat_t = flat.assign_coords(label=("token", tag))
    m = pad["attention_mask"].values
    grid = np.full(m.shape, "O", dtype=object)  # padding tagged like the rest: must not count
    grid[m] = tag
    pad_t = pad.assign_coords(label=(("sample", "position"), grid.astype(str)))
    a = flat.values.astype(np.float64)
    ref = np.abs(a[tag == "punct"].mean(0) - a[tag == "O"].mean(0))
    for acts in (flat_t, pad_t, flat_t.chunk({"token": 37}), pad_t.chunk({"sample": 5})):
        res = ConceptRanking(top_n=5, concepts=["punct"]).fit(acts).result_
        assert res.attrs["per"] == "token"
        np.testing.assert_allclose(res["concept_score"].values[:, 0], ref, rtol=1e-6)
    # per-text labels (the concept set): texts are the samples, reduced over real tokens
    by_text = [ConceptRanking(top_n=5).fit(acts, labels="concept").result_
               for acts in (pad, flat)]
    assert by_text[0].attrs["per"] == by_text[1].attrs["per"] == "text"
    np.testing.assert_allclose(by_text[0]["concept_score"].values,
                               by_text[1]["concept_score"].values, rtol=1e-12)


# ------------------------------------------------------------------ HDBSCANClusters
def test_hdbscan_position_rule_reads_real_tokens_only(texts):
    _, pad, flat = texts
    results = [HDBSCANClusters(top_k=12, min_cluster_size=4, position=p).fit(
        acts, labels="concept").result_
               for p in ("max", -1) for acts in (pad, flat, flat.chunk({"token": 37}))]
    for p in range(2):
        ref = results[3 * p]
        assert ref["top_activation"].values.max() < PAD_VALUE
        for res in results[3 * p + 1: 3 * p + 3]:
            np.testing.assert_array_equal(res["top_index"].values, ref["top_index"].values)
            np.testing.assert_allclose(res["top_activation"].values,
                                       ref["top_activation"].values, rtol=1e-6)
            np.testing.assert_array_equal(res["cluster"].values, ref["cluster"].values)
            np.testing.assert_array_equal(res["top_label"].values, ref["top_label"].values)
    # position=None: every real token is an input (rows of the flat layout)
    tok = [HDBSCANClusters(top_k=30, min_cluster_size=8, position=None).fit(acts).result_
           for acts in (pad, flat)]
    np.testing.assert_array_equal(tok[0]["top_index"].values, tok[1]["top_index"].values)
    u = 0
    np.testing.assert_allclose(tok[1]["top_activation"].values[u],
                               -np.sort(-flat.values[:, u])[:30], rtol=1e-6)
    with pytest.raises(ConfigError, match="padded positions"):
        HDBSCANClusters(top_k=12, min_cluster_size=4).fit(pad)  # "centre" of padding
