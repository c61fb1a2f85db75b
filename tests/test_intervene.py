"""Interventions on plain modules: each against a manual computation, composition
order, statistics from DataArrays/tensors, and the hook lifecycle on every path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from polysdk.errors import ConfigError, SiteError, SiteNotFoundError
from polysdk.intervene import Ablate, Clamp, Compose, Patch, Steer
from polysdk.sites import Hooks


def n_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture()
def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))


@pytest.fixture()
def x() -> torch.Tensor:
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(1))


def run_edited(net: nn.Sequential, x: torch.Tensor, edit) -> torch.Tensor:
    """The manual reference: run the layers by hand, editing the ReLU-1 output."""
    h = net[1](net[0](x))
    h = edit(h.clone())
    return net[4](net[3](net[2](h)))


def recorded(n: int = 20, units: int = 6, seed: int = 2) -> xr.DataArray:
    g = np.random.default_rng(seed)
    return xr.DataArray(g.normal(size=(n, units)).astype("float32"), dims=("sample", "unit"))


# -------------------------------------------------------------------------- Ablate


def test_zero_ablation_matches_manual(net, x) -> None:
    with Ablate(net, "1", units=[0, 4]) as ab:
        got = net(x)
        assert ab.attached
    expected = run_edited(net, x, lambda h: h.index_fill(1, torch.tensor([0, 4]), 0.0))
    assert torch.allclose(got, expected)
    assert not torch.allclose(got, net(x))  # and it is gone after the block


def test_zero_ablation_all_units_and_bool_mask(net, x) -> None:
    with Ablate(net, "1"):
        assert torch.allclose(net(x), run_edited(net, x, torch.zeros_like))
    mask = torch.tensor([True, False, False, False, False, True])
    with Ablate(net, "1", units=mask):
        got = net(x)
    assert torch.allclose(got, run_edited(net, x, lambda h: h * (~mask).float()))


def test_mean_ablation_from_dataarray_and_dask(net, x) -> None:
    data = recorded()
    mean = torch.as_tensor(data.values.astype("float64").mean(axis=0)).float()

    def manual(h):
        h[:, [1, 2]] = mean[[1, 2]]
        return h

    expected = run_edited(net, x, manual)
    for source in (data, data.chunk({"sample": 7}), {"1": data}):
        with Ablate(net, "1", units=[1, 2], method="mean", source=source):
            assert torch.allclose(net(x), expected, atol=1e-6)
    # a tensor, or a DataArray without "sample", is the statistic itself
    with Ablate(net, "1", units=[1, 2], method="mean", source=mean):
        assert torch.allclose(net(x), expected, atol=1e-6)
    with Ablate(net, "1", units=[1, 2], method="mean", source=data.mean("sample")):
        assert torch.allclose(net(x), expected, atol=1e-6)


class FakeStore:
    """Stands in for ActivationStore: ``store[site]`` is a lazy DataArray."""

    def __init__(self, arrays: dict[str, xr.DataArray]) -> None:
        self.arrays = arrays
        self.reads: list[str] = []

    def __getitem__(self, site: str) -> xr.DataArray:
        self.reads.append(site)
        return self.arrays[site].chunk({"sample": 5})


def test_mean_ablation_reads_a_store_once_per_attach(net, x) -> None:
    store = FakeStore({"1": recorded(), "3": recorded(units=5, seed=3)})
    ab = Ablate(net, ["1", "3"], method="mean", source=store)
    assert store.reads == []  # building reads nothing
    with ab:
        got = net(x)
        net(x)
    assert sorted(store.reads) == ["1", "3"]
    m1 = torch.as_tensor(store.arrays["1"].values.mean(0))
    m3 = torch.as_tensor(store.arrays["3"].values.mean(0))
    # every unit of "3" is replaced by its mean, so the output no longer depends on x
    expected = net[4](m3.expand(3, 5))
    assert torch.allclose(got, expected, atol=1e-6)
    with Ablate(net, "1", method="mean", source=store):
        assert torch.allclose(net(x), run_edited(net, x, lambda h: m1.expand(3, 6)), atol=1e-6)


def test_mean_ablation_over_positions() -> None:
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(3, 4))
    g = np.random.default_rng(0)
    data = xr.DataArray(g.normal(size=(10, 4, 5)), dims=("sample", "unit", "position"))
    x = torch.randn(2, 5, 3)  # (batch, position, features): site dims (sample, position, unit)
    with Ablate(lin, "0", units=[3], method="mean", source=data):
        per_pos = lin(x)
    with Ablate(lin, "0", units=[3], method="mean", source=data, mean_over=("sample", "position")):
        pooled = lin(x)
    ref = lin(x)
    want_pos = torch.as_tensor(data.values.mean(0)[3], dtype=torch.float32)  # (position,)
    assert torch.allclose(per_pos[..., 3], want_pos.expand(2, 5), atol=1e-6)
    assert torch.allclose(pooled[..., 3], torch.full((2, 5), float(data.values[:, 3].mean())), atol=1e-6)
    assert torch.allclose(per_pos[..., :3], ref[..., :3])


def test_resample_ablation_matches_manual_draws(net, x) -> None:
    pool1 = recorded(n=9, units=6)
    pool3 = recorded(n=9, units=5, seed=4)
    g = torch.Generator().manual_seed(7)
    idx_a = torch.randint(9, (3,), generator=g)
    idx_b = torch.randint(9, (3,), generator=g)
    with Ablate(net, ["1", "3"], units={"1": [0, 5], "3": [2]}, method="resample",
                source={"1": pool1, "3": pool3}, seed=7):
        first = net(x)
        second = net(x)

    def manual(idx):
        h1 = net[1](net[0](x)).clone()
        h1[:, [0, 5]] = torch.as_tensor(pool1.values[idx.numpy()][:, [0, 5]])
        h3 = net[3](net[2](h1)).clone()
        h3[:, 2] = torch.as_tensor(pool3.values[idx.numpy(), 2])  # the same draw at both sites
        return net[4](h3)

    assert torch.allclose(first, manual(idx_a), atol=1e-6)
    assert torch.allclose(second, manual(idx_b), atol=1e-6)  # a new draw per pass
    with Ablate(net, ["1", "3"], units={"1": [0, 5], "3": [2]}, method="resample",
                source={"1": pool1, "3": pool3}, seed=7):
        assert torch.allclose(net(x), first)  # reattaching restarts the generator


def test_resample_from_tensor_pool(net, x) -> None:
    pool = torch.randn(4, 6)
    idx = torch.randint(4, (3,), generator=torch.Generator().manual_seed(0))
    with Ablate(net, "1", method="resample", source=pool, seed=0):
        got = net(x)
    assert torch.allclose(got, net[4](net[3](net[2](pool[idx]))))


# ------------------------------------------------------------------ Clamp and Steer


def test_clamp_matches_manual(net, x) -> None:
    with Clamp(net, "1", 2.5, units=[3]):
        got = net(x)
    assert torch.allclose(got, run_edited(net, x, lambda h: h.index_fill(1, torch.tensor([3]), 2.5)))
    values = torch.arange(6.0)
    with Clamp(net, "1", values):
        got = net(x)
    assert torch.allclose(got, run_edited(net, x, lambda h: values.expand(3, 6)))


def test_steer_matches_manual_and_keeps_gradient(net, x) -> None:
    d = torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0, 0.0])
    with Steer(net, "1", d, scale=3.0):
        got = net(x)
    assert torch.allclose(got, run_edited(net, x, lambda h: h + 3.0 * d))
    with Steer(net, "1", d, scale=3.0, units=[0, 4]):
        got = net(x)
    assert torch.allclose(got, run_edited(net, x, lambda h: h + 3.0 * d * torch.tensor([1, 0, 0, 0, 1, 0.0])))
    with Steer(net, "1", d, scale=2.0, normalize=True):
        got = net(x)
    assert torch.allclose(got, run_edited(net, x, lambda h: h + 2.0 * d / d.norm()))
    # gradient flows through steered units and not into ablated ones
    xg = x.clone().requires_grad_()
    with Ablate(net, "0", units=[0, 1, 2, 3, 4, 5]):
        net(xg).sum().backward()
    assert xg.grad.abs().sum() == 0
    xg.grad = None
    with Steer(net, "0", torch.ones(6)):
        net(xg).sum().backward()
    assert xg.grad.abs().sum() > 0


def test_conv_units_are_channels() -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1))
    x = torch.randn(2, 2, 5, 5)
    ref = conv(x)
    with Ablate(conv, "0", units=[1, 3]):
        got = conv(x)
    assert torch.all(got[:, [1, 3]] == 0) and torch.allclose(got[:, [0, 2]], ref[:, [0, 2]])
    with Steer(conv, "0", torch.tensor([0.0, 1.0, 0.0, 0.0]), scale=2.0):
        assert torch.allclose(conv(x), ref + 2.0 * torch.tensor([0.0, 1, 0, 0]).view(1, 4, 1, 1))
    maps = xr.DataArray(np.random.default_rng(0).normal(size=(6, 4, 5, 5)), dims=("sample", "unit", "y", "x"))
    with Ablate(conv, "0", units=[2], method="mean", source=maps):
        got = conv(x)
    assert torch.allclose(got[:, 2], torch.as_tensor(maps.values.mean(0)[2], dtype=torch.float32).expand(2, 5, 5))


# ------------------------------------------------------------------------------ Patch


def test_patch_from_input_matches_manual(net) -> None:
    clean = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))
    corrupt = torch.randn(3, 4, generator=torch.Generator().manual_seed(6))
    clean_h = net[1](net[0](clean)).detach()
    with Patch(net, "1", input=clean, units=[2, 3]):
        got = net(corrupt)

    def manual(h):
        h[:, [2, 3]] = clean_h[:, [2, 3]]
        return h

    assert torch.allclose(got, run_edited(net, corrupt, manual))
    with Patch(net, "1", input=clean):
        assert torch.allclose(net(corrupt), net(clean))


def test_patch_from_activations_and_store(net, x) -> None:
    acts = torch.randn(1, 6)  # a batch of one broadcasts
    with Patch(net, "1", activations={"1": acts}, units=[0]):
        got = net(x)
    assert torch.allclose(got, run_edited(net, x, lambda h: torch.cat([acts[:, :1].expand(3, 1), h[:, 1:]], 1)))
    data = recorded(n=8)
    store = FakeStore({"1": data})
    with Patch(net, "1", store=store, samples=[5, 0, 5]):
        got = net(x)
    expected = net[4](net[3](net[2](torch.as_tensor(data.values[[5, 0, 5]]))))
    assert torch.allclose(got, expected, atol=1e-6)


def test_patch_errors(net, x) -> None:
    with pytest.raises(ConfigError, match="exactly one source"):
        Patch(net, "1", input=x, activations=torch.zeros(3, 6))
    with pytest.raises(ConfigError, match="samples="):
        Patch(net, "1", store=FakeStore({}))
    with pytest.raises(SiteError, match="broadcast"):
        with Patch(net, "1", activations=torch.zeros(2, 6)):
            net(x)
    assert n_hooks(net) == 0


# ----------------------------------------------------------------- composition order


def test_composition_applies_in_order(net, x) -> None:
    d = torch.ones(6)
    clamp_then_steer = run_edited(net, x, lambda h: torch.full_like(h, 1.0) + 2.0 * d)
    steer_then_clamp = run_edited(net, x, lambda h: torch.full_like(h, 1.0))
    with Compose(Clamp(net, "1", 1.0), Steer(net, "1", d, scale=2.0)) as both:
        assert both.attached
        assert torch.allclose(net(x), clamp_then_steer)
    with Clamp(net, "1", 1.0), Steer(net, "1", d, scale=2.0):  # nested with: same order
        assert torch.allclose(net(x), clamp_then_steer)
    with Compose([Steer(net, "1", d, scale=2.0), Clamp(net, "1", 1.0)]):
        assert torch.allclose(net(x), steer_then_clamp)
    assert n_hooks(net) == 0


def test_compose_rolls_back_when_one_fails_to_attach(net, x) -> None:
    good = Ablate(net, "1", units=[0])
    bad = Ablate(net, "3", method="mean", source={"1": recorded()})  # no entry for "3"
    with pytest.raises(ConfigError, match="no entry for site '3'"):
        with Compose(good, bad):
            pass
    assert n_hooks(net) == 0 and not good.attached
    with pytest.raises(ConfigError):
        Compose(good, "not a component")


# --------------------------------------------------------------------- hook lifecycle


def test_hooks_removed_on_every_path(net, x) -> None:
    user = net[1].register_forward_hook(lambda m, i, o: None)
    ab = Ablate(net, ["1", "3"], units=[0])
    assert n_hooks(net) == 1  # the constructor attaches nothing
    with ab:
        assert n_hooks(net) == 3
    assert n_hooks(net) == 1
    with pytest.raises(ValueError, match="inside"):
        with ab:
            raise ValueError("raised inside the block")
    assert n_hooks(net) == 1
    # an error inside a hook during the forward pass
    with pytest.raises(SiteError, match="out of range"):
        with Ablate(net, "3", units=[9]):
            net(x)
    assert n_hooks(net) == 1
    # a bad name later in the list: nothing attached
    with pytest.raises(SiteNotFoundError):
        Steer(net, ["1", "no.such.layer"], torch.ones(6))
    assert n_hooks(net) == 1
    # attach/detach are idempotent
    ab.attach()
    ab.attach()
    assert n_hooks(net) == 3
    ab.detach()
    ab.detach()
    assert n_hooks(net) == 1
    user.remove()
    assert n_hooks(net) == 0


def test_edit_is_seen_by_later_hooks_and_is_not_a_view(net, x) -> None:
    seen = {}
    with Clamp(net, "1", 0.0, units=[1]), Hooks(net, "1", lambda s, t: seen.setdefault(s, t)):
        net(x)
    assert torch.all(seen["1"][:, 1] == 0)
    # ReLU(inplace=True) downstream of an edited site must not fail
    inplace = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True))
    with Clamp(inplace, "0", -1.0):
        assert torch.all(inplace(x) == 0)


def test_config_errors(net) -> None:
    with pytest.raises(ConfigError, match="method"):
        Ablate(net, "1", method="median")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs source"):
        Ablate(net, "1", method="mean")
    with pytest.raises(ConfigError, match="not among"):
        Ablate(net, "1", units={"3": [0]})
    with pytest.raises(ConfigError, match="ints or booleans"):
        with Ablate(net, "1", units=[0.5]):
            net(torch.zeros(1, 4))
    with pytest.raises(SiteError, match="does not broadcast"):
        with Steer(net, "1", torch.ones(4)):
            net(torch.zeros(1, 4))
    assert n_hooks(net) == 0


# ------------------------------------------------------- a real ActivationStore on disk


def test_mean_ablation_and_patch_from_activation_store(net, x, tmp_path) -> None:
    from polysdk.store import ActivationStore

    data = recorded(n=12)
    with ActivationStore(tmp_path / "acts.zarr", mode="w") as store:
        store.append({"1": data.values[:7]}, dims={"1": ("sample", "unit")})
        store.append({"1": data.values[7:]}, dims={"1": ("sample", "unit")})
    store = ActivationStore(tmp_path / "acts.zarr", mode="r")
    mean = torch.as_tensor(data.values.astype("float64").mean(0), dtype=torch.float32)
    with Ablate(net, "1", units=[2], method="mean", source=store):
        got = net(x)
    assert torch.allclose(got, run_edited(net, x, lambda h: h.index_fill(1, torch.tensor([2]), float(mean[2]))), atol=1e-6)
    with Patch(net, "1", store=store, samples=[11, 3, 8]):
        got = net(x)
    assert torch.allclose(got, net[4](net[3](net[2](torch.as_tensor(data.values[[11, 3, 8]])))), atol=1e-6)


def test_input_capture_edits_the_module_input(net, x) -> None:
    d = torch.arange(6.0)
    with Steer(net, "2", d, scale=0.5, capture="input"):
        on_input = net(x)
    with Steer(net, "1", d, scale=0.5):
        on_output = net(x)
    assert torch.allclose(on_input, on_output)
    assert torch.allclose(on_input, run_edited(net, x, lambda h: h + 0.5 * d))
