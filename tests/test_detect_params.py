"""The detectors' contract (issue 19, section 1): one parameter API with declared
constraints, fitted attributes that tell a typo from "not fitted", no temporary state
left by ``fit``, token rows in the base, a sibling base for weight-based detectors, one
registry, and no import from a layer above the detectors."""

from __future__ import annotations

import ast
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from polysdk.data import make_planted_classes, make_planted_concepts
from polysdk.detect import (
    DETECTORS,
    BaseDetector,
    ClassSelectivity,
    ConceptRanking,
    ConceptSets,
    Detector,
    DictionaryFeatures,
    FeatureCapacity,
    HDBSCANClusters,
    WeightDetector,
    register,
)
from polysdk.errors import ConfigError, DetectorInputError, NotFittedError
from polysdk.params import Interval
from polysdk.registry import Registry

DETECT = Path(__file__).parents[1] / "polysdk" / "detect"

# (class, parameter, bad value, the rule the message states)
BAD = [
    (ClassSelectivity, "min_rate", 2, "a number in [0, 1]"),
    (ClassSelectivity, "min_rate", float("nan"), "a number in [0, 1]"),
    (ClassSelectivity, "min_classes", 1, "an integer in [2, inf]"),
    (ClassSelectivity, "min_classes", 2.5, "an integer in [2, inf]"),
    (ClassSelectivity, "threshold", "0", "a number in [-inf, inf]"),
    (ClassSelectivity, "position", "middle", "a position selection"),
    (ClassSelectivity, "classes", "ab", "None or a list of values"),
    (ClassSelectivity, "per", "word", "one of 'auto', 'text', 'token'"),
    (HDBSCANClusters, "top_k", 1, "an integer in [2, inf]"),
    (HDBSCANClusters, "min_cluster_size", 0, "an integer in [2, inf]"),
    (HDBSCANClusters, "representation", "layers", "one of 'layer', 'site', 'attribution'"),
    (HDBSCANClusters, "position", [0.5], "a position selection"),
    (HDBSCANClusters, "hdbscan_params", ["metric"], "None or a dict"),
    (HDBSCANClusters, "attribution_site", 3, "None or a non-empty string"),
    (HDBSCANClusters, "unit_batch", 0, "an integer in [1, inf]"),
    (HDBSCANClusters, "batch_size", -1, "an integer in [1, inf]"),
    (ConceptSets, "top_n", 0, "an integer in [1, inf]"),
    (ConceptSets, "aggregate", "median", "one of 'mean', 'max'"),
    (ConceptSets, "min_sets", 1, "an integer in [2, inf]"),
    (ConceptSets, "exactly", 0, "an integer in [1, inf] or None"),
    (ConceptSets, "shallow_share", 0, "a number in (0, 1]"),
    (ConceptSets, "set_coord", "", "a non-empty string"),
    (ConceptSets, "exclude_shallow", "yes", "True or False"),
    (ConceptRanking, "method", "probes", "one of 'mean_diff', 'probe'"),
    (ConceptRanking, "top_n", 0, "an integer in [1, inf]"),
    (ConceptRanking, "mass", 1.5, "a number in (0, 1]"),
    (ConceptRanking, "min_concepts", 1, "an integer in [2, inf]"),
    (ConceptRanking, "C", 0, "a number in (0, inf)"),
    (ConceptRanking, "l1_ratio", -0.1, "a number in [0, 1]"),
    (ConceptRanking, "probe_solver", "lbfgs", "one of 'saga', 'sgd'"),
    (ConceptRanking, "per", None, "one of 'auto', 'text', 'token'"),
    (FeatureCapacity, "threshold", 2, "a number in (0, 1]"),
    (FeatureCapacity, "threshold", 0, "a number in (0, 1]"),
    (FeatureCapacity, "eps", -1e-10, "a number in [0, inf]"),
    (DictionaryFeatures, "k", 0, "one of 'auto' or an integer in [1, inf]"),
    (DictionaryFeatures, "lr", 0, "a number in (0, inf)"),
]


@pytest.mark.parametrize("cls, name, bad, rule", BAD,
                         ids=[f"{c.__name__}-{n}={b!r}" for c, n, b, _ in BAD])
def test_every_bad_parameter_raises_config_error_naming_value_and_rule(cls, name, bad, rule):
    start = f"{cls.__name__}({name}={bad!r}): {name} must be {rule}"
    with pytest.raises(ConfigError) as err:  # on construction
        cls(**{name: bad})
    msg = str(err.value)
    assert msg.startswith(start) and msg.endswith(f"; got {bad!r}"), msg
    with pytest.raises(ConfigError) as err:  # through set_params
        cls().set_params(**{name: bad})
    assert str(err.value) == msg


