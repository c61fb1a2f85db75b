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


# ------------------------------------------------ tails in log space, against exact sums
def _planted(n: int, ka: int, kb: int, inter: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of n weights keeping ka and kb with exactly ``inter`` in common."""
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:ka] = True
    b[:inter] = True
    b[ka:ka + kb - inter] = True
    return a, b


def exact_log_tails(rows: list[tuple[int, int, int]], observed: int) -> tuple[float, float]:
    """log P(S >= observed), log P(S <= observed) for S a sum of independent
    hypergeometric overlaps, by exact integer convolution of the counts
    C(ka, i) C(n - ka, kb - i) over the product of the C(n, kb)."""
    counts, denom = [1], 1
    for n, ka, kb in rows:
        lo = max(0, ka + kb - n)
        part = [0] * lo + [math.comb(ka, i) * math.comb(n - ka, kb - i)
                           for i in range(lo, min(ka, kb) + 1)]
        out = [0] * (len(counts) + len(part) - 1)
        for i, c in enumerate(counts):
            if c:
                for j, d in enumerate(part):
                    out[i + j] += c * d
        counts, denom = out, denom * math.comb(n, kb)
    up, down = sum(counts[observed:]), sum(counts[:observed + 1])
    return math.log(up) - math.log(denom), math.log(down) - math.log(denom)


def _table(cases: dict[str, tuple[int, int, int, int]]):
    ma, mb = {}, {}
    for name, case in cases.items():
        ma[name], mb[name] = _planted(*case)
    return mask_overlap(ma, mb)


def test_one_layer_overall_equals_scipy_hypergeom_at_any_depth():
    from scipy import stats

    for n, ka, kb, inter in [(60, 20, 25, 9), (3000, 300, 300, 260), (4000, 400, 400, 380),
                             (5000, 2500, 2500, 1000)]:
        o = _table({"w": (n, ka, kb, inter)}).sel(param="overall")
        ref_up = stats.hypergeom.logsf(inter - 1, n, ka, kb)
        ref_down = stats.hypergeom.logcdf(inter, n, ka, kb)
        assert float(o.log_p_value) == pytest.approx(ref_up, rel=1e-10, abs=1e-12)
        assert float(o.log_p_value_depletion) == pytest.approx(ref_down, rel=1e-10, abs=1e-12)
        assert float(o.p_value) == pytest.approx(stats.hypergeom.sf(inter - 1, n, ka, kb),
                                                 rel=1e-9, abs=0)
        up, down = exact_log_tails([(n, ka, kb)], inter)
        assert float(o.log_p_value) == pytest.approx(up, rel=1e-10, abs=1e-12)
        assert float(o.log_p_value_depletion) == pytest.approx(down, rel=1e-10, abs=1e-12)
    # the last but one: p = exp(-1935), below the smallest float; its log is still exact
    up, _ = exact_log_tails([(4000, 400, 400)], 380)
    assert up < math.log(5e-324)


def test_layerwise_overall_has_no_round_off_floor():
    # the case: per-layer p 1.9e-283 and 4.7e-52 (the old FFT gave 9.5e-17 overall)
    cases = {"l1": (3000, 300, 300, 260), "l2": (1000, 100, 100, 66), "l3": (1000, 100, 100, 10)}
    t = _table(cases)
    rows = [c[:3] for c in cases.values()]
    up, down = exact_log_tails(rows, 336)
    o = t.sel(param="overall")
    assert int(o.intersection) == 336
    assert float(o.p_value) == pytest.approx(math.exp(up), rel=1e-8, abs=0)  # 2.157e-264
    assert float(o.log_p_value) == pytest.approx(up, rel=1e-10)
    assert float(o.log_p_value_depletion) == pytest.approx(down, rel=1e-8, abs=1e-250)
    # per-parameter logs agree with their p-values where those do not underflow
    for name in cases:
        r = t.sel(param=name)
        assert float(r.log_p_value) == pytest.approx(math.log(float(r.p_value)), rel=1e-9)


@pytest.mark.parametrize("cases", [
    # beyond the smallest float (log p ~ -1900): several layers all fully shared
    {"a": (2000, 200, 200, 200), "b": (900, 90, 90, 90), "c": (50, 25, 25, 25)},
    # far fewer shared weights than chance: the depletion tail is the tiny one
    {"a": (1000, 500, 500, 0), "b": (800, 400, 400, 100), "c": (30, 10, 10, 3)},
    # near the mean: both tails moderate
    {"a": (400, 100, 100, 26), "b": (300, 150, 150, 74), "c": (9, 3, 3, 1)},
    # a layer whose overlap is fixed (everything kept) only shifts the sum
    {"a": (500, 50, 60, 30), "full": (40, 40, 7, 7), "empty": (30, 0, 12, 0)},
])
def test_layerwise_tails_match_exact_convolution(cases):
    t = _table(cases)
    o = t.sel(param="overall")
    up, down = exact_log_tails([c[:3] for c in cases.values()], int(o.intersection))
    assert float(o.log_p_value) == pytest.approx(up, rel=1e-9, abs=1e-12)
    assert float(o.log_p_value_depletion) == pytest.approx(down, rel=1e-9, abs=1e-12)
    assert float(o.p_value) == pytest.approx(math.exp(up), rel=1e-8, abs=1e-300)
    assert t.attrs["overall_method"] == "exact"


def test_all_layers_fully_shared_is_the_product_of_one_over_binomials():
    cases = {"a": (2000, 200, 200, 200), "b": (900, 90, 90, 90)}
    o = _table(cases).sel(param="overall")
    product = -sum(math.log(math.comb(n, k)) for n, k, _, _ in cases.values())
    assert float(o.log_p_value) == pytest.approx(product, rel=1e-12)
    assert float(o.p_value) == 0.0  # exp(-390 - 120 ...) underflows; the log does not


def test_saddlepoint_tails_beyond_the_exact_limit(monkeypatch):
    import polysdk.mask.compare as compare

    cases = {"l1": (3000, 300, 300, 260), "l2": (1000, 100, 100, 66), "l3": (1000, 100, 100, 10)}
    exact = _table(cases).sel(param="overall")
    monkeypatch.setattr(compare, "_MAX_EXACT", 10)
    t = _table(cases)
    approx = t.sel(param="overall")
    assert t.attrs["overall_method"] == "saddlepoint"
    # a relative error in p under 1% is an absolute one under 0.01 in log p
    assert float(approx.log_p_value) == pytest.approx(float(exact.log_p_value), abs=0.01)
    near = {"a": (400, 100, 100, 26), "b": (300, 150, 150, 74)}
    monkeypatch.setattr(compare, "_MAX_EXACT", 10**7)
    e = _table(near).sel(param="overall")
    monkeypatch.setattr(compare, "_MAX_EXACT", 10)
    s = _table(near).sel(param="overall")
    assert float(s.p_value) == pytest.approx(float(e.p_value), rel=0.01)
    assert float(s.p_value_depletion) == pytest.approx(float(e.p_value_depletion), rel=0.01)
