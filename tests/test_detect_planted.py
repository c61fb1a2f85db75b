"""Each built-in detector against planted ground truth: precision and recall >= 0.9 on
the easy setting, worse (never better) as the planted signal weakens; and each
detector's numbers against an independent numpy / hdbscan reference."""

from __future__ import annotations

import warnings

import hdbscan
import numpy as np
import pytest

from polysdk.data import make_planted_classes, make_planted_concepts, precision_recall
from polysdk.detect import ClassSelectivity, ConceptRanking, ConceptSets, HDBSCANClusters
from polysdk.detect.concept_ranking import concept_saliency, weight_mass_selection

SIGNALS = (1.0, 0.3, 0.05)  # easy -> hard


def f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def classes(signal, **kw):
    return make_planted_classes(n_samples=1000, signal=signal, seed=0, **kw)


def ranking_setting(signal):
    return make_planted_classes(n_samples=1000, n_classes=4, units_per_class=3, n_poly=4,
                                balanced=True, background="O", signal=signal, seed=0)


def run_class_selectivity(signal):
    pl = classes(signal)
    return ClassSelectivity().fit(pl.activations).result_["polysemantic"], pl.polysemantic


def run_hdbscan(signal):
    pl = classes(signal)
    det = HDBSCANClusters(top_k=100, min_cluster_size=20).fit(pl.activations)
    return det.result_["polysemantic"], pl.polysemantic


def run_ranking_mean_diff(signal):
    pl = ranking_setting(signal)
    det = ConceptRanking(top_n=5, concepts=pl.class_names[:4]).fit(pl.activations)
    return det.result_["polysemantic"], pl.polysemantic