def test_a_value_set_by_hand_is_checked_at_fit():
    det = ClassSelectivity()
    det.min_rate = 5  # past the constructor and set_params
    with pytest.raises(ConfigError, match=r"min_rate=5\): min_rate must be a number in \[0, 1\]"):
        det.fit(xr.DataArray(np.ones((4, 2)), dims=("sample", "unit")), labels=[0, 1, 0, 1])


def test_one_method_custom_detector_declares_constraints_checked_at_fit():
    class Cut(Detector):  # its __init__ does not validate: fit does
        _constraints = {"cut": Interval(0, None)}

        def __init__(self, cut: float = 1.0):
            self.cut = cut

        def _detect(self, activations, labels):
            s = activations.std("sample")
            return xr.Dataset({"score": s, "polysemantic": s > self.cut})

    acts = xr.DataArray(np.array([[0.0, 0.0], [0.0, 4.0]]), dims=("sample", "unit"))
    assert Cut(cut=-1.0).get_params() == {"cut": -1.0}  # constructor: no check, no effect
    with pytest.raises(ConfigError, match=r"Cut\(cut=-1\.0\): cut must be a number in \[0, inf\]"):
        Cut(cut=-1.0).fit(acts)
    assert Cut().fit(acts).polysemantic_.tolist() == [1]


def test_cross_parameter_rule_is_checked_at_fit_so_set_params_can_go_one_at_a_time():
    det = HDBSCANClusters(top_k=10)  # min_cluster_size 50 > 10: not yet an error
    acts = xr.DataArray(np.random.default_rng(0).random((40, 3)), dims=("sample", "unit"))
    with pytest.raises(ConfigError, match=r"min_cluster_size=50\): min_cluster_size must be "
                                          r"<= top_k=10"):
        det.fit(acts)
    assert det.set_params(min_cluster_size=5).fit(acts).n_units_ == 3


NON_DEFAULT = [
    ClassSelectivity(threshold=0.5, min_rate=0.05, min_classes=3, position="mean",
                     classes=["a", "b"], per="text"),
    HDBSCANClusters(top_k=200, position={"y": 1, "x": 1}, representation="site",
                    min_cluster_size=20, hdbscan_params={"metric": "manhattan"},
                    unit_batch=4, batch_size=16),
    ConceptSets(top_n=5, threshold=0.1, aggregate="max", exactly=2, sets=["x", "y"],
                set_coord="topic", token_coord="tok", mask_coord="m", shallow_share=0.7,
                exclude_shallow=True, keep_tokens=False),
    ConceptRanking(method="probe", top_n=7, mass=0.9, concepts=["LOC"], min_concepts=3,
                   position=-1, saliency_block=10, C=0.5, l1_ratio=0.2, max_iter=50,
                   probe_solver="sgd", standardize=False, random_state=3, per="token"),
    FeatureCapacity(threshold=0.99, eps=1e-8),
    DictionaryFeatures(n_features=16, k=2, epochs=3, lr=1e-3, share=0.2, seed=4),
]


@pytest.mark.parametrize("det", NON_DEFAULT, ids=lambda d: type(d).__name__)
def test_get_set_params_clone_and_repr_round_trip(det):
    params = det.get_params()
    assert list(params) == type(det)._param_names()
    twin = det.clone()
    assert type(twin) is type(det) and twin is not det and twin.get_params() == params
    fresh = type(det)()
    assert fresh.set_params(**params) is fresh and fresh.get_params() == params
    # repr shows exactly the non-default parameters and rebuilds the same detector
    rebuilt = eval(repr(det), {type(det).__name__: type(det)})
    assert rebuilt.get_params() == params
    assert repr(type(det)()) == f"{type(det).__name__}()"
    first = next(iter(params))
    with pytest.raises(ConfigError, match=f"no parameter '{first}x'; did you mean '{first}'"):
        det.set_params(**{first + "x": 1})
    assert det.get_params() == params


def test_clone_with_overrides_is_unfitted():
    pl = make_planted_classes(n_samples=200, n_classes=4, units_per_class=2, n_poly=2, seed=0)
    det = ClassSelectivity(min_rate=0.01).fit(pl.activations)
    twin = det.clone(min_classes=3)
    assert twin.get_params() == {**det.get_params(), "min_classes": 3}
    assert not hasattr(twin, "result_")


