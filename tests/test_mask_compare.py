"""Mask overlap statistics against enumeration and simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from polysdk.errors import ConfigError
from polysdk.mask import densities, hypergeom_overlap, mask_overlap, masks_to_dataset


def enumerate_overlap(n: int, ka: int, kb: int) -> dict[int, float]:
    """P(I = i) by listing every mask b of kb ones against a fixed a of ka ones."""
    a = set(range(ka))
    counts: dict[int, int] = {}
    for b in itertools.combinations(range(n), kb):
        i = len(a & set(b))
        counts[i] = counts.get(i, 0) + 1
    total = math.comb(n, kb)
    return {i: c / total for i, c in counts.items()}


def test_hypergeom_overlap_hand_and_enumeration():
    r = hypergeom_overlap(10, 5, 5, 5)
    assert r["expected_intersection"] == 2.5
    assert r["p_value"] == pytest.approx(1 / math.comb(10, 5))
    assert r["p_value_depletion"] == pytest.approx(1.0)
    assert hypergeom_overlap(10, 5, 5, 0)["p_value_depletion"] == pytest.approx(1 / 252)
    n, ka, kb = 8, 3, 4
    dist = enumerate_overlap(n, ka, kb)
    for obs in range(0, 4):
        r = hypergeom_overlap(n, ka, kb, obs)
        assert r["p_value"] == pytest.approx(sum(p for i, p in dist.items() if i >= obs))
        assert r["p_value_depletion"] == pytest.approx(sum(p for i, p in dist.items() if i <= obs))
    assert r["expected_intersection"] == pytest.approx(sum(i * p for i, p in dist.items()))
    assert r["expected_iou"] == pytest.approx(sum(i / (ka + kb - i) * p for i, p in dist.items()))
    with pytest.raises(ConfigError, match="inconsistent"):
        hypergeom_overlap(5, 2, 2, 3)


def test_mask_overlap_table_hand_computed():
    a = {"l1.weight": torch.tensor([[1, 1, 0], [0, 1, 0]]), "l1.bias": torch.tensor([1, 0])}
    b = {"l1.weight": torch.tensor([[1, 0, 0], [0, 1, 1]]), "l1.bias": torch.tensor([0, 1])}
    t = mask_overlap(a, b)
    w = t.sel(param="l1.weight")
    assert (int(w.size), int(w.kept_a), int(w.kept_b), int(w.intersection), int(w.union)) == (6, 3, 3, 2, 4)
    assert float(w.iou) == 0.5 and float(w.expected_intersection) == 1.5
    assert float(w.enrichment) == pytest.approx(2 / 1.5)
    o = t.sel(param="overall")
    assert (int(o.size), int(o.kept_a), int(o.kept_b), int(o.intersection)) == (8, 4, 4, 2)
    assert float(o.expected_intersection) == pytest.approx(1.5 + 0.5)  # layerwise: sum of the layers
    # the layerwise null by enumeration: independent draws in each parameter
    dw, db = enumerate_overlap(6, 3, 3), enumerate_overlap(2, 1, 1)
    p = sum(pw * pb for (iw, pw), (ib, pb) in itertools.product(dw.items(), db.items()) if iw + ib >= 2)
    assert float(o.p_value) == pytest.approx(p)
    pooled = mask_overlap(a, b, null="pooled").sel(param="overall")
    assert float(pooled.p_value) == pytest.approx(hypergeom_overlap(8, 4, 4, 2)["p_value"])
    assert float(pooled.expected_intersection) == 2.0
    assert t.attrs["null"] == "layerwise"


def test_layerwise_null_matches_simulation_on_larger_masks():
    rng = np.random.default_rng(0)
    sizes = {"a": (40, 30), "b": (64,), "c": (20, 5)}
    dens = {"a": (0.1, 0.2), "b": (0.5, 0.25), "c": (0.3, 0.3)}
    ma, mb = {}, {}
    for name, shape in sizes.items():
        n = int(np.prod(shape))
        ka, kb = round(dens[name][0] * n), round(dens[name][1] * n)
        x = np.zeros(n, bool)
        x[:ka] = True
        y = np.zeros(n, bool)
        y[: kb // 2] = True  # shares half of b's ones with a: more overlap than chance
        y[n - (kb - kb // 2):] = True
        ma[name], mb[name] = x.reshape(shape), y.reshape(shape)
    table = mask_overlap(ma, mb).sel(param="overall")
    draws = np.zeros(20000)
    for name, shape in sizes.items():
        n = int(np.prod(shape))
        ka, kb = int(ma[name].sum()), int(mb[name].sum())
        draws += rng.hypergeometric(ka, n - ka, kb, size=draws.size)
    obs = int(table.intersection)
    assert float(table.expected_intersection) == pytest.approx(draws.mean(), rel=0.02)
    assert float(table.p_value) == pytest.approx((draws >= obs).mean(), abs=0.01)
    assert float(table.p_value_depletion) == pytest.approx((draws <= obs).mean(), abs=0.01)


def test_mask_overlap_accepts_datasets_and_checks_inputs():
    a = {"w": torch.tensor([True, False, True, True])}
    b = {"w": torch.tensor([True, True, False, True])}
    t1 = mask_overlap(masks_to_dataset(a), masks_to_dataset(b))
    t2 = mask_overlap(a, b)
    assert int(t1.intersection.sel(param="w")) == int(t2.intersection.sel(param="w")) == 2
    with pytest.raises(ConfigError, match="different parameters"):
        mask_overlap(a, {"v": torch.ones(4)})
    with pytest.raises(ConfigError, match="shapes"):
        mask_overlap(a, {"w": torch.ones(5)})


def test_densities_per_param_layer_overall():
    masks = {"f.0.weight": torch.tensor([[1, 0], [0, 0]]), "f.0.bias": torch.tensor([1, 1]),
             "f.2.weight": torch.zeros(4)}
    d = densities(masks)
    assert d["param"] == {"f.0.weight": 0.25, "f.0.bias": 1.0, "f.2.weight": 0.0}
    assert d["layer"] == {"f.0": 0.5, "f.2": 0.0}
    assert d["overall"] == pytest.approx(3 / 10) and d["kept"] == 3 and d["size"] == 10
    ds = masks_to_dataset(masks, attrs={"unit": 3})
    assert ds["f.0.weight"].dims == ("f.0.weight.out", "f.0.weight.in")
    assert ds.attrs["unit"] == 3 and ds.attrs["density"] == pytest.approx(0.3)