def run_ranking_probe(signal):
    pl = ranking_setting(signal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # saga convergence chatter
        det = ConceptRanking(method="probe", mass=0.99, C=0.1,
                             concepts=pl.class_names[:4]).fit(pl.activations)
    return det.result_["polysemantic"], pl.polysemantic


def run_concept_sets(signal):
    pc = make_planted_concepts(signal=signal, seed=0)
    det = ConceptSets(top_n=8, exclude_shallow=True).fit(pc.activations)
    return det.result_["polysemantic"], pc.polysemantic


RUNS = {"class_selectivity": run_class_selectivity, "hdbscan": run_hdbscan,
        "concept_ranking": run_ranking_mean_diff, "concept_ranking_probe": run_ranking_probe,
        "concept_sets": run_concept_sets}


@pytest.mark.parametrize("name", list(RUNS))
def test_precision_recall_on_planted_truth_and_degradation(name):
    scores = []
    for i, signal in enumerate(SIGNALS):
        pred, truth = RUNS[name](signal)
        p, r = precision_recall(pred, truth)
        if i == 0:
            assert p >= 0.9 and r >= 0.9, (name, p, r)
        scores.append(f1(p, r))
    assert all(b <= a + 1e-9 for a, b in zip(scores, scores[1:])), (name, scores)
    assert scores[-1] < scores[0], (name, scores)


# ------------------------------------------------------------------ references
def test_class_selectivity_matches_numpy_reference():
    pl = make_planted_classes(n_samples=500, n_classes=4, units_per_class=2, n_poly=3,
                              signal=0.5, seed=5)
    a, lab = pl.activations.values, pl.activations["label"].values
    det = ClassSelectivity(threshold=0.1, min_rate=0.02).fit(pl.activations.chunk({"sample": 77}))
    res = det.result_
    for ci, c in enumerate(res["class"].values):
        rate = (a[lab == c] > 0.1).mean(0)
        np.testing.assert_allclose(res["firing_rate"].values[:, ci], rate)
    fires = np.stack([((a[lab == c] > 0.1).mean(0) >= 0.02) & ((a[lab == c] > 0.1).any(0))
                      for c in res["class"].values], 1)
    np.testing.assert_array_equal(res["polysemantic"].values, fires.sum(1) >= 2)
    second = -np.sort(-np.where(fires, res["firing_rate"].values, 0), axis=1)[:, 1]
    np.testing.assert_allclose(res["score"].values, second)


def test_class_selectivity_spatial_max_and_centre():
    pl = make_planted_classes(n_samples=300, n_classes=3, units_per_class=2, n_poly=2,
                              spatial=3, seed=2)
    a, lab = pl.activations.values, pl.activations["label"].values  # (s, u, y, x)
    for position, reduced in (("max", a.max((2, 3))), ("centre", a[:, :, 1, 1])):
        res = ClassSelectivity(position=position).fit(pl.activations).result_
        rate = np.stack([(reduced[lab == c] > 0).mean(0) for c in res["class"].values], 1)
        np.testing.assert_allclose(res["firing_rate"].values, rate)
    # the planted answer sits at the centre: that is where the truth is recovered
    res = ClassSelectivity(position="centre").fit(pl.activations).result_
    np.testing.assert_array_equal(res["polysemantic"].values, pl.polysemantic)


def test_hdbscan_matches_direct_reference_and_keeps_groups():
    pl = make_planted_classes(n_samples=400, n_classes=4, units_per_class=2, n_poly=2, seed=4)
    acts = pl.activations.chunk({"sample": 64})
    det = HDBSCANClusters(top_k=60, min_cluster_size=10, unit_batch=3).fit(acts)
    a = pl.activations.values
    for u in range(a.shape[1]):
        top = np.argsort(-a[:, u], kind="stable")[:60]
        np.testing.assert_allclose(det.result_["top_activation"].values[u], a[top, u])
        ref = hdbscan.HDBSCAN(min_cluster_size=10).fit_predict(
            a[det.result_["top_index"].values[u]].astype(np.float64))
        got = det.result_["cluster"].values[u]
        # the same partition (ids renumbered by first appearance) and the same noise
        np.testing.assert_array_equal(got < 0, ref < 0)
        pairs = set(zip(got[got >= 0].tolist(), ref[ref >= 0].tolist()))
        assert len(pairs) == len(set(ref[ref >= 0].tolist())) == len({g for g, _ in pairs})
        if (got >= 0).any():
            assert got[np.flatnonzero(got >= 0)[0]] == 0
    u = int(det.polysemantic_[0])
    groups = det.groups(u)
    assert len(groups) >= 2
    # each group is one planted class (the top-label column says which)
    labels = pl.activations["label"].values
    group_classes = [set(labels[g].tolist()) for g in groups.values()]
    assert all(len(c) == 1 for c in group_classes)
    planted = {pl.class_names[c] for c in np.flatnonzero(pl.membership[u])}
    assert set().union(*group_classes) == planted


def test_concept_ranking_mean_diff_reference_and_saliency():
    pl = ranking_setting(0.7)
    a, lab = pl.activations.values.astype(np.float64), pl.activations["label"].values
    det = ConceptRanking(top_n=5, saliency_block=4).fit(pl.activations.chunk({"sample": 100}))
    res = det.result_
    for ci, c in enumerate(res["concept"].values):
        ref = np.abs(a[lab == c].mean(0) - a[lab != c].mean(0))
        np.testing.assert_allclose(res["concept_score"].values[:, ci], ref, rtol=1e-10)
        order = np.argsort(-ref, kind="stable")
        np.testing.assert_array_equal(det.top_units(c), order[:5])
    # saliency: 20 units in blocks of 4 -> B = 5; rank 1..4 -> 1, rank 17..20 -> 0
    np.testing.assert_allclose(concept_saliency(np.array([1, 4, 5, 9, 17, 20]), 20, 4),
                               [1.0, 1.0, 0.75, 0.5, 0.0, 0.0])
    assert res["saliency"].max() == 1.0


def test_weight_mass_selection_shortest_prefix():
    w = np.array([0.1, -0.5, 0.3, 0.1])  # |w| sorted: .5 .3 .1 .1 ; total 1.0
    assert weight_mass_selection(w, 0.5).tolist() == [False, True, False, False]
    assert weight_mass_selection(w, 0.8).tolist() == [False, True, True, False]
    assert weight_mass_selection(w, 0.81).sum() == 3


def test_concept_sets_reference_rank_and_exactly():
    pc = make_planted_concepts(texts_per_set=5, seed=3)
    acts = pc.activations
    det = ConceptSets(top_n=8).fit(acts.chunk({"sample": 7}))
    res = det.result_
    a, m = acts.values.astype(np.float64), acts["mask"].values
    text_mean = (a * m[:, :, None]).sum(1) / m.sum(1)[:, None]
    for si, s in enumerate(res["set"].values):
        ref = text_mean[acts["concept"].values == s].mean(0)
        np.testing.assert_allclose(res["set_activation"].values[:, si], ref, rtol=1e-10)
        assert set(np.flatnonzero(res["active"].values[:, si])) == set(np.argsort(-ref)[:8])
    mx = ConceptSets(top_n=8, aggregate="max").fit(acts).result_
    ref = text_mean[acts["concept"].values == res["set"].values[0]].max(0)
    np.testing.assert_allclose(mx["set_activation"].values[:, 0], ref, rtol=1e-10)
    ex = ConceptSets(top_n=8, exactly=2).fit(acts).result_
    np.testing.assert_array_equal(ex["polysemantic"].values, res["active"].values.sum(1) == 2)


def test_concept_sets_flags_the_shallow_full_stop_units():
    pc = make_planted_concepts(seed=0)
    res = ConceptSets(threshold=0.25).fit(pc.activations).result_
    flagged = res["shallow"].any("set").values
    assert precision_recall(flagged, pc.shallow) == (1.0, 1.0)
    for u in np.flatnonzero(pc.shallow):
        active = res["set"].values[res["active"].values[u]].tolist()
        assert sorted(active) == sorted(pc.shallow_sets)  # "polysemantic" only by "."
        assert set(res["top_token"].values[u][res["active"].values[u]]) == {"."}
        assert res["polysemantic"].values[u]  # counted without exclude_shallow ...
    ex = ConceptSets(threshold=0.25, exclude_shallow=True).fit(pc.activations).result_
    assert not ex["polysemantic"].values[pc.shallow].any()  # ... and not with it
    assert precision_recall(ex["polysemantic"], pc.polysemantic) == (1.0, 1.0)
    # per-token heat map of a polysemantic unit: padding is NaN, tokens attached
    u = int(np.flatnonzero(ex["polysemantic"].values)[0])
    det = ConceptSets(threshold=0.25, exclude_shallow=True).fit(pc.activations)
    hm = det.heatmap(u)
    np.testing.assert_allclose(hm.values, pc.activations.values[:, :, u])
    assert hm["token"].values[0, 0] == pc.texts[pc.set_names[0]][0].split()[0]