# ------------------------------------------------------------------ fitted attributes
def test_typo_in_a_fitted_attribute_names_the_closest_real_one():
    det = ClassSelectivity()
    with pytest.raises(AttributeError) as err:
        det.resutl_
    assert not isinstance(err.value, NotFittedError)
    assert "no attribute 'resutl_'; did you mean 'result_'?" in str(err.value)
    with pytest.raises(NotFittedError, match="result_ is not available.*not fitted yet"):
        det.result_
    pl = make_planted_classes(n_samples=120, n_classes=3, units_per_class=1, n_poly=1, seed=0)
    det.fit(pl.activations)
    with pytest.raises(AttributeError, match="'polysemantc_'; did you mean 'polysemantic_'"):
        det.polysemantc_
    with pytest.raises(AttributeError, match="'min_rat'; did you mean 'min_rate'"):
        det.min_rat  # a parameter typo too


def test_declared_fitted_attributes_of_a_subclass_are_not_fitted_before_fit():
    det = FeatureCapacity()
    for name in ("mono_per_feature_", "features_covered_", "n_monosemantic_", "site_"):
        with pytest.raises(NotFittedError, match=f"FeatureCapacity.{name} is not available"):
            getattr(det, name)
    with pytest.raises(AttributeError, match="did you mean 'mono_per_feature_'") as err:
        det.mono_per_featur_
    assert not isinstance(err.value, NotFittedError)
    assert not hasattr(DictionaryFeatures(), "autoencoder_")
    with pytest.raises(NotFittedError):
        DictionaryFeatures().autoencoder_


# ------------------------------------------------------------------ no temporary state
BASE_FITTED = {"result_", "polysemantic_", "site_", "n_units_"}


def _fitted(det, *args, **kwargs):
    before = dict(vars(det))
    det.fit(*args, **kwargs)
    added = set(vars(det)) - set(before)
    assert all(vars(det)[k] is v for k, v in before.items())  # parameters untouched
    return added


def test_fit_leaves_only_parameters_and_fitted_attributes():
    pl = make_planted_classes(n_samples=300, n_classes=4, units_per_class=2, n_poly=2, seed=1)
    acts = pl.activations.chunk({"sample": 64})
    pc = make_planted_concepts(texts_per_set=3, seed=0)
    cases = [
        (ClassSelectivity(), (acts,)),
        (HDBSCANClusters(top_k=60, min_cluster_size=15), (acts,)),
        (ConceptRanking(top_n=3), (acts,)),
        (ConceptSets(top_n=8), (pc.activations,)),
    ]
    for det, args in cases:
        added = _fitted(det, *args)
        assert added == BASE_FITTED, (type(det).__name__, added)
        assert not [k for k in vars(det) if k.startswith("_")]
    cap = FeatureCapacity()
    added = _fitted(cap, np.eye(3))
    assert added == BASE_FITTED | set(FeatureCapacity.fitted_attributes)


def test_client_reaches_detect_as_an_argument_not_as_state():
    class FakeClient:  # dask.compute(scheduler=<a "...Client" with .get>) calls its get
        calls = 0
        asynchronous = False

        def get(self, dsk, keys, **kwargs):
            import dask

            FakeClient.calls += 1
            return dask.get(dsk, keys)

    pl = make_planted_classes(n_samples=200, n_classes=4, units_per_class=2, n_poly=2, seed=2)
    det = ClassSelectivity()
    added = _fitted(det, pl.activations.chunk({"sample": 50}), client=FakeClient())
    ref = ClassSelectivity().fit(pl.activations)
    assert FakeClient.calls >= 1 and added == BASE_FITTED
    np.testing.assert_array_equal(det.polysemantic_, ref.polysemantic_)


# ------------------------------------------------------------------ rows and bases
def _flat():
    return xr.DataArray(np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]), dims=("token", "unit"),
                        coords={"sample": ("token", [0, 0, 1]), "label": ("token", list("aab"))})


def test_base_reads_token_rows_and_token_labels():
    class Rows(Detector):
        needs_labels = True

        def _detect(self, activations, labels):
            row = next(d for d in activations.dims if d != "unit")
            s = activations.sum(row)
            return xr.Dataset({"score": s, "polysemantic": s > 2,
                               "n_labels": ("unit", [len(set(labels.values.tolist()))] * 2)})

    r = Rows().fit(_flat()).result_
    assert r["score"].values.tolist() == [4.0, 2.0] and r["n_labels"].values.tolist() == [2, 2]
    per_text = Rows().fit(_flat().drop_vars("label"), labels=["x", "y"])  # one per text
    assert per_text.result_["n_labels"].values.tolist() == [2, 2]
    with pytest.raises(DetectorInputError, match="3 tokens of 2 texts"):
        Rows().fit(_flat(), labels=[1, 2, 3, 4])
    with pytest.raises(DetectorInputError, match="per-token 'sample' coordinate"):
        Rows().fit(_flat().drop_vars("sample"))

    class SamplesOnly(Rows):
        row_dims = ("sample",)

    with pytest.raises(DetectorInputError, match="needs dims 'sample' and 'unit' but"):
        SamplesOnly().fit(_flat())


