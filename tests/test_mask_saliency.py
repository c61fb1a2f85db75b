"""ActGrad, SNIP, FORCE and feature preservation against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polysdk.errors import ConfigError, NotFittedError
from polysdk.mask import (
    FORCE,
    SNIP,
    ActGrad,
    collapse_target,
    feature_preservation,
    force_schedule,
    preservation_curve,
    preservation_scores,
    topk_masks,
)


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(inplace=True), nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(), nn.Flatten(), nn.LazyLinear(2),
    )


def reference_maps(net: nn.Sequential, x: torch.Tensor, unit: int, reduce: str = "sum_abs"):
    """Plain autograd, no polysdk: conv outputs, their gradients, and the inputs."""
    z1 = net[0](x)
    a1 = torch.relu(z1)
    z2 = net[2](a1)
    target = collapse_target(z2[:, unit], reduce)
    g1, g2 = torch.autograd.grad(target, [z1, z2])
    return (x, z1, g1), (a1.detach(), z2, g2)


def test_collapse_target_hand_computed():
    act = torch.tensor([[[1.0, -2.0], [0.5, 0.0]], [[-3.0, 1.0], [0.0, 2.0]]])
    assert float(collapse_target(act, "sum_abs")) == pytest.approx(9.5)
    assert float(collapse_target(act, "max")) == pytest.approx(1.0 + 2.0)
    with pytest.raises(ConfigError):
        collapse_target(act, "mean")


def test_actgrad_kernel_scores_match_a_per_kernel_brute_force():
    net = cnn()
    x = torch.randn(5, 2, 9, 9)
    net(x)  # materialise the lazy layer
    ag = ActGrad(net, "2", unit=1, params=["0", "2"], structure="kernel", batch_size=2,
                 max_chunk_elements=50).fit(x)
    raw = {}
    for name, (xin, z, g), conv in zip(("0.weight", "2.weight"), reference_maps(net, x, 1), (net[0], net[2])):
        out_c, in_c = conv.weight.shape[:2]
        score = torch.zeros(out_c, in_c)
        for o in range(out_c):
            for i in range(in_c):
                c_oi = F.conv2d(xin[:, i : i + 1], conv.weight[o : o + 1, i : i + 1].detach(), None,
                                conv.stride, conv.padding)
                score[o, i] = (c_oi[:, 0] * g[:, o]).abs().mean((1, 2)).sum()
        raw[name] = score
    total = sum(float(s.sum()) for s in raw.values())
    for name in raw:
        assert torch.allclose(ag.scores_[name], raw[name] / total, rtol=1e-4, atol=1e-8)
    # only the target unit's row of the target layer gets a score
    assert bool((ag.scores_["2.weight"][[0, 2, 3]] == 0).all()) and bool((ag.scores_["2.weight"][1] > 0).all())
    assert ag.n_reachable_ == 3 * 2 + 3
    assert "5.weight" not in ag.scores_  # not selected


def test_actgrad_filter_scores_and_linear_layers():
    net = cnn()
    x = torch.randn(4, 2, 9, 9)
    net(x)
    ag = ActGrad(net, "2", unit=0, params=["0", "2"], structure="filter").fit(x)
    (_, z1, g1), (_, z2, g2) = reference_maps(net, x, 0)
    raw = {"0.weight": (z1 * g1).abs().mean((2, 3)).sum(0).detach(),
           "2.weight": (z2 * g2).abs().mean((2, 3)).sum(0).detach()}
    total = sum(float(s.sum()) for s in raw.values())
    for name in raw:
        assert torch.allclose(ag.scores_[name], raw[name].detach() / total, rtol=1e-4)
    # a linear layer: kernel (o, i) is one weight, contribution x_bi w_oi
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    xs = torch.randn(6, 3)
    ag = ActGrad(mlp, "2", unit=1, params="*").fit(xs)
    h = mlp[0](xs)
    out = mlp[2](torch.relu(h))
    gh, go = torch.autograd.grad(out[:, 1].abs().sum(), [h, out])
    ref1 = torch.einsum("bi,oi,bo->oi", xs.abs(), mlp[0].weight.abs(), gh.abs())
    ref2 = torch.einsum("bi,oi,bo->oi", torch.relu(h).abs(), mlp[2].weight.abs(), go.abs())
    total = float((ref1.sum() + ref2.sum()).detach())
    assert torch.allclose(ag.scores_["0.weight"], ref1.detach() / total, rtol=1e-4)
    assert torch.allclose(ag.scores_["2.weight"], ref2.detach() / total, rtol=1e-4)
    with pytest.raises(ConfigError, match="Conv2d"):
        ActGrad(nn.Sequential(nn.Conv1d(2, 2, 3)), "0", unit=0, params="*").fit(torch.randn(2, 2, 5))


def test_snip_matches_plain_autograd_per_weight_and_per_kernel():
    net = cnn()
    x = torch.randn(6, 2, 9, 9)
    net(x)
    net.zero_grad()
    z2 = net[2](torch.relu(net[0](x)))
    z2[:, 2].abs().sum().backward()
    ref = {n: (net[int(n[0])].weight * net[int(n[0])].weight.grad).abs().detach() for n in ("0.weight", "2.weight")}
    total = sum(float(r.sum()) for r in ref.values())
    net.zero_grad()
    snip = SNIP(net, "2", unit=2, params=["0", "2"], batch_size=4).fit(x)
    for n in ref:
        assert torch.allclose(snip.scores_[n], ref[n] / total, rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in net.parameters())  # SNIP gives the model no gradient
    kernel = SNIP(net, "2", unit=2, params=["0", "2"], structure="kernel").fit(x)
    kref = {n: r.mean((2, 3)) for n, r in ref.items()}
    ktotal = sum(float(r.sum()) for r in kref.values())
    for n in kref:
        assert kernel.scores_[n].shape == kref[n].shape
        assert torch.allclose(kernel.scores_[n], kref[n] / ktotal, rtol=1e-4, atol=1e-9)
    masks = kernel.masks_for(k=5)
    assert sum(int(m.flatten(2)[..., 0].sum()) for m in masks.values()) == 5
    assert masks["0.weight"].shape == net[0].weight.shape


def test_target_selection_by_name_and_both_spellings_of_centre():
    net = cnn()
    x = torch.randn(4, 2, 9, 9)
    net(x)
    net.zero_grad()
    z2 = net[2](torch.relu(net[0](x)))  # (sample, unit, y, x) = (4, 4, 4, 4)
    z2[:, 1, 2, 2].abs().sum().backward()
    ref = (net[0].weight * net[0].weight.grad).abs().detach()
    net.zero_grad()
    for position in ("centre", "center", (2, 2), {"y": 2, "x": 2}):
        snip = SNIP(net, "2", unit=1, params=["0", "2"], position=position).fit(x)
        total = snip.total_score_
        assert torch.allclose(snip.scores_["0.weight"] * total, ref, rtol=1e-4, atol=1e-9), position
    # dims= names the target's axes: the same site read as channels-last puts the unit elsewhere
    last = SNIP(net, "2", unit=2, params=["0", "2"], dims=("sample", "y", "x", "unit")).fit(x)
    net.zero_grad()
    z2 = net[2](torch.relu(net[0](x)))
    z2[..., 2].abs().sum().backward()
    ref = (net[0].weight * net[0].weight.grad).abs().detach()
    assert torch.allclose(last.scores_["0.weight"] * last.total_score_, ref, rtol=1e-4, atol=1e-9)
    with pytest.raises(ConfigError, match="not understood"):
        SNIP(net, "2", unit=1, position="middle").fit(x)


def planted_net(seed: int = 0) -> tuple[nn.Sequential, dict[str, torch.Tensor]]:
    """fc1 (20 -> 10), relu, fc2 (10 -> 1). Weights fc1[0:3, 0:3] and fc2[0, 0:3] are
    large; every other weight is tiny; the planted set is what a pruner must find."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 1))
    with torch.no_grad():
        net[0].weight.copy_(0.02 * torch.randn(10, 20, generator=g))
        net[0].weight[:3, :3] = 1.0
        net[0].bias.zero_()
        net[2].weight.copy_(0.02 * torch.randn(1, 10, generator=g))
        net[2].weight[0, :3] = 1.0
    planted = {"0.weight": torch.zeros(10, 20, dtype=torch.bool), "2.weight": torch.zeros(1, 10, dtype=torch.bool)}
    planted["0.weight"][:3, :3] = True
    planted["2.weight"][0, :3] = True
    return net, planted


