"""Continuous sparsification end to end on planted sparse paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from polysdk.errors import ConfigError, NotFittedError
from polysdk.mask import ContinuousSparsification, load_masks, mask_overlap, masked_call
from polysdk.store import ActivationStore


D, N_PLANTED, N_DISTRACT = 24, 4, 20


def planted_mlp(seed: int = 0) -> nn.Sequential:
    """fc1 -> relu -> fc2. Hidden unit k reads input dims 2k, 2k+1 (k < 4); output 0 =
    h0 + h1 - 2 (answers to groups 0 and 1), output 1 = h2 + h3 - 2 (groups 2 and 3);
    20 distractor hidden units with small random weights everywhere."""
    g = torch.Generator().manual_seed(seed)
    hidden = N_PLANTED + N_DISTRACT
    net = nn.Sequential()
    net.add_module("fc1", nn.Linear(D, hidden))
    net.add_module("relu", nn.ReLU())
    net.add_module("fc2", nn.Linear(hidden, 2))
    with torch.no_grad():
        w1 = torch.randn(hidden, D, generator=g) * 0.3
        w1[:N_PLANTED] = 0
        for k in range(N_PLANTED):
            w1[k, 2 * k : 2 * k + 2] = 1.0
        w2 = torch.randn(2, hidden, generator=g) * 0.1
        w2[:, :N_PLANTED] = 0
        w2[0, 0] = w2[0, 1] = w2[1, 2] = w2[1, 3] = 1.0
        net.fc1.weight.copy_(w1)
        net.fc1.bias.zero_()
        net.fc2.weight.copy_(w2)
        net.fc2.bias.fill_(-2.0)
    return net


def planted_data(n: int, groups: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half the inputs light dims of ``groups[0]`` (label 1), half ``groups[1]`` (label 0)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(n, D, generator=g)
    first = torch.arange(n) % 2 == 0
    x[first, 2 * groups[0] : 2 * groups[0] + 2] += 2.0
    x[~first, 2 * groups[1] : 2 * groups[1] + 2] += 2.0
    return x, first.long()


def fit(net: nn.Module, unit: int, groups: tuple[int, int], seed: int = 0, **kw) -> ContinuousSparsification:
    x, y = planted_data(256, groups, seed=10 + seed)
    xv, yv = planted_data(128, groups, seed=100 + seed)
    params = dict(params="*", lam=1e-2, epochs=30, milestones=(25,), batch_size=32, seed=seed, progress=False)
    params.update(kw)
    return ContinuousSparsification(net, "fc2", unit=unit, **params).fit(x, y, x_val=xv, labels_val=yv)


def test_finds_the_planted_path_that_separates_the_groups():
    net = planted_mlp()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    xv, yv = planted_data(128, (0, 1), seed=5)
    with torch.no_grad():
        full_acc = float(((net(xv)[:, 0] > 0).long() == yv).float().mean())
    assert full_acc == 0.5  # the full unit answers to both groups: no separation

    cs = fit(net, unit=0, groups=(0, 1))
    m = cs.masks_
    assert bool(m["fc2.weight"][0, 0]) and not bool(m["fc2.weight"][0, 1])  # h0 kept, h1 cut
    assert bool(m["fc1.weight"][0, 0:2].any())  # the planted input of h0
    assert not bool(m["fc1.weight"][1:N_PLANTED].any())  # nothing of h1, h2, h3
    assert bool(m["fc2.bias"][0])
    assert not bool(m["fc2.weight"][1].any())  # the other unit's row is useless
    assert cs.accuracy_val_ >= 0.95 and cs.objective_val_ < 0.3
    assert cs.result_.attrs["density"] < 0.03
    # the binary subnetwork separates held-out inputs through masked_call as well
    with torch.no_grad():
        sub = masked_call(net, cs.masks_, xv)[:, 0]
    assert float(((sub > 0).long() == yv).float().mean()) >= 0.95
    # the model itself is untouched and carries no hook
    for n, p in net.named_parameters():
        assert torch.equal(p, before[n]) and p.requires_grad and p.grad is None
    assert all(not mod._forward_hooks for mod in net.modules())
    # history: temperature from 1 to 200, density shrinking
    assert cs.history_[0]["temperature"] == 1.0 and cs.history_[-1]["temperature"] == pytest.approx(200.0)
    assert cs.history_[-1]["density"] < cs.history_[0]["density"]


def test_swap_trains_the_other_clusters_subnetwork():
    cs = fit(planted_mlp(), unit=0, groups=(0, 1), swap=True)
    assert bool(cs.masks_["fc2.weight"][0, 1]) and not bool(cs.masks_["fc2.weight"][0, 0])
    assert bool(cs.masks_["fc1.weight"][1, 2:4].any()) and not bool(cs.masks_["fc1.weight"][0].any())
    assert cs.accuracy_val_ >= 0.95 and cs.result_.attrs["swap"] is True


def test_independent_targets_overlap_at_chance_same_target_far_more():
    net = planted_mlp()
    a1 = fit(net, unit=0, groups=(0, 1), seed=1)
    a2 = fit(net, unit=0, groups=(0, 1), seed=2)  # same target, other data and order
    b = fit(net, unit=1, groups=(2, 3), seed=1)  # an independent target
    same_table = mask_overlap(a1.masks_, a2.masks_)
    same = same_table.sel(param="overall")
    indep = mask_overlap(a1.masks_, b.masks_).sel(param="overall")
    assert float(same.p_value) < 1e-6 and float(same.enrichment) > 5
    assert float(same_table.enrichment.sel(param="fc1.weight")) > 100
    assert float(same.iou) > 0.6
    assert float(indep.p_value) > 0.05
    assert float(indep.intersection) <= float(indep.expected_intersection) + 1


def test_preserve_objective_keeps_both_paths():
    net = planted_mlp()
    x, _ = planted_data(256, (0, 1), seed=3)
    cs = ContinuousSparsification(
        net, "fc2", unit=0, params="*", objective="preserve", lam=1e-3, epochs=30,
        milestones=(25,), progress=False, seed=0,
    ).fit(x, x_val=planted_data(128, (0, 1), seed=4)[0])
    w2 = cs.masks_["fc2.weight"]
    assert bool(w2[0, 0]) and bool(w2[0, 1])  # both halves of the polysemantic unit
    assert cs.objective_val_ < 0.05  # normalised squared error of the unit's activation
    assert cs.result_.attrs["density"] < 0.05
    full = cs.activations(x[:16], masked=False)
    sub = cs.activations(x[:16])
    assert torch.allclose(full, net(x[:16])[:, 0].detach())
    assert float(((sub - full) ** 2).mean() / (full**2).mean()) < 0.05


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the forward pass should have stopped at the target")


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 3, 3), Boom())


def test_kernel_granularity_and_stop_at_target():
    net = tiny_cnn()
    x = torch.randn(32, 1, 8, 8)
    y = (x[:, 0, 3:5, 3:5].mean((1, 2)) > 0).long()
    cs = ContinuousSparsification(
        net, "2", unit=1, position="center", granularity="kernel", lam=1e-3, epochs=4,
        batch_size=16, progress=False,
    ).fit(x, y)
    assert cs.logits_["0.weight"].shape == (4, 1) and cs.logits_["2.weight"].shape == (3, 4)
    assert cs.logits_["0.bias"].shape == (4,)
    for name in ("0.weight", "2.weight"):
        m = cs.masks_[name]
        assert m.shape == dict(net.named_parameters())[name].shape
        per_kernel = m.flatten(2)
        assert bool((per_kernel.all(-1) | ~per_kernel.any(-1)).all())  # constant within a kernel
        assert torch.equal(per_kernel[..., 0], cs.logits_[name] > 0)
    with pytest.raises(RuntimeError, match="should have stopped"):
        ContinuousSparsification(net, "2", unit=1, position="center", epochs=1, stop_at_target=False,
                                 progress=False).fit(x, y)


def test_unreachable_parameters_are_dropped():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.Linear(2, 2))
    x, y = torch.randn(32, 4), torch.tensor([0, 1] * 16)
    cs = ContinuousSparsification(net, "2", unit=0, epochs=2, progress=False).fit(x, y)
    assert cs.unused_ == ["3.weight", "3.bias"]
    assert sorted(cs.masks_) == ["0.bias", "0.weight", "2.bias", "2.weight"]


def test_labels_noise_dropped_and_validated():
    net = planted_mlp()
    x, y = planted_data(64, (0, 1), seed=0)
    y_noise = y.clone()
    y_noise[:10] = -1
    cs = ContinuousSparsification(net, "fc2", unit=0, params="*", epochs=1, lr=0.0, progress=False)
    cs.fit(x, y_noise)
    assert cs.score(x[10:], y[10:]) == pytest.approx(cs.objective_train_, rel=1e-6)
    with pytest.raises(ConfigError, match="labels must be"):
        cs.fit(x, y + 1)
    with pytest.raises(ConfigError, match="one label per input"):
        cs.fit(x, y[:5])
    with pytest.raises(ConfigError, match="needs labels"):
        cs.fit(x)
    with pytest.raises(NotFittedError):
        ContinuousSparsification(net, "fc2", unit=0).activations(x)


def test_result_dataset_and_store_round_trip(tmp_path):
    net = planted_mlp()
    cs = fit(net, unit=0, groups=(0, 1), epochs=10)
    ds = cs.result_
    for name, mask in cs.masks_.items():
        assert np.array_equal(ds[name].values, mask.numpy())
        assert int(ds.kept.sel(param=name)) == int(mask.sum())
        assert float(ds.density.sel(param=name)) == pytest.approx(float(mask.float().mean()))
    total_kept = sum(int(m.sum()) for m in cs.masks_.values())
    total = sum(m.numel() for m in cs.masks_.values())
    assert ds.attrs["density"] == pytest.approx(total_kept / total)
    fc2 = cs.masks_["fc2.weight"].sum() + cs.masks_["fc2.bias"].sum()
    assert float(ds.layer_density.sel(layer="fc2")) == pytest.approx(float(fc2) / (2 * 24 + 2))
    assert ds.attrs["target"] == "fc2" and ds.attrs["unit"] == 0
    assert ds.attrs["objective_val"] == pytest.approx(cs.objective_val_)
    with ActivationStore(tmp_path / "s.zarr", mode="w") as store:
        cs.save(store, "subnetwork/fc2/0/a")
    with ActivationStore(tmp_path / "s.zarr", mode="r") as store:
        back = load_masks(store, "subnetwork/fc2/0/a")
        attrs = store.read_result("subnetwork/fc2/0/a").attrs
    assert back.keys() == cs.masks_.keys()
    assert all(torch.equal(back[n], cs.masks_[n]) for n in back)
    assert attrs["lam"] == pytest.approx(1e-2) and attrs["method"] == "continuous_sparsification"