def test_weight_detector_is_a_sibling_base_with_one_method():
    class WeightNorm(WeightDetector):
        def __init__(self, cut: float = 1.0):
            self.cut = cut

        def _detect(self, model, labels):
            w = model.weight.detach().norm(dim=1).numpy()
            return xr.Dataset({"score": ("unit", w), "polysemantic": ("unit", w > self.cut)})

    layer = torch.nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.1, 0.0], [1.0, 1.0]]))
    det = WeightNorm().fit(layer, site="lin")
    assert det.polysemantic_.tolist() == [0, 2] and det.default_result_name() == "WeightNorm/lin"
    assert isinstance(det, BaseDetector) and not isinstance(det, Detector)
    assert not hasattr(Detector, "weight_based")


# ------------------------------------------------------------------ registry
def test_detectors_share_the_one_registry_class(monkeypatch):
    assert isinstance(DETECTORS, Registry) and DETECTORS.group == "polysdk.detectors"
    sources = DETECTORS.sources()
    assert sources["hdbscan"] == "built-in"
    assert sources["max_spread"] == "polysdk_example_detector:MaxSpread"  # tests/plugin_package
    bad = md.EntryPoint(name="not_a_detector", value="builtins:dict", group="polysdk.detectors")
    real = md.entry_points
    monkeypatch.setattr(md, "entry_points", lambda group=None, **kw: (
        [bad] if group == "polysdk.detectors" else real(group=group, **kw)))
    assert "not_a_detector" in DETECTORS.names()  # listed without importing it
    with pytest.raises(ConfigError, match="'not_a_detector' is <class 'dict'>, not a detector"):
        Detector.from_name("not_a_detector")


def test_a_plugin_detector_declares_constraints_too():
    acts = xr.DataArray(np.ones((3, 2)), dims=("sample", "unit"))
    det = Detector.from_name("max_spread", ratio=0.5)  # tests/plugin_package
    with pytest.raises(ConfigError, match=r"MaxSpread\(ratio=0\.5\): ratio must be a number "
                                          r"in \[1, inf\]"):
        det.fit(acts)
    assert det.set_params(ratio=2.0).fit(acts).polysemantic_.tolist() == []


def test_register_refuses_a_taken_builtin_name_and_non_detectors():
    with pytest.raises(ConfigError, match="'hdbscan' is already registered to "
                                          "polysdk.detect.hdbscan_clusters.HDBSCANClusters"):
        register("hdbscan", ClassSelectivity)
    with pytest.raises(ConfigError, match="not a detector class"):
        register("mine", dict)
    assert DETECTORS.get("hdbscan") is HDBSCANClusters


# ------------------------------------------------------------------ layers
ALLOWED = ("polysdk.errors", "polysdk.dims", "polysdk.sites", "polysdk.params",
           "polysdk.registry", "polysdk._util", "polysdk.detect")


def _polysdk_imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "polysdk":  # from polysdk import dims
                out += [(node.lineno, f"polysdk.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return [(n, m) for n, m in out if m == "polysdk" or m.startswith("polysdk.")]


def test_detectors_import_nothing_from_higher_layers():
    """Every polysdk import in polysdk/detect (lazy ones inside functions too) is of a
    layer below the detectors (errors, dims, sites, params, registry) or detect itself:
    not the root package, Probe, the store, models, data, training or studies."""
    bad = [f"{p.name}:{n}: {m}" for p in sorted(DETECT.glob("*.py"))
           for n, m in _polysdk_imports(p)
           if not any(m == a or m.startswith(a + ".") for a in ALLOWED)]
    assert bad == []


def test_importing_the_detectors_loads_no_higher_layer():
    code = (
        "import sys\n"
        "import polysdk.detect as d\n"
        "import numpy as np\n"
        "d.FeatureCapacity().fit(np.eye(2))\n"
        "mods = [m for m in sys.modules if m.startswith(('polysdk.models', 'polysdk.studies',"
        " 'polysdk.train', 'polysdk.mask', 'polysdk.intervene', 'polysdk.regularize',"
        " 'polysdk.data'))]\n"
        "print(sorted(mods))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
