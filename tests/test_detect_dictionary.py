"""DictionaryFeatures: a top-k sparse autoencoder's dictionary against known truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from polysdk.data import make_planted_classes, precision_recall
from polysdk.detect import DictionaryFeatures
from polysdk.errors import ConfigError
from polysdk.models.toy import ToyConfig, feature_probabilities, sample_features
from polysdk.store import ActivationStore
from polysdk.train.trainer import train_toy_models


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_polysemantic_units_are_found_exactly(seed):
    pl = make_planted_classes(n_samples=3000, n_classes=8, units_per_class=4, n_poly=8, seed=seed)
    det = DictionaryFeatures(seed=seed).fit(pl.activations)
    assert precision_recall(det.result_["polysemantic"], pl.polysemantic) == (1.0, 1.0)
    r = det.result_
    assert r.attrs["k"] == 1 and r.attrs["explained_variance"] > 0.9  # one class per input
    served = r["n_served"].values
    assert (served[np.asarray(pl.polysemantic)] >= 2).all() and (served[~np.asarray(pl.polysemantic)] == 1).all()
    # the score follows the contract: higher = more polysemantic
    assert r["score"].values[np.asarray(pl.polysemantic)].min() > r["score"].values[~np.asarray(pl.polysemantic)].max()


def test_streams_a_store_chunk_by_chunk(tmp_path):
    pl = make_planted_classes(n_samples=3000, n_classes=8, units_per_class=4, n_poly=8, seed=0)
    with ActivationStore(tmp_path / "a.zarr", mode="w", chunk_samples=256) as store:
        store.append({"fc": pl.activations.values})
    acts = ActivationStore(tmp_path / "a.zarr")["fc"]
    assert acts.chunks[0][0] == 256  # lazy: the detector reads one chunk at a time
    det = DictionaryFeatures(seed=0).fit(acts)
    assert precision_recall(det.result_["polysemantic"], pl.polysemantic) == (1.0, 1.0)


def test_recovers_the_toy_models_feature_directions():
    cfg = ToyConfig(N=16, m=8, k=32, eps=1 / 8, log2_batch_size=9, log2_training_steps=11)
    models = train_toy_models([cfg], [0]).models
    response = models.single_feature_activations()[0] - torch.relu(models.b1[0])[:, None]  # [k, N]
    v = sample_features([torch.Generator().manual_seed(5)], feature_probabilities(cfg.N, cfg.eps)[None], 8000)
    _, hidden, _ = models.forward(torch.bmm(v, models.embed.transpose(1, 2)))
    det = DictionaryFeatures(seed=0).fit(xr.DataArray(hidden[0].detach().numpy(), dims=("sample", "unit")))
    r = det.result_
    decoder = torch.as_tensor(r["decoder"].values)[torch.as_tensor(r["feature_frequency"].values) > 0]
    cos = torch.nn.functional.normalize(decoder, dim=1) @ torch.nn.functional.normalize(response.double(), dim=0)
    best = cos.max(0).values  # per true feature: the closest dictionary feature
    assert best.min() > 0.95, best
    assert r.attrs["k"] == 2  # ~2 features active per input (eps = 1/8 of 16)


def test_bad_parameters_say_what_and_how():
    acts = xr.DataArray(np.random.default_rng(0).random((50, 4)), dims=("sample", "unit"))
    with pytest.raises(ConfigError, match="k must be"):
        DictionaryFeatures(k=0).fit(acts)
    with pytest.raises(ConfigError, match="share"):
        DictionaryFeatures(share=0).fit(acts)