def test_snip_and_force_recover_a_planted_important_set():
    net, planted = planted_net()
    x = torch.randn(64, 20, generator=torch.Generator().manual_seed(1)).abs()
    k = 12
    snip = SNIP(net, "2", unit=0, params="*").fit(x)
    force = FORCE(net, "2", unit=0, params="*", density=k / 210, steps=5).fit(x)
    assert snip.n_reachable_ == 210 and force.schedule_[-1] == k
    for masks in (snip.masks_for(k=k), force.masks_):
        for n in planted:
            assert torch.equal(masks[n], planted[n]), n
    # a target defined by the max per input finds the same set
    snip_max = SNIP(net, "2", unit=0, params="*", reduce="max").fit(x)
    assert all(torch.equal(snip_max.masks_for(k=k)[n], planted[n]) for n in planted)


def test_force_rescoring_reaches_pruned_weights():
    # one linear unit: T = sum_b |(w*m) . x_b|, so dT/dm_j = w_j sum_b sign(z_b) x_bj even where m_j = 0
    lin = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        lin[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, -1.0, 1.0], [0.0, 1.0, 1.0, -1.0]])
    mask = torch.tensor([[True, False, True, False]])
    force = FORCE(lin, "0", unit=0, params="*", density=0.5, steps=1)
    scores = force._mask_scores(x, {"0.weight": mask})["0.weight"]
    z = x @ (lin[0].weight.detach() * mask).t()
    expected = (lin[0].weight.detach() * (torch.sign(z) * x).sum(0)).abs()
    assert torch.allclose(scores, expected)
    assert bool((scores[~mask] > 0).all())


