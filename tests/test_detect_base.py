"""Detector base class: params API, fitted attributes, registry, entry points, save/load,
and the bad-input errors every detector shares."""

from __future__ import annotations

import importlib.metadata as md

import numpy as np
import pytest
import xarray as xr

from polysdk.data import make_planted_classes, make_planted_concepts
from polysdk.detect import (
    ClassSelectivity,
    ConceptRanking,
    ConceptSets,
    Detector,
    HDBSCANClusters,
    available_detectors,
    register,
)
from polysdk.detect._registry import DETECTORS
from polysdk.errors import ConfigError, DetectorInputError, NotFittedError, SiteNotFoundError
from polysdk.store import ActivationStore


class Spread(Detector):
    """A custom detector: one method to write."""

    def __init__(self, cut: float = 1.0, note: str = "x"):
        self.cut = cut
        self.note = note

    def _detect(self, activations, labels):
        s = activations.std("sample")
        return xr.Dataset({"score": s, "polysemantic": s > self.cut})


@pytest.fixture
def clean_registry():
    """Names registered by the test are forgotten after it (earlier ones restored)."""
    before = {n: DETECTORS.get(n) for n, where in DETECTORS.sources().items()
              if where == "registered"}
    yield DETECTORS
    for name, where in DETECTORS.sources().items():
        if where == "registered":
            DETECTORS.unregister(name)
    for name, cls in before.items():
        DETECTORS.register(name, cls)


def _acts(values, **coords):
    return xr.DataArray(np.asarray(values, dtype=float), dims=("sample", "unit"),
                        coords={k: ("sample", v) for k, v in coords.items()})


def test_params_repr_clone_and_set_params():
    det = Spread(cut=2.0)
    assert det.get_params() == {"cut": 2.0, "note": "x"}
    assert repr(det) == "Spread(cut=2.0)"  # defaults are not shown
    assert det.set_params(note="y") is det and det.note == "y"
    twin = det.clone()
    assert twin is not det and twin.get_params() == det.get_params()
    with pytest.raises(ConfigError, match="no parameter 'cutt'; did you mean 'cut'"):
        det.set_params(cutt=1)


def test_fitted_attributes_raise_not_fitted_before_fit_and_fit_returns_self():
    det = Spread()
    with pytest.raises(NotFittedError, match="not fitted yet"):
        _ = det.result_
    with pytest.raises(AttributeError):  # NotFittedError is an AttributeError too
        _ = det.polysemantic_
    assert not hasattr(det, "result_")
    acts = _acts([[0, 0, 5], [0, 4, -5], [0, 0, 5]])
    assert det.fit(acts) is det
    # std over samples: 0, 1.886, 4.714 -> units 1 and 2 above cut 1.0
    np.testing.assert_allclose(det.result_["score"].values, np.std(acts.values, axis=0))
    assert det.polysemantic_.tolist() == [1, 2]
    assert det.result_["polysemantic"].dtype == bool
    assert det.result_.attrs["detector_class"].endswith("Spread")


def test_custom_detector_output_is_validated():
    class Bad(Detector):
        def _detect(self, activations, labels):
            return xr.Dataset({"score": activations.mean("sample")})

    with pytest.raises(ConfigError, match="missing \\['polysemantic'\\]"):
        Bad().fit(_acts([[1.0, 2.0]]))


def test_register_decorator_from_name_and_unknown_name(clean_registry):
    @register("spread_test")
    class Spread2(Spread):
        pass

    det = Detector.from_name("spread_test", cut=0.5)
    assert isinstance(det, Spread2) and det.cut == 0.5
    assert "spread_test" in available_detectors()
    with pytest.raises(ConfigError, match="already registered"):
        register("spread_test", Spread)
    register("spread_test", Spread, overwrite=True)
    assert type(Detector.from_name("spread_test")) is Spread
    with pytest.raises(ConfigError) as err:
        Detector.from_name("hdbscn")
    msg = str(err.value)
    assert "'hdbscn'" in msg and "Did you mean 'hdbscan'" in msg
    for name in ("class_selectivity", "hdbscan", "concept_sets", "concept_ranking"):
        assert name in msg


def test_builtins_are_registered():
    names = available_detectors()
    assert {"class_selectivity", "hdbscan", "concept_sets", "concept_ranking"} <= set(names)
    assert isinstance(Detector.from_name("hdbscan", top_k=10), HDBSCANClusters)


def test_entry_point_group_is_read(clean_registry, monkeypatch):
    ep = md.EntryPoint(name="fake_plugin", value="tests.test_detect_base:Spread",
                       group="polysdk.detectors")
    calls = []

    def fake_entry_points(group=None, **_):
        calls.append(group)
        return [ep] if group == "polysdk.detectors" else []

    monkeypatch.setattr(md, "entry_points", fake_entry_points)
    det = Detector.from_name("fake_plugin", cut=3.0)
    assert type(det).__name__ == "Spread" and det.cut == 3.0
    assert calls and set(calls) == {"polysdk.detectors"}


def test_installed_plugin_package_is_found_by_name():
    # tests/plugin_package is pip-installed by `make install` (its pyproject declares the
    # entry point); polysdk finds it with no import.
    det = Detector.from_name("max_spread", ratio=2.0)
    acts = _acts([[1, 1], [1, 1], [1, 9]])
    assert det.fit(acts).polysemantic_.tolist() == [1]  # 9 / (11/3) = 2.45 > 2


