"""UnitMask: activation and parameter removal, held through training, clean lifecycle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polysdk.errors import ConfigError, SiteError, SiteNotFoundError
from polysdk.mask import UnitMask
from polysdk.sites import Hooks


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def resid_model() -> nn.Sequential:
    """embed-like Linear -> LayerNorm (writes 'residual dims') -> head."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 3))


def test_activation_mode_zeroes_units_and_only_them():
    net = resid_model()
    x = torch.randn(4, 5)
    base = net[1](net[0](x)).detach()
    hidden: list[torch.Tensor] = []
    with UnitMask(net, "1", units=[1, 4]) as um:
        assert um.attached
        out = net(x)
        with Hooks(net, "2", lambda s, t: hidden.append(t), capture="input"):
            net(x)
    assert not um.attached and no_hooks(net)
    assert torch.equal(hidden[0][:, [1, 4]], torch.zeros(4, 2))
    assert torch.allclose(hidden[0][:, [0, 2, 3, 5]], base[:, [0, 2, 3, 5]])
    expected = net[2](base * torch.tensor([1.0, 0, 1, 1, 0, 1]))
    assert torch.allclose(out, expected)
    assert not torch.allclose(net(x), expected)  # gone after detach


def test_activation_mode_axes():
    conv = nn.Sequential(nn.Conv2d(1, 3, 1))
    with UnitMask(conv, "0", units=[2]):
        y = conv(torch.randn(2, 1, 4, 4))
    assert bool((y[:, 2] == 0).all()) and bool((y[:, :2] != 0).any())
    seq = nn.Sequential(nn.Linear(4, 4))
    with UnitMask(seq, "0", units=[0]):
        y = seq(torch.randn(2, 7, 4))  # [batch, position, unit]: the last axis
    assert bool((y[..., 0] == 0).all()) and bool((y[..., 1:] != 0).all())
    with UnitMask(seq, "0", units=[5]), pytest.raises(ConfigError, match="out of range"):
        seq(torch.randn(2, 4))
    # named dims instead of an axis number: here the units are axis 1 of a 3-D tensor
    with UnitMask(seq, "0", units=[3], dims=("sample", "unit", "feature")):
        y = seq(torch.randn(2, 5, 4))
    assert bool((y[:, 3] == 0).all()) and bool((y[:, [0, 1, 2, 4]] != 0).all())
    with UnitMask(seq, "0", units=[0], dims=("sample", "feature")), pytest.raises(SiteError, match="no 'unit'"):
        seq(torch.randn(2, 4))


def train(net: nn.Module, opt: torch.optim.Optimizer, steps: int = 15) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, 5, generator=g)
        loss = ((net(x) - 1.0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
])
def test_parameter_mode_keeps_units_at_zero_through_training(make_opt):
    net = resid_model()
    opt = make_opt(net.parameters())
    train(net, opt, 3)  # momentum / Adam moments already hold state for every entry
    ln = net[1]
    before = ln.weight.detach().clone()
    with UnitMask(net, "1", units=[0, 3], mode="parameter", optimizer=opt):
        train(net, opt)
        assert torch.equal(ln.weight[[0, 3]], torch.zeros(2)) and torch.equal(ln.bias[[0, 3]], torch.zeros(2))
        assert not torch.allclose(ln.weight[[1, 2]], before[[1, 2]])  # the others trained
        x = torch.randn(3, 5)
        assert torch.equal(ln(net[0](x))[:, [0, 3]], torch.zeros(3, 2))
    assert no_hooks(net) and not opt._optimizer_step_post_hooks
    assert torch.equal(ln.weight[[0, 3]], torch.zeros(2))  # pruning stays after detach


def test_parameter_mode_gradient_mask_alone_holds_plain_sgd():
    net = resid_model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.01)
    um = UnitMask(net, "1", units=[2], mode="parameter").attach()
    train(net, opt)
    assert net[1].weight[2].item() == 0.0 and net[1].bias[2].item() == 0.0
    um.detach()
    train(net, opt)
    assert net[1].weight[2].item() != 0.0  # after detach nothing holds the unit


def test_regrow_reproduces_the_original_behaviour_and_zero_bias_option():
    net = resid_model()
    with torch.no_grad():
        net[1].bias.fill_(0.3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with UnitMask(net, "1", units=[1], mode="parameter", regrow=True, zero_bias=False):
        assert net[1].weight[1].item() == 0.0 and net[1].bias[1].item() == pytest.approx(0.3)
        train(net, opt)
        assert net[1].weight[1].item() != 0.0  # regrown


def test_restore_puts_the_original_values_back():
    net = resid_model()
    w = net[1].weight.detach().clone()
    with torch.no_grad():
        net[1].bias.copy_(torch.arange(6.0))
    with UnitMask(net, "1", units=[0, 5], mode="parameter", restore=True):
        assert net[1].weight[5].item() == 0.0 and net[1].bias[5].item() == 0.0
    assert torch.equal(net[1].weight.detach(), w) and torch.equal(net[1].bias.detach(), torch.arange(6.0))


def test_configuration_errors_and_lifecycle():
    net = resid_model()
    with pytest.raises(ConfigError, match="regrow"):
        UnitMask(net, "1", units=[0], regrow=True)
    with pytest.raises(ConfigError, match="weight parameter"):
        UnitMask(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), "1", units=[0], mode="parameter")
    with pytest.raises(ConfigError, match="out of range"):
        UnitMask(net, "1", units=[6], mode="parameter")
    with pytest.raises(ConfigError, match="one site"):
        UnitMask(net, "*", units=[0])
    with pytest.raises(SiteNotFoundError):
        UnitMask(net, "9", units=[0])
    assert no_hooks(net)  # building has no side effect
    seen = []
    user = net[1].register_forward_hook(lambda m, i, o: seen.append(1))
    with pytest.raises(RuntimeError, match="inside"), UnitMask(net, "1", units=[0]):
        net(torch.randn(1, 5))
        raise RuntimeError("inside")
    assert len(net[1]._forward_hooks) == 1  # the user's hook survives, ours is gone
    um = UnitMask(net, "1", units=[0])
    um.attach()
    um.attach()
    um.detach()
    um.detach()
    assert len(net[1]._forward_hooks) == 1
    user.remove()
    assert seen
