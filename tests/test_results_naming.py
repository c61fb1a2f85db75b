"""Results that mean what they say: a saved result carries its site, and ``fit``
refuses keywords it does not take (issue 18, section 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from polysdk.data import make_planted_classes
from polysdk.detect import ClassSelectivity, Detector, FeatureCapacity, HDBSCANClusters
from polysdk.errors import ConfigError
from polysdk.store import ActivationStore


@pytest.fixture
def two_layer_store(tmp_path):
    """A store with two sites whose activations differ (so their results differ)."""
    pl = make_planted_classes(n_samples=200, n_classes=4, units_per_class=2, n_poly=2, seed=5)
    a = pl.activations.values
    b = np.zeros_like(a)
    b[:, 0] = 1.0  # "deep.0" fires for every class on unit 0 only
    sites = {"fc": a, "blocks.0.hook_post": b}
    with ActivationStore(tmp_path / "two.zarr", mode="w", chunk_samples=64) as store:
        store.append(sites, dims={s: ("sample", "unit") for s in sites},
                     coords={"label": pl.activations["label"].values})
    return ActivationStore(tmp_path / "two.zarr", mode="a"), sites, pl.activations["label"].values


def _expected_classes(values: np.ndarray, labels: np.ndarray) -> list[int]:
    """Classes each unit fires for (activation > 0 on at least one input), by hand."""
    return [len({labels[i] for i in np.flatnonzero(values[:, u] > 0)})
            for u in range(values.shape[1])]


def test_two_layers_from_store_sites_give_two_readable_results(two_layer_store):
    store, sites, labels = two_layer_store
    names = [ClassSelectivity().fit(store[s]).save(store) for s in sites]
    assert names == ["class_selectivity/fc", "class_selectivity/blocks.0.hook_post"]
    assert sorted(store.list_results()) == sorted(names)
    for site, name in zip(sites, names):
        back = Detector.load(store, name)
        assert back.site_ == site and back.result_.attrs["site"] == site
        np.testing.assert_array_equal(back.result_["n_classes"].values,
                                      _expected_classes(sites[site], labels))


def test_site_survives_selections_and_reductions_of_a_store_site(two_layer_store):
    store, _, _ = two_layer_store
    det = ClassSelectivity().fit(store["fc"].isel(sample=slice(0, 150)))
    assert det.site_ == "fc" and det.default_result_name() == "class_selectivity/fc"
    assert ClassSelectivity().fit(store, site="fc").site_ == "fc"   # whole store + site
    # two sites combined: no single site, so nothing is guessed
    mixed = store["fc"] + store["blocks.0.hook_post"]
    assert ClassSelectivity().fit(mixed).site_ is None


def test_in_memory_dataarrays_name_their_site_or_take_site_keyword(two_layer_store):
    store, sites, labels = two_layer_store
    mem = {s: xr.DataArray(v, dims=("sample", "unit"), coords={"label": ("sample", labels)},
                           name="activation") for s, v in sites.items()}
    by_attr = ClassSelectivity().fit(mem["fc"].assign_attrs(site="fc"))
    by_name = ClassSelectivity().fit(mem["blocks.0.hook_post"].rename("blocks.0.hook_post"))
    assert (by_attr.site_, by_name.site_) == ("fc", "blocks.0.hook_post")
    # nothing tells: save refuses a name without a site instead of overwriting
    bare = ClassSelectivity().fit(mem["fc"])
    with pytest.raises(ConfigError, match="site=.*fit\\(acts, site='fc1'\\)"):
        bare.save(store)
    n1 = ClassSelectivity().fit(mem["fc"], site="fc").save(store)
    n2 = ClassSelectivity().fit(mem["blocks.0.hook_post"], site="blocks.0.hook_post").save(store)
    assert (n1, n2) == ("class_selectivity/fc", "class_selectivity/blocks.0.hook_post")
    assert sorted(store.list_results()) == sorted([n1, n2])
    # a weight-based detector has no site either: site= names its result
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    cap = FeatureCapacity().fit(model, embedding=torch.eye(2), site="toy.0")
    assert cap.save(store) == "feature_capacity/toy.0"


def test_site_keyword_that_contradicts_the_source_raises(two_layer_store):
    store, _, _ = two_layer_store
    with pytest.raises(ConfigError, match="site='fx'.*from site 'fc'.*name="):
        ClassSelectivity().fit(store["fc"], site="fx")
    with pytest.raises(ConfigError, match="non-empty string"):
        ClassSelectivity().fit(store["fc"], site="")


# ------------------------------------------------------------------ fit keywords
def test_fit_keyword_typo_raises_naming_the_closest():
    pl = make_planted_classes(n_samples=60, n_classes=3, units_per_class=1, n_poly=1, seed=0)
    acts = pl.activations
    with pytest.raises(ConfigError, match="unexpected keyword lables=.*'labels'") as err:
        ClassSelectivity().fit(acts, lables=acts["label"].values)
    assert isinstance(err.value, TypeError)  # like Python's own unexpected keyword
    with pytest.raises(TypeError, match="represnt=.*'represent'.*model, inputs"):
        HDBSCANClusters(top_k=20, min_cluster_size=5).fit(acts, represnt=acts)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="embeding=.*'embedding'"):
        FeatureCapacity().fit(model, embeding=torch.eye(2))
    # the valid keywords still work
    assert FeatureCapacity().fit(model, embedding=torch.eye(2)).n_units_ == 2


def test_custom_detector_declares_kwargs_it_reads():
    class Shifted(Detector):
        fit_keywords = ("offset",)

        def _detect(self, activations, labels, **kwargs):
            s = activations.mean("sample") + kwargs.get("offset", 0.0)
            return xr.Dataset({"score": s, "polysemantic": s > 1})

    acts = xr.DataArray(np.ones((3, 2)), dims=("sample", "unit"))
    assert Shifted().fit(acts, offset=1.0).polysemantic_.tolist() == [0, 1]
    with pytest.raises(ConfigError, match="offest=.*'offset'"):
        Shifted().fit(acts, offest=1.0)
