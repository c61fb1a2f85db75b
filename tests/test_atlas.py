"""The detector agreement atlas on planted ground truth: which detectors apply, the
table, agreement against scikit-learn / scipy, precision and recall against
``precision_recall``, persistence, and the FeatureCapacity path on a toy-shaped model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.stats import spearmanr
from sklearn.metrics import jaccard_score

from polysdk import Atlas
from polysdk.atlas import agreement_figure, matrix_figure, save_truth
from polysdk.data import make_planted_classes, make_planted_concepts, precision_recall
from polysdk.detect import ClassSelectivity, FeatureCapacity
from polysdk.errors import ConfigError, DetectorInputError, NotFittedError, SiteNotFoundError
from polysdk.reporting.figures import check_figure
from polysdk.store import ActivationStore

FAST = {"dictionary_features": {"epochs": 5}}


@pytest.fixture(scope="module")
def classes():
    pl = make_planted_classes(n_samples=800, seed=0)
    return pl, Atlas(pl.activations, truth=pl.polysemantic, params=FAST).fit()


@pytest.fixture(scope="module")
def concepts():
    pc = make_planted_concepts(seed=0)
    return pc, Atlas(pc.activations, truth=pc.polysemantic, params=FAST).fit()


def test_applicable_detectors_are_chosen_from_the_data(classes, concepts):
    _, a = classes
    assert list(a.result_["detector"].values) == [
        "class_selectivity", "concept_ranking", "hdbscan", "dictionary_features"]
    skipped = a.skipped()
    assert set(skipped) == {"concept_sets", "feature_capacity"}
    assert "position" in skipped["concept_sets"] and "model" in skipped["feature_capacity"]
    _, b = concepts
    assert list(b.result_["detector"].values) == [
        "class_selectivity", "concept_ranking", "concept_sets", "hdbscan", "dictionary_features"]
    assert "concept" in b.result_.attrs["labels_from"]
    params = json.loads(b.result_.attrs["params_json"])
    assert params["concept_sets"]["top_n"] == 10          # ceil(38 units / 4 sets)
    assert params["hdbscan"]["position"] == "max"         # text: never the padded centre


def test_table_holds_each_detector_result(classes):
    pl, a = classes
    ds = a.result_
    assert ds["score"].dims == ("unit", "detector") and ds["polysemantic"].dtype == bool
    for name, det in a.detectors_["activations"].items():
        col = ds.sel(detector=name)
        np.testing.assert_array_equal(col["polysemantic"].values, det.result_["polysemantic"].values)
        np.testing.assert_allclose(col["score"].values, det.result_["score"].values)
    own = ClassSelectivity().fit(pl.activations).result_
    np.testing.assert_array_equal(ds["polysemantic"].sel(detector="class_selectivity").values,
                                  own["polysemantic"].values)
    assert ds["flag_count"].values.tolist() == ds["polysemantic"].values.sum(1).tolist()


@pytest.mark.parametrize("which", ["classes", "concepts"])
def test_agreement_against_sklearn_and_scipy(which, request):
    _, a = request.getfixturevalue(which)
    ds = a.result_
    names = list(ds["detector"].values)
    for x in names:
        for y in names:
            px, py = (ds["polysemantic"].sel(detector=d).values for d in (x, y))
            sx, sy = (ds["score"].sel(detector=d).values for d in (x, y))
            want_j = jaccard_score(px, py, zero_division=1.0)
            if np.ptp(sx) == 0 or np.ptp(sy) == 0:
                want_s = np.nan
            else:
                want_s = spearmanr(sx, sy).statistic
            got = a.agreement(x, y)
            assert got["jaccard"] == pytest.approx(want_j)
            np.testing.assert_allclose(got["spearman"], want_s, equal_nan=True)
            assert float(ds["jaccard"].sel(detector=x, detector_=y)) == pytest.approx(want_j)


@pytest.mark.parametrize("which", ["classes", "concepts"])
def test_precision_recall_match_precision_recall(which, request):
    truth_of, a = request.getfixturevalue(which)
    ds = a.result_
    np.testing.assert_array_equal(ds["truth"].values, truth_of.polysemantic)
    for name in ds["detector"].values:
        p, r = precision_recall(ds["polysemantic"].sel(detector=name), truth_of.polysemantic)
        assert float(ds["precision"].sel(detector=name)) == pytest.approx(p)
        assert float(ds["recall"].sel(detector=name)) == pytest.approx(r)


def test_disagreement_and_disputed_units(concepts):
    _, a = concepts
    ds = a.result_
    n = ds.sizes["detector"]
    k = ds["polysemantic"].values.sum(1)
    np.testing.assert_allclose(ds["disagreement"].values, np.minimum(k, n - k) / (n // 2))
    disputed = a.disputed(5)
    assert 0 < len(disputed) <= 5
    dis = ds["disagreement"].values
    assert all(dis[u] > 0 for u in disputed)
    assert [dis[u] for u in disputed] == sorted((dis[u] for u in disputed), reverse=True)
    assert dis[disputed[0]] == dis.max()


def test_figures_keep_the_rules(concepts):
    _, a = concepts
    for fig in (matrix_figure(a.result_), agreement_figure(a.result_)):
        assert check_figure(fig) == []


def _planted_store(path, n=600):
    pl = make_planted_classes(n_samples=n, seed=1)
    with ActivationStore(path, mode="w", chunk_samples=128) as store:
        store.append({"fc": pl.activations.values}, dims={"fc": ("sample", "unit")},
                     coords={"label": pl.activations["label"].values})
    with ActivationStore(path, mode="a") as store:
        save_truth(store, "fc", pl.polysemantic)
    return pl


def test_store_truth_is_found_and_the_table_saved_and_loaded(tmp_path):
    pl = _planted_store(tmp_path / "acts.zarr")
    with ActivationStore(tmp_path / "acts.zarr", mode="a") as store:
        a = Atlas(store, detectors=["class_selectivity", "concept_ranking"]).fit()
        np.testing.assert_array_equal(a.result_["truth"].values, pl.polysemantic)
        assert a.save(store) == ["atlas/fc"]
    store = ActivationStore(tmp_path / "acts.zarr")
    back = Atlas.load(store)
    xr.testing.assert_equal(back.result_[["score", "polysemantic", "jaccard"]],
                            a.result_[["score", "polysemantic", "jaccard"]])
    assert back.skipped() == a.skipped()


def test_feature_capacity_runs_on_a_toy_model():
    torch.manual_seed(0)
    m, k, n_feat = 6, 10, 12
    model = torch.nn.Sequential(torch.nn.Linear(m, k), torch.nn.ReLU(), torch.nn.Linear(k, n_feat))
    E = torch.nn.functional.normalize(torch.randn(m, n_feat), dim=0)
    v = torch.rand(300, n_feat) * (torch.rand(300, n_feat) < 0.1)
    with torch.no_grad():
        acts = model[:2](v @ E.T).numpy()
    da = xr.DataArray(acts, dims=("sample", "unit"), attrs={"site": "1"})
    a = Atlas(da, model=model, embedding=E, params=FAST).fit()
    assert "feature_capacity" in a.result_["detector"].values
    own = FeatureCapacity().fit(model, embedding=E).result_
    np.testing.assert_allclose(a.result_["score"].sel(detector="feature_capacity").values,
                               own["score"].values)
    assert "class_selectivity" in a.skipped()      # no labels on these activations
    wrong = torch.nn.Sequential(torch.nn.Linear(m, k + 1), torch.nn.ReLU())
    b = Atlas(da, model=wrong, embedding=E, detectors=["feature_capacity"]).fit()
    assert "not the same neurons" in b.skipped()["feature_capacity"]


def test_bad_input_says_what_and_how(classes, tmp_path):
    pl, a = classes
    with pytest.raises(DetectorInputError, match="DataArray"):
        Atlas(np.zeros((3, 2))).fit()
    with pytest.raises(ConfigError, match="one bool per unit"):
        Atlas(pl.activations, truth=[True, False], detectors=["class_selectivity"]).fit()
    with pytest.raises(ConfigError, match="unknown detector|closest|Did you mean"):
        Atlas(pl.activations, detectors=["class_selectivty"]).fit()
    with pytest.raises(ConfigError, match="not in the atlas"):
        a.agreement("class_selectivity", "concept_sets")
    with pytest.raises(NotFittedError):
        Atlas(pl.activations).table()
    _planted_store(tmp_path / "s.zarr", n=200)
    with pytest.raises(SiteNotFoundError, match="fc"):
        Atlas(ActivationStore(tmp_path / "s.zarr"), sites="fc2").fit()


def test_near_constant_units_are_marked_and_counted_per_detector(tmp_path):
    """Three planted units made (nearly) constant, as pruning leaves them: the table marks
    exactly those, counts each detector's flags among them, and the page says so."""
    pl = make_planted_classes(n_samples=800, seed=0)
    values = pl.activations.values.copy()
    rng = np.random.default_rng(0)
    dead = np.array([1, 5, 20])
    values[:, dead] = 0.3 + 1e-4 * rng.standard_normal((values.shape[0], len(dead)))
    acts = pl.activations.copy(data=values)
    atlas = Atlas(acts, detectors=["class_selectivity", "hdbscan"]).fit()
    ds = atlas.result_
    std = values.std(0)
    np.testing.assert_allclose(ds["activation_std"].values, std, rtol=1e-6)
    assert np.flatnonzero(ds["near_constant"].values).tolist() == dead.tolist()
    for j in range(ds.sizes["detector"]):
        flags = ds["polysemantic"].values[:, j]
        assert int(ds["n_flagged_near_constant"].values[j]) == int(flags[dead].sum())
    page = atlas.to_html(tmp_path / "atlas.html", pages=0).read_text()
    assert f"3 of {values.shape[1]} units are near-constant" in page
    assert "<th>near-constant</th>" in page and f"<td>{values.shape[1]}</td><td>3</td>" in page
    # no near-constant unit: no note; a share of 0 marks only exactly constant units
    clean = Atlas(pl.activations, detectors=["class_selectivity"]).fit()
    assert not clean.result_["near_constant"].values.any()
    assert "units are near-constant" not in clean.to_html(tmp_path / "c.html", pages=0).read_text()
    assert not Atlas(acts, detectors=["class_selectivity"], near_constant=0).fit(
    ).result_["near_constant"].values.any()
    # a layer pruned to its last quarter: the live scale comes from the live units
    mostly = pl.activations.values.copy()
    gone = np.arange(values.shape[1]) % 4 != 0
    mostly[:, gone] = 0.3 + 1e-4 * rng.standard_normal((values.shape[0], int(gone.sum())))
    pruned = Atlas(pl.activations.copy(data=mostly), detectors=["class_selectivity"]).fit()
    np.testing.assert_array_equal(pruned.result_["near_constant"].values, gone)
    with pytest.raises(ConfigError, match="near_constant=1.5"):
        Atlas(acts, near_constant=1.5)
