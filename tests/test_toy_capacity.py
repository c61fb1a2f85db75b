"""FeatureCapacity and the batched monosemanticity metric (seed 002)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from polysdk.detect import BaseDetector, Detector, WeightDetector
from polysdk.detect.capacity import FeatureCapacity, monosemanticity
from polysdk.errors import ConfigError, DetectorInputError, NotFittedError
from polysdk.models.toy import ToyConfig, ToyModels

# neurons x features, scores by hand: max / (1e-10 + sum)
A = np.array([
    [2.0, 0.0, 0.0, 0.0],      # mono (feature 0): 1.0
    [0.0, 0.0, 5.0, 0.0],      # mono (feature 2): 1.0
    [3.0, 0.0, 0.0, 0.0],      # mono (feature 0 again)
    [1.0, 1.0, 0.0, 0.0],      # 0.5
    [0.0, 0.0, 0.0, 0.0],      # dead: 0
    [999.0, 0.0, 0.5, 0.0],    # 999 / 999.5 = 0.9995 > 0.999: mono (feature 0)
    [0.0, 998.0, 0.0, 1.0],    # 998 / 999 = 0.998999 < 0.999: not mono
])


def test_metric_on_hand_built_matrix() -> None:
    s = monosemanticity(torch.tensor(A))
    expected_score = A.max(1) / (1e-10 + A.sum(1))
    np.testing.assert_allclose(s["score"].numpy(), expected_score, rtol=1e-12)
    assert s["monosemantic"].tolist() == [True, True, True, False, False, True, False]
    assert int(s["n_mono"]) == 4
    assert float(s["mono_per_feature"]) == pytest.approx(4 / 4)    # n_mono / N
    assert float(s["mono_per_neuron"]) == pytest.approx(4 / 7)     # n_mono / k
    assert int(s["features_covered"]) == 2                         # features 0 and 2
    assert s["dead"].tolist() == [False, False, False, False, True, False, False]


def test_metric_batched_equals_one_by_one() -> None:
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.normal(size=(3, 2, 10, 6)), 0)
    acts[0, 1, :6] = np.eye(6) * 3               # a fully monosemantic block
    batched = monosemanticity(torch.tensor(acts), threshold=0.9)
    for i in range(3):
        for j in range(2):
            one = monosemanticity(torch.tensor(acts[i, j]), threshold=0.9)
            for key in ("n_mono", "features_covered"):
                assert int(batched[key][i, j]) == int(one[key])
    assert int(batched["features_covered"][0, 1]) == 6


def test_threshold_is_a_parameter() -> None:
    assert int(monosemanticity(torch.tensor(A), threshold=0.99)["n_mono"]) == 5
    det = FeatureCapacity(threshold=0.99).fit(A)
    assert det.n_monosemantic_ == 5 and det.get_params() == {"threshold": 0.99, "eps": 1e-10}


def test_detector_on_sequential_with_embedding() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1., 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, -1]]))
        model[0].bias.zero_()
    E = torch.eye(3)
    det = FeatureCapacity().fit(model, embedding=E)
    # a weight-based detector: a sibling of Detector (which reads recordings)
    assert isinstance(det, WeightDetector) and isinstance(det, BaseDetector)
    assert not isinstance(det, Detector)
    r = det.result_
    assert list(r.sizes) == ["unit", "feature"] or set(r.dims) == {"unit", "feature"}
    assert r["monosemantic"].values.tolist() == [True, True, False, False]
    assert r["dead"].values.tolist() == [False, False, False, True]
    assert r["polysemantic"].values.tolist() == [False, False, True, False]
    assert det.polysemantic_.tolist() == [2]
    assert det.mono_per_feature_ == pytest.approx(2 / 3)
    assert det.mono_per_neuron_ == pytest.approx(2 / 4)
    assert det.features_covered_ == 2
    assert r.attrs["detector"] == "feature_capacity"


def test_detector_on_toy_models_matches_metric() -> None:
    models = ToyModels.init([ToyConfig(N=12, m=4, k=20, initial_bias=-0.3)] * 2, seeds=[0, 1])
    det = Detector.from_name("feature_capacity").fit(models, instance=1)
    s = monosemanticity(models.single_feature_activations()[1])
    assert det.n_monosemantic_ == int(s["n_mono"])
    np.testing.assert_allclose(det.result_["capacity"].values, s["capacity"].numpy(),
                               rtol=1e-6)
    live = ~s["dead"].numpy()
    np.testing.assert_allclose(det.result_["score"].values[live],
                               1 - s["capacity"].numpy()[live], rtol=1e-6, atol=1e-7)
    # the same through the Sequential view of instance 1
    det2 = FeatureCapacity().fit(models.to_sequential(1), embedding=models.embed[1])
    np.testing.assert_allclose(det2.result_["capacity"].values,
                               det.result_["capacity"].values, rtol=1e-5, atol=1e-7)


def test_detector_errors() -> None:
    with pytest.raises(NotFittedError):
        FeatureCapacity().result_
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(DetectorInputError, match="embedding"):
        FeatureCapacity().fit(model)
    with pytest.raises(DetectorInputError, match="m x N"):
        FeatureCapacity().fit(model, embedding=torch.eye(5))
    with pytest.raises(ConfigError, match=r"threshold=2\): threshold must be a number in "
                                          r"\(0, 1\]; got 2"):
        FeatureCapacity(threshold=2)
    det = FeatureCapacity()
    det.threshold = 0.0  # set by hand, past the constructor: fit checks again
    with pytest.raises(ConfigError, match=r"threshold=0\.0"):
        det.fit(A)
    with pytest.raises(DetectorInputError, match="NaN"):
        FeatureCapacity().fit(np.full((2, 2), np.nan))


def test_detector_on_stored_dataarray() -> None:
    import xarray as xr

    da = xr.DataArray(A.T, dims=("feature", "unit"))        # any dim order
    det = FeatureCapacity().fit(da)
    assert det.n_monosemantic_ == 4 and det.features_covered_ == 2
    with pytest.raises(DetectorInputError, match="isel"):
        FeatureCapacity().fit(xr.DataArray(A[None], dims=("instance", "unit", "feature")))


def test_score_direction_higher_is_more_polysemantic() -> None:
    # neurons answering 1, 2 and 3 features equally, then a dead one; by hand:
    # capacity = 1/1, 1/2, 1/3 (eps aside); score = 1 - capacity = 0, 1/2, 2/3; dead: 0
    acts = np.array([[4.0, 0.0, 0.0], [2.0, 2.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    r = FeatureCapacity().fit(acts).result_
    assert r["score"].values[2] > r["score"].values[1] > r["score"].values[0]
    np.testing.assert_allclose(r["score"].values, [0.0, 1 / 2, 2 / 3, 0.0], atol=1e-6)
    np.testing.assert_allclose(r["capacity"].values, acts.max(1) / (1e-10 + acts.sum(1)),
                               rtol=1e-6)
    assert r["polysemantic"].values.tolist() == [False, True, True, False]
    # the contract of every detector: the polysemantic units rank first by score
    order = np.argsort(-r["score"].values, kind="stable")
    assert set(order[:2]) == {1, 2}
    # the metric function keeps the paper's quantity (and its stored alias)
    m = monosemanticity(torch.tensor(acts))
    assert torch.equal(m["capacity"], m["score"])