def test_save_and_load_roundtrip_through_the_store(tmp_path):
    pl = make_planted_classes(n_samples=300, n_classes=4, units_per_class=2, n_poly=2, seed=3)
    with ActivationStore(tmp_path / "a.zarr", mode="w", chunk_samples=64) as store:
        store.append({"fc": pl.activations.values}, dims={"fc": ("sample", "unit")},
                     coords={"label": pl.activations["label"].values})
    store = ActivationStore(tmp_path / "a.zarr", mode="a")
    det = ClassSelectivity(min_rate=0.01).fit(store, site="fc")
    name = det.save(store)
    assert name == "class_selectivity/fc"
    back = Detector.load(store, name)
    assert isinstance(back, ClassSelectivity) and back.min_rate == 0.01
    np.testing.assert_array_equal(back.polysemantic_, det.polysemantic_)
    np.testing.assert_allclose(back.result_["firing_rate"].values,
                               det.result_["firing_rate"].values)
    assert back.result_.attrs["polysdk_version"]
    # string variables survive (ConceptSets' top_token)
    pc = make_planted_concepts(texts_per_set=4, seed=1)
    cs = ConceptSets(top_n=8).fit(pc.activations)
    cs.save(store, "concept_sets/planted")
    back = Detector.load(store, "concept_sets/planted")
    assert back.result_["top_token"].values.tolist() == cs.result_["top_token"].values.tolist()
    with pytest.raises(NotFittedError):
        ClassSelectivity().save(store)
    with pytest.raises(SiteNotFoundError, match="'fx' is not in the store.*'fc'"):
        ClassSelectivity().fit(store, site="fx")


# ------------------------------------------------------------------ bad input
def test_unknown_site_names_the_closest():
    class FakeStore:
        sites = ["features.6", "features.8"]

        def __getitem__(self, k):
            raise AssertionError("not reached")

        def read_result(self, name):
            raise AssertionError

    with pytest.raises(SiteNotFoundError, match="'features.7'.*features.6"):
        ClassSelectivity().fit(FakeStore(), site="features.7")


def test_wrong_dims_and_bare_arrays():
    acts = xr.DataArray(np.ones((4, 3)), dims=("batch", "neuron"))
    with pytest.raises(DetectorInputError, match="needs dims 'sample' and 'unit'.*rename"):
        ClassSelectivity().fit(acts, labels=[0, 1, 0, 1])
    with pytest.raises(DetectorInputError, match="named dims"):
        ClassSelectivity().fit(np.ones((4, 3)))
    cube = xr.DataArray(np.ones((4, 3, 2)), dims=("sample", "unit", "head"))
    with pytest.raises(DetectorInputError, match="cannot use dims \\['head'\\]"):
        ConceptSets().fit(cube, labels=list("abab"))


def test_labels_missing_or_wrong_length():
    acts = _acts(np.ones((4, 2)))
    with pytest.raises(DetectorInputError, match="needs per-sample labels.*labels="):
        ClassSelectivity().fit(acts)
    with pytest.raises(DetectorInputError, match="shape \\(3,\\).*4 samples"):
        ClassSelectivity().fit(acts, labels=[0, 1, 2])
    with pytest.raises(DetectorInputError, match="'concept' coordinate"):
        ConceptSets().fit(acts)
    with pytest.raises(DetectorInputError, match="'lbl' is not a coordinate"):
        ConceptRanking().fit(acts, labels="lbl")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("make", [
    lambda: ClassSelectivity(), lambda: HDBSCANClusters(top_k=4, min_cluster_size=2),
    lambda: ConceptRanking(top_n=1), lambda: Spread()])
def test_non_finite_activations_are_refused(make, bad):
    values = np.arange(24, dtype=float).reshape(8, 3)
    values[5, 1] = bad
    acts = _acts(values, label=np.array(list("abababab"))).chunk({"sample": 3})
    with pytest.raises(DetectorInputError, match="1 NaN or infinite values"):
        make().fit(acts)


def test_too_few_samples_for_top_k():
    acts = _acts(np.random.default_rng(0).random((30, 2)))
    with pytest.raises(DetectorInputError, match="top_k=1000 but .* only 30 samples.*top_k<=30"):
        HDBSCANClusters().fit(acts)


def test_concept_set_with_no_texts():
    pc = make_planted_concepts(texts_per_set=2, seed=0)
    with pytest.raises(DetectorInputError, match="\\['poetry'\\] have no texts"):
        ConceptSets(top_n=5, sets=["medical", "poetry"]).fit(pc.activations)
    with pytest.raises(DetectorInputError, match="concept set 'poetry' has no texts"):
        ConceptSets.record(pc.model, pc.tokenizer, {"medical": pc.texts["medical"],
                                                    "poetry": []}, site="act")


def test_custom_detector_example_runs(capsys):
    import runpy
    from pathlib import Path

    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "custom_detector.py"),
                   run_name="__main__")
    out = capsys.readouterr().out
    assert "TopClassShare()" in out and "precision 1.00 recall 1.00" in out
    assert "reloaded TopClassShare()" in out