def test_force_schedule_and_topk():
    assert force_schedule(1000, 10, 2) == [100, 10]
    sched = force_schedule(500, 7, 10)
    assert sched[-1] == 7 and all(a >= b for a, b in zip(sched, sched[1:]))
    assert sched[0] == math.ceil(math.exp(0.1 * math.log(7) + 0.9 * math.log(500)))
    with pytest.raises(ConfigError):
        force_schedule(10, 20, 3)
    m = topk_masks({"a": torch.tensor([[5.0, 0.1], [0.2, 4.0]]), "b": torch.tensor([3.0, 0.3])}, 3)
    assert m["a"].tolist() == [[True, False], [False, True]] and m["b"].tolist() == [True, False]
    with pytest.raises(ConfigError):
        topk_masks({"a": torch.ones(2)}, 3)


def test_masks_for_density_counts_reachable_elements():
    net, _ = planted_net()
    x = torch.randn(16, 20).abs()
    snip = SNIP(net, "2", unit=0, params="*").fit(x)
    # weights into hidden units that are silent on every input get no score
    assert snip.n_reachable_ == sum(int((s > 0).sum()) for s in snip.scores_.values()) <= 210
    masks = snip.masks_for(0.1)
    assert sum(int(m.sum()) for m in masks.values()) == math.ceil(0.1 * snip.n_reachable_)
    assert snip.n_keep(1.0) == snip.n_reachable_
    with pytest.raises(ConfigError):
        snip.masks_for(1.5)
    with pytest.raises(NotFittedError):
        SNIP(net, "2", unit=0).masks_for(0.1)


def test_preservation_scores_hand_computed():
    c, a = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0])
    got = preservation_scores(c, a)
    assert got["pearson_r"] == pytest.approx(float(np.corrcoef(c.numpy(), a.numpy())[0, 1]))
    assert got["dF_norm"] == pytest.approx((1 / 3) / (7 / 3))


def test_feature_preservation_and_curve():
    net, planted = planted_net()
    x = torch.randn(64, 20, generator=torch.Generator().manual_seed(1)).abs()
    xv = torch.randn(32, 20, generator=torch.Generator().manual_seed(2)).abs()
    ones = {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters() if n.endswith("weight")}
    full = feature_preservation(net, "2", 0, xv, ones)
    assert full["pearson_r"] == pytest.approx(1.0) and full["dF_norm"] == pytest.approx(0.0, abs=1e-7)
    zeros = {n: ~m for n, m in ones.items()}
    assert feature_preservation(net, "2", 0, xv, zeros)["dF_norm"] > 0.9  # only the bias is left
    snip = SNIP(net, "2", unit=0, params="*").fit(x)
    curve = preservation_curve(snip, xv, (1.0, 0.3, 12 / 210, 0.01))
    assert list(curve.density.values) == [1.0, 0.3, 12 / 210, 0.01]
    assert float(curve.pearson_r.sel(density=1.0)) == pytest.approx(1.0)
    assert float(curve.pearson_r.sel(density=12 / 210)) > 0.99  # the planted circuit alone
    assert float(curve.dF_norm.sel(density=0.01)) > float(curve.dF_norm.sel(density=12 / 210))
    assert list(curve.kept.values) == [210, 63, 12, 3]
    force = FORCE(net, "2", unit=0, params="*", density=0.3, steps=3).fit(x)
    fcurve = preservation_curve(force, xv, (0.3, 12 / 210), x_fit=x)
    assert list(fcurve.kept.values) == [63, 12]
